""" "Which one is me?": a held-out message, my real reply and the clone's, in random order.

The held-out messages are the split the evaluation judges on (test, else val), so a person's
verdict is about the same pairs as the report's. Which side holds the real reply stays on the
server until the person has chosen; the page never sees it before. Rounds not yet judged live
in memory only (a restart forgets them); judged ones are stored by :mod:`echo_pipeline.evaluation.feedback`.
"""

from __future__ import annotations

import random
import secrets
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from echo_pipeline.evaluation.feedback import SIDES, FeedbackError, Judgement, record_judgement
from echo_pipeline.infra.layout import Layout

#: Draws of the clone's reply before an empty one is shown anyway.
REPLY_TRIES = 3


@dataclass(frozen=True)
class Round:
    adapter: str
    pair_id: str
    real_side: str
    shown: dict[str, Any]  # what the page gets: context, prompt, left, right (no answer)


def heldout_pairs(layout: Layout) -> list[dict[str, Any]]:
    """The held-out pairs (test, else val) with what a round shows: context, prompt, my reply."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from echo_pipeline.pairs.conversations import heldout_split

    columns = ["pair_id", "context", "prompt_author", "prompt", "reply", "split"]
    table = pq.read_table(layout.pairs_path(), columns=columns)
    counts = {row["values"]: row["counts"] for row in pc.value_counts(table["split"]).to_pylist()}
    split = heldout_split(counts)
    return table.filter(pc.equal(table["split"], split)).to_pylist()


class Game:
    """Deals rounds and keeps the judgements; safe to call from several requests at once."""

    def __init__(self, root: Path, layout: Layout, rng: random.Random | None = None) -> None:
        self.root = Path(root)
        self.layout = layout
        self._rng = rng or random.SystemRandom()
        self._pending: dict[str, Round] = {}
        self._lock = threading.Lock()
        self._pairs: list[dict[str, Any]] | None = None

    def pairs(self) -> list[dict[str, Any]]:
        if self._pairs is None:
            self._pairs = heldout_pairs(self.layout)
        return self._pairs

    def deal(self, adapter: str, write_reply) -> dict[str, Any]:
        """A new round for ``adapter``; ``write_reply(pair)`` is the clone's reply to a pair."""
        pairs = self.pairs()
        if not pairs:
            raise LookupError("no held-out pairs: the chat is too small to hold any out")
        pair = self._rng.choice(pairs)
        clone = ""
        for _ in range(REPLY_TRIES):
            clone = write_reply(pair)
            if clone and clone.strip() != str(pair["reply"]).strip():
                break
        real_side = self._rng.choice(("left", "right"))
        left, right = (pair["reply"], clone) if real_side == "left" else (clone, pair["reply"])
        round_id = secrets.token_hex(8)
        shown = {
            "round_id": round_id,
            "context": [{"speaker": t["speaker"], "text": t["text"]} for t in pair["context"]],
            "prompt_author": pair["prompt_author"],
            "prompt": pair["prompt"],
            "left": left,
            "right": right,
        }
        with self._lock:
            self._pending[round_id] = Round(adapter, str(pair["pair_id"]), real_side, shown)
        return shown

    def judge(self, round_id: str, choice: str) -> Judgement:
        """Store the person's choice for a dealt round (each round is judged once)."""
        if choice not in SIDES:
            raise FeedbackError(f"choice is one of {SIDES}, not {choice!r}")
        with self._lock:
            dealt = self._pending.pop(round_id, None)
        if dealt is None:
            raise KeyError(f"round {round_id!r} is unknown or already judged")
        judgement = Judgement(dealt.adapter, dealt.pair_id, dealt.real_side, choice)
        record_judgement(self.root, judgement)
        return judgement
