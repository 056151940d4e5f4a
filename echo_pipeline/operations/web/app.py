"""The chat page's HTTP side: a Starlette app, replies streamed as server-sent events.

Routes (all JSON but the page and the streams; chat text travels in request bodies only, so
nothing of it reaches a URL or an access log, and the server logs no request at all):

- ``GET /``: the page. ``GET /api/voices``: adapters newest first, each with its base.
- ``POST /api/reply``: ``{voice, context, message, decoding}`` -> ``text/event-stream`` of
  ``token`` events, then ``done`` with the whole reply (or ``error``).
- ``POST /api/rate``: a "sounds like me" / "not me" rating, or a choice between two replies.
- ``POST /api/game/round``, ``POST /api/game/judge``, ``GET /api/game/score?adapter=``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import secrets
from collections.abc import Iterator
from importlib import resources
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, StreamingResponse
from starlette.routing import Route

from echo_pipeline.evaluation.feedback import (
    FeedbackError,
    Rating,
    fooled_score,
    load_judgements,
    record_rating,
)
from echo_pipeline.infra.layout import Layout
from echo_pipeline.operations.web.game import Game
from echo_pipeline.operations.web.models import ModelPool, Voice, decoding_settings, discover_voices

logger = logging.getLogger(__name__)


class BadRequest(ValueError):
    pass


def _sse(event: str, data: dict[str, Any]) -> str:
    return f"event: {event}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n"


def _turns(raw: Any) -> list[dict[str, Any]]:
    if not isinstance(raw, list):
        raise BadRequest("context must be a list of turns")
    return [
        {
            "speaker": str(t.get("speaker", "")),
            "text": str(t.get("text", "")),
            "is_me": bool(t.get("is_me")),
        }
        for t in raw
        if isinstance(t, dict)
    ]


def create_app(layout: Layout | None = None, pool: ModelPool | None = None) -> Starlette:
    """The app over ``layout`` (default: the data folder now); feedback is stored under it."""
    layout = layout or Layout.default()
    pool = pool or ModelPool()
    game = Game(layout.root, layout)

    def voices() -> dict[str, Voice]:
        return {v.id: v for v in discover_voices(layout)}

    def voice_of(voices_now: dict[str, Voice], voice_id: Any) -> Voice:
        if voice_id not in voices_now:
            raise BadRequest(f"no adapter {voice_id!r}; pick one from the list")
        return voices_now[voice_id]

    async def body(request: Request) -> dict[str, Any]:
        try:
            data = await request.json()
        except ValueError as error:
            raise BadRequest("the request body is not JSON") from error
        if not isinstance(data, dict):
            raise BadRequest("the request body is not a JSON object")
        return data

    async def page(request: Request) -> HTMLResponse:
        html = (
            resources.files("echo_pipeline.operations.web").joinpath("page.html").read_text("utf-8")
        )
        return HTMLResponse(html, headers={"Cache-Control": "no-store"})

    async def list_voices(request: Request) -> JSONResponse:
        found = await run_in_threadpool(voices)
        return JSONResponse({"voices": [v.as_json() for v in found.values()]})

    async def reply(request: Request) -> StreamingResponse:
        data = await body(request)
        voice = voice_of(await run_in_threadpool(voices), data.get("voice"))
        message = str(data.get("message") or "").strip()
        if not message:
            raise BadRequest("type a message first")
        try:
            settings = decoding_settings(voice, data.get("decoding") or {})
        except (TypeError, ValueError) as error:
            raise BadRequest(f"sampling: {error}") from error
        context = _turns(data.get("context") or [])

        def events() -> Iterator[str]:
            pieces = []
            try:
                for piece in pool.stream(voice, context, message, settings):
                    pieces.append(piece)
                    if piece:
                        yield _sse("token", {"text": piece})
            except Exception as error:  # the page shows it; the chat text is not in it
                logger.error("generation failed for %s: %s", voice.id, type(error).__name__)
                yield _sse("error", {"error": f"{type(error).__name__}: {error}"})
                return
            yield _sse("done", {"reply": "".join(pieces).strip(), "voice": voice.id})

        return StreamingResponse(
            events(), media_type="text/event-stream", headers={"Cache-Control": "no-store"}
        )

    async def rate(request: Request) -> JSONResponse:
        data = await body(request)
        voice = voice_of(await run_in_threadpool(voices), data.get("voice"))
        try:
            rating = Rating(
                adapter=voice.adapter,
                turn_id=str(data.get("turn_id") or ""),
                context=_turns(data.get("context") or []),
                prompt_author=str(data.get("prompt_author") or "friend"),
                prompt=str(data.get("prompt") or ""),
                reply=str(data.get("reply") or ""),
                rating=str(data.get("rating") or ""),
                other=str(data.get("other") or ""),
            )
        except FeedbackError as error:
            raise BadRequest(str(error)) from error
        if not rating.turn_id or not rating.prompt:
            raise BadRequest("a rating needs the message it answers (turn_id, prompt)")
        await run_in_threadpool(record_rating, layout.root, rating)
        return JSONResponse({"stored": True})

    def score(adapter: str) -> dict[str, Any]:
        found = fooled_score(load_judgements(layout.root, adapter))
        return found.as_dict() | {"sentence": found.sentence()}

    async def game_round(request: Request) -> JSONResponse:
        data = await body(request)
        voice = voice_of(await run_in_threadpool(voices), data.get("voice"))
        if voice.is_base:
            raise BadRequest("the game is played against an adapter, not the base model")
        settings = decoding_settings(voice)

        def clone_reply(pair: dict[str, Any]) -> str:
            """A fresh draw each call, so a retry after an empty or copied reply differs."""
            draw = dataclasses.replace(settings, seed=secrets.randbelow(2**31))
            context = list(pair["context"])
            return pool.reply(voice, context, str(pair["prompt"]), draw, str(pair["prompt_author"]))

        try:
            shown = await run_in_threadpool(game.deal, voice.adapter, clone_reply)
        except (LookupError, OSError) as error:
            raise BadRequest(f"no round: {error}") from error
        return JSONResponse(shown)

    async def game_judge(request: Request) -> JSONResponse:
        data = await body(request)
        try:
            judged = await run_in_threadpool(
                game.judge, str(data.get("round_id")), str(data.get("choice"))
            )
        except (KeyError, FeedbackError) as error:
            raise BadRequest(str(error.args[0] if error.args else error)) from error
        return JSONResponse(
            {
                "correct": not judged.fooled,
                "real_side": judged.real_side,
                "score": await run_in_threadpool(score, judged.adapter),
            }
        )

    async def game_score(request: Request) -> JSONResponse:
        adapter = request.query_params.get("adapter", "")
        try:
            return JSONResponse(await run_in_threadpool(score, adapter))
        except FeedbackError as error:
            raise BadRequest(str(error)) from error

    async def bad_request(request: Request, error: Exception) -> JSONResponse:
        return JSONResponse({"error": str(error)}, status_code=400)

    return Starlette(
        routes=[
            Route("/", page),
            Route("/api/voices", list_voices),
            Route("/api/reply", reply, methods=["POST"]),
            Route("/api/rate", rate, methods=["POST"]),
            Route("/api/game/round", game_round, methods=["POST"]),
            Route("/api/game/judge", game_judge, methods=["POST"]),
            Route("/api/game/score", game_score),
        ],
        exception_handlers={BadRequest: bad_request},
    )
