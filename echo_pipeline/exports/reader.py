"""Read one export or a whole folder of them into CHAT_MESSAGES, and summarise an export."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from echo_pipeline.exports._common import export_sort_key
from echo_pipeline.exports.detect import detect_format
from echo_pipeline.exports.discord_csv import read_discord_csv, read_discord_csv_legacy
from echo_pipeline.exports.discord_json import read_discord_json
from echo_pipeline.exports.discord_txt import read_discord_txt
from echo_pipeline.exports.discover import discover_export_files
from echo_pipeline.exports.whatsapp import read_whatsapp
from echo_pipeline.schemas import CHAT_MESSAGES

_READERS: dict[str, Callable[[Path], pa.Table]] = {
    "discord_json": read_discord_json,
    "discord_csv": read_discord_csv,
    "discord_csv_legacy": read_discord_csv_legacy,
    "discord_txt": read_discord_txt,
    "whatsapp": read_whatsapp,
}

#: Kinds that are someone's own words; the rest are dropped before pairing.
HUMAN_KINDS = ("message", "reply")


def read_export(path: str | Path) -> pa.Table:
    """One export file (any supported format, detected from its content) as CHAT_MESSAGES."""
    path = Path(path)
    return _READERS[detect_format(path)](path)


def read_exports(paths: Iterable[str | Path] | str | Path) -> pa.Table:
    """Every export under ``paths`` as one CHAT_MESSAGES table, merged and deduplicated.

    Partitions (``[part 2]``, ``[2 of 5]``) share their channel id, so they simply concatenate.
    Overlapping exports of one channel are deduplicated on (channel_id, message_id): real
    snowflake ids for JSON, content-derived ids for the other formats (the copy in the file
    read first, in file-name order, is kept). Rows are sorted by channel, timestamp, then file order and ``seq``
    (so minute-precision ties keep their order across partitions).
    """
    files = sorted(discover_export_files(paths), key=export_sort_key)  # order given is irrelevant
    tables = [read_export(file) for file in files]
    tables = [t for t in tables if t.num_rows]
    if not tables:
        return CHAT_MESSAGES.empty_table()
    file_rank = pa.array(
        np.concatenate([np.full(t.num_rows, i, dtype=np.int64) for i, t in enumerate(tables)])
    )
    table = pa.concat_tables(tables).append_column("_file", file_rank)
    table = table.append_column("_row", pa.array(np.arange(table.num_rows, dtype=np.int64)))
    first = table.group_by(["channel_id", "message_id"], use_threads=False).aggregate(
        [("_row", "min")]
    )["_row_min"]
    table = table.take(first)
    table = table.sort_by(
        [("channel_id", "ascending"), ("timestamp", "ascending"), ("_file", "ascending"), ("seq", "ascending")]
    )
    return table.drop_columns(["_file", "_row"])


def inspect_export(path: str | Path) -> dict[str, Any]:
    """What is in one export: format, channel, counts by kind, time span, authors.

    ``content_access_suspect`` is True when most human messages are blank without attachments,
    the sign of an export made with a bot token lacking the Message Content intent.
    """
    path = Path(path)
    fmt = detect_format(path)
    table = _READERS[fmt](path)
    kind = table["kind"]
    blank = pc.and_(pc.equal(table["content"], ""), pc.invert(table["has_attachments"]))
    human = pc.and_(pc.is_in(kind, pa.array(HUMAN_KINDS)), pc.invert(table["is_bot"]))
    humans = pc.sum(human).as_py() or 0
    blank_humans = pc.sum(pc.and_(human, blank)).as_py() or 0
    span = pc.min_max(table["timestamp"])
    return {
        "path": str(path),
        "format": fmt,
        "channel": table["channel_name"][0].as_py() if table.num_rows else None,
        "channel_id": table["channel_id"][0].as_py() if table.num_rows else None,
        "messages": table.num_rows,
        "kinds": dict(sorted(_counts(kind).items())),
        "system": int(pc.sum(pc.equal(kind, "system")).as_py() or 0),
        "bots": int(pc.sum(table["is_bot"]).as_py() or 0),
        "blank": int(pc.sum(blank).as_py() or 0),
        "with_attachments": int(pc.sum(table["has_attachments"]).as_py() or 0),
        "first": _iso(span["min"].as_py()),
        "last": _iso(span["max"].as_py()),
        "authors": _authors(table),
        "content_access_suspect": humans > 0 and blank_humans / humans > 0.5,
    }


def _counts(column: pa.ChunkedArray) -> dict[str, int]:
    counts = pc.value_counts(column)
    return {
        value.as_py(): count.as_py()
        for value, count in zip(counts.field("values"), counts.field("counts"), strict=True)
    }


def _authors(table: pa.Table) -> list[dict[str, Any]]:
    """Authors by message count (then name), each named as on their last message in the file."""
    grouped = table.group_by("author_id", use_threads=False).aggregate(
        [("author_id", "count"), ("author_name", "last")]
    )
    authors = [
        {"id": author_id, "name": name, "messages": count}
        for author_id, name, count in zip(
            grouped["author_id"].to_pylist(),
            grouped["author_name_last"].to_pylist(),
            grouped["author_id_count"].to_pylist(),
            strict=True,
        )
    ]
    return sorted(authors, key=lambda a: (-a["messages"], a["name"], a["id"]))


def _iso(value) -> str | None:
    return value.isoformat() if value is not None else None
