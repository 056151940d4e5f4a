"""A large synthetic Telegram Desktop export, for benchmarks (``benchmarks/bench_ingest.py``).

``write_synthetic_telegram(path, 1_000_000)`` writes a current-style ``result.json`` (one
personal chat, or a full-account export split over several chats) with the mix a real chat has:
plain strings, entity lists, replies, edits, photos, stickers, voice messages, forwards,
service messages. Messages are formatted as text directly (``json.dumps`` only for the words):
a million (317 MB) take about 8 s of CPU to write.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

_WORDS = tuple(
    [
        "ok",
        "sure",
        "lol",
        "what",
        "time",
        "tomorrow",
        "see",
        "you",
        "there",
        "nice",
        "thanks",
        "did",
        "you",
        "get",
        "the",
        "link",
        "café",
        "über",
        "naïve",
        "😀",
        "🎉",
        "sounds",
        "good",
        "maybe",
        "later",
        "I",
        "think",
        "so",
        "no",
        "way",
        "really",
        "haha",
    ]
)
_ME, _PEER = 1001, 4242
_T0 = 1_600_000_000


def _text(rng: random.Random) -> str:
    return json.dumps(" ".join(rng.choices(_WORDS, k=rng.randint(1, 12))), ensure_ascii=False)


def _message(i: int, rng: random.Random) -> str:
    when = _T0 + i * 17
    who = (_ME, "Alice Me") if rng.random() < 0.5 else (_PEER, "Bob")
    head = f'{{"id": {i + 1}, "type": "message", "date": "2020-09-13T12:26:40", '
    head += f'"date_unixtime": "{when}", "from": "{who[1]}", "from_id": "user{who[0]}"'
    roll = rng.random()
    if roll < 0.01:
        return (
            f'{{"id": {i + 1}, "type": "service", "date": "2020-09-13T12:26:40", '
            f'"date_unixtime": "{when}", "actor": "Bob", "actor_id": "user{_PEER}", '
            '"action": "pin_message", "message_id": 1, "text": "", "text_entities": []}'
        )
    extra = ""
    if roll < 0.06:
        extra = ', "photo": "photos/photo_1@13-09-2020_12-26-40.jpg", "width": 1280, "height": 960'
    elif roll < 0.08:
        extra = ', "file": "stickers/sticker.webp", "media_type": "sticker", "sticker_emoji": "😀"'
    elif roll < 0.10:
        extra = ', "file": "voice_messages/a.ogg", "media_type": "voice_message", "mime_type": "audio/ogg"'
    elif roll < 0.12:
        extra = ', "forwarded_from": "News"'
    elif roll < 0.20 and i:
        extra = f', "reply_to_message_id": {rng.randint(max(1, i - 50), i)}'
    if rng.random() < 0.03:
        extra += f', "edited": "2020-09-13T12:30:00", "edited_unixtime": "{when + 60}"'
    if rng.random() < 0.2:
        a, b = _text(rng), _text(rng)
        text = f'[{a}, {{"type": "link", "text": "https://example.com/{i}"}}, {b}]'
        entities = (
            f'[{{"type": "plain", "text": {a}}}, '
            f'{{"type": "link", "text": "https://example.com/{i}"}}, {{"type": "plain", "text": {b}}}]'
        )
    else:
        a = _text(rng)
        text, entities = a, f'[{{"type": "plain", "text": {a}}}]'
    return f'{head}{extra}, "text": {text}, "text_entities": {entities}}}'


def write_synthetic_telegram(path: Path, messages: int, *, chats: int = 1, seed: int = 0) -> Path:
    """Write ``messages`` messages; one chat gives a single-chat export, more a full-account one."""
    rng = random.Random(seed)
    per_chat = -(-messages // chats)
    with path.open("w", encoding="utf-8") as out:
        if chats > 1:
            out.write(
                f'{{\n "about": "synthetic",\n "personal_information": {{"user_id": {_ME}}},\n'
                ' "chats": {"about": "synthetic", "list": [\n'
            )
        for c in range(chats):
            count = min(per_chat, messages - c * per_chat)
            out.write(
                f'{"," if c else ""}{{"name": "Bob {c}", "type": "personal_chat", '
                f'"id": {_PEER + c}, "messages": [\n'
            )
            for start in range(0, count, 10_000):
                block = (_message(i, rng) for i in range(start, min(start + 10_000, count)))
                out.write((",\n" if start else "") + ",\n".join(block))
            out.write("\n]}")
        if chats > 1:
            out.write("\n]}\n}")
    return path
