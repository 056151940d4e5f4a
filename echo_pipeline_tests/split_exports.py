"""Small exports of every format, whole or split into overlapping parts, for the split property.

One conversation (``Chat``) is written in any format, either as one export or as k parts with
random cut points, some parts reaching back over the previous one (an overlap, as when a user
exports a channel twice with different date ranges), named in an order that is not time order.
Every part is laid out as that app's users get several exports of one chat: DCE partitions or
numbered CSV parts in one folder, a Telegram ``result.json`` per download folder, Meta's
``message_N.json`` in one thread folder, a Slack channel's daily files.
"""

from __future__ import annotations

import itertools
import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

ME = "Alice"
PEOPLE = (ME, "Bob", "Cara")
_USER_IDS = {"Alice": "U0ALICE01", "Bob": "U0BOB0001", "Cara": "U0CARA001"}
_T0 = datetime(2024, 1, 15, 9, 0, tzinfo=UTC)  # day 15: every day of the chat is above 12
_WORDS = ("sure", "no way", "on it", "lunch?", "ship it", "why though", "see you", "fixed")


@dataclass(frozen=True)
class Message:
    author: str
    when: datetime  # whole minutes: CSV, PlainText and WhatsApp keep no seconds
    text: str


def random_chat(rng: random.Random, size: int) -> list[Message]:
    """A chat of ``size`` messages: bursts, replies, and a long silence now and then (sessions).

    Texts are unique: formats without message ids identify a message by its content, and two
    identical messages in one minute are a documented limit, not what this property is about.
    """
    when = _T0
    messages = []
    for i in range(size):
        gap = rng.choice((1, 1, 2, 3, 5, 240)) if i % 4 != 1 else 1
        when += timedelta(minutes=gap)
        # Someone else, then me, every fourth message: some pairs whatever the dice say.
        author = {0: rng.choice(PEOPLE[1:]), 1: ME}.get(i % 4) or rng.choice(PEOPLE)
        messages.append(Message(author, when, f"{rng.choice(_WORDS)} #{i}"))
    return messages


def split_points(rng: random.Random, size: int, k: int) -> list[tuple[int, int]]:
    """k slices covering 0..size: random cut points, some parts starting before the previous
    part ends (an overlap of 1-3 messages)."""
    k = max(1, min(k, size))
    cuts = sorted(rng.sample(range(1, size), k - 1)) if k > 1 else []
    bounds = [0, *cuts, size]
    parts = []
    for start, stop in itertools.pairwise(bounds):
        if start > 0 and rng.random() < 0.5:
            start = max(0, start - rng.randint(1, 3))
        parts.append((start, stop))
    return parts


# --- the formats -------------------------------------------------------------------------------
# Each writer puts ``messages`` (one part) under ``root`` as part number ``n`` of the chat.


def _snowflake(when: datetime, i: int) -> str:
    ms = int(when.timestamp() * 1000) - 1_420_070_400_000
    return str((ms << 22) + i)


def _write(path: Path, data: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(data, encoding="utf-8")


def _discord_json(root: Path, n: int, messages: list[Message], index: dict) -> None:
    document = {
        "guild": {"id": "1", "name": "Guild"},
        "channel": {"id": "900", "type": "GuildTextChat", "name": "general"},
        "messages": [
            {
                "id": _snowflake(m.when, index[m]),
                "type": "Default",
                "timestamp": m.when.isoformat(),
                "content": m.text,
                "author": {"id": str(100 + PEOPLE.index(m.author)), "name": m.author},
            }
            for m in messages
        ],
    }
    _write(root / f"Guild - general [900] [part {n}].json", json.dumps(document, indent=2))


def _csv_field(text: str) -> str:
    return '"' + text.replace('"', '""') + '"'


def _discord_csv(root: Path, n: int, messages: list[Message], index: dict) -> None:
    rows = ["AuthorID,Author,Date,Content,Attachments,Reactions"]
    for m in messages:
        stamp = m.when.strftime("%Y-%m-%dT%H:%M:%S.0000000+00:00")
        author_id = str(100 + PEOPLE.index(m.author))
        rows.append(",".join(map(_csv_field, (author_id, m.author, stamp, m.text, "", ""))))
    _write(root / "general" / f"{n}.csv", "\n".join(rows) + "\n")


def _discord_csv_legacy(root: Path, n: int, messages: list[Message], index: dict) -> None:
    rows = ["AuthorID;Author;Date;Content;Attachments;Reactions;"]
    for m in messages:
        stamp = m.when.strftime("%d-%b-%y %I:%M %p")
        author_id = str(100 + PEOPLE.index(m.author))
        rows.append(";".join(map(_csv_field, (author_id, m.author, stamp, m.text, "", ""))) + ";")
    _write(root / "dev-general" / f"{n}.csv", "\n".join(rows) + "\n")


def _discord_txt(root: Path, n: int, messages: list[Message], index: dict) -> None:
    rule = "=" * 62
    lines = [rule, "Guild: Guild", "Channel: general", rule, ""]
    for m in messages:
        stamp = f"{m.when.month}/{m.when.day}/{m.when.year} {m.when.strftime('%I:%M %p')}"
        lines += [f"[{stamp.replace(' 0', ' ')}] {m.author}", m.text, "", ""]
    _write(root / f"Guild - general [part {n}].txt", "\n".join(lines) + "\n")


def _whatsapp(root: Path, n: int, messages: list[Message], index: dict) -> None:
    lines = [f"{m.when.strftime('%d/%m/%Y, %H:%M')} - {m.author}: {m.text}" for m in messages]
    _write(root / f"download {n}" / "WhatsApp Chat with Bob.txt", "\n".join(lines) + "\n")


def _telegram(root: Path, n: int, messages: list[Message], index: dict) -> None:
    document = {
        "name": "Friends",
        "type": "private_group",
        "id": 4242,
        "messages": [
            {
                "id": index[m] + 1,
                "type": "message",
                "date": m.when.strftime("%Y-%m-%dT%H:%M:%S"),
                "date_unixtime": str(int(m.when.timestamp())),
                "from": m.author,
                "from_id": f"user{100 + PEOPLE.index(m.author)}",
                "text": m.text,
                "text_entities": [{"type": "plain", "text": m.text}],
            }
            for m in messages
        ],
    }
    _write(root / f"Telegram Desktop {n}" / "ChatExport" / "result.json", json.dumps(document))


def _ms(when: datetime) -> int:
    return int(when.timestamp() * 1000)


def _meta_legacy(root: Path, n: int, messages: list[Message], index: dict) -> None:
    document = {
        "participants": [{"name": name} for name in PEOPLE],
        "messages": [
            {"sender_name": m.author, "timestamp_ms": _ms(m.when), "content": m.text}
            for m in reversed(messages)  # Meta writes newest first
        ],
        "title": "Friends",
        "is_still_participant": True,
        "thread_path": "inbox/friends_1234567890",
        "magic_words": [],
    }
    _write(root / "inbox" / "friends_1234567890" / f"message_{n}.json", json.dumps(document))


def _meta_e2ee(root: Path, n: int, messages: list[Message], index: dict) -> None:
    document = {
        "participants": list(PEOPLE),
        "threadName": "Friends",
        "messages": [
            {
                "isUnsent": False,
                "media": [],
                "reactions": [],
                "senderName": m.author,
                "text": m.text,
                "timestamp": _ms(m.when),
                "type": "Generic",
            }
            for m in messages
        ],
    }
    _write(root / f"download {n}" / "Friends_1.json", json.dumps(document))


def _slack(root: Path, n: int, messages: list[Message], index: dict) -> None:
    users = [
        {"id": uid, "name": name.lower(), "real_name": name, "profile": {"real_name": name}}
        for name, uid in _USER_IDS.items()
    ]
    _write(root / "users.json", json.dumps(users))
    _write(root / "channels.json", json.dumps([{"id": "C0GENERAL", "name": "general"}]))
    day = [
        {
            "type": "message",
            "user": _USER_IDS[m.author],
            "text": m.text,
            "ts": f"{int(m.when.timestamp())}.{index[m]:06d}",
        }
        for m in messages
    ]
    # Daily files by name; a part's messages may span days, which the reader takes as given.
    _write(root / "general" / f"2024-01-{n:02d}.json", json.dumps(day, indent=4))


WRITERS: dict[str, Callable[[Path, int, list[Message], dict], None]] = {
    "discord_json": _discord_json,
    "discord_csv": _discord_csv,
    "discord_csv_legacy": _discord_csv_legacy,
    "discord_txt": _discord_txt,
    "whatsapp": _whatsapp,
    "telegram": _telegram,
    "meta_legacy": _meta_legacy,
    "meta_e2ee": _meta_e2ee,
    "slack": _slack,
}


MIXED = ("discord_json", "whatsapp", "telegram", "slack")  # the mixed folder


def cli_pairs(folder: Path, out: Path, *me: str) -> pa.Table:
    """``echo-pipeline pairs folder --out out --me ...`` in process; the table it wrote."""
    from echo_pipeline.operations.cli import main

    argv = ["pairs", str(folder), "--out", str(out)]
    for name in me or (ME,):
        argv += ["--me", name]
    assert main(argv) == 0
    return pq.read_table(out)


def assert_same_pairs(whole: pa.Table, split: pa.Table) -> None:
    assert whole.num_rows > 0  # a property about nothing would pass on a broken reader
    assert split.to_pylist() == whole.to_pylist()
    assert split.equals(whole, check_metadata=True)


def write_export(fmt: str, root: Path, messages: list[Message]) -> Path:
    """The chat as one export of ``fmt`` under ``root``."""
    index = {m: i for i, m in enumerate(messages)}
    WRITERS[fmt](root, 1, messages, index)
    return root


def write_split_export(
    fmt: str, root: Path, messages: list[Message], rng: random.Random, k: int
) -> Path:
    """The chat as up to k overlapping parts of ``fmt`` under ``root``, numbered out of order."""
    index = {m: i for i, m in enumerate(messages)}
    parts = split_points(rng, len(messages), k)
    numbers = rng.sample(range(1, len(parts) + 1), len(parts))
    for (start, stop), number in zip(parts, numbers, strict=True):
        WRITERS[fmt](root, number, messages[start:stop], index)
    return root
