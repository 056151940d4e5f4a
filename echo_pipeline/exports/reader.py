"""Read one export or a whole folder of them into CHAT_MESSAGES, and summarise an export."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from echo_pipeline.exports._common import export_sort_key, part_number
from echo_pipeline.exports.archive import ExportPath, as_export_path
from echo_pipeline.exports.detect import (
    FORMAT_NAMES,
    describe_json_head,
    detect_format,
    read_head_text,
)
from echo_pipeline.exports.discord_csv import (
    describe_csv,
    read_discord_csv,
    read_discord_csv_legacy,
)
from echo_pipeline.exports.discord_json import read_discord_json
from echo_pipeline.exports.discord_txt import read_discord_txt
from echo_pipeline.exports.discover import discover_export_files
from echo_pipeline.exports.errors import ExportError
from echo_pipeline.exports.meta import describe_meta, read_meta_e2ee, read_meta_legacy
from echo_pipeline.exports.slack import describe_slack, read_slack
from echo_pipeline.exports.telegram import describe_telegram, read_telegram
from echo_pipeline.exports.whatsapp import read_whatsapp
from echo_pipeline.infra.schemas import CHAT_MESSAGES, HUMAN_KINDS

_READERS: dict[str, Callable[[Path], pa.Table]] = {
    "discord_json": read_discord_json,
    "discord_csv": read_discord_csv,
    "discord_csv_legacy": read_discord_csv_legacy,
    "discord_txt": read_discord_txt,
    "whatsapp": read_whatsapp,
    "telegram": read_telegram,
    "meta_legacy": read_meta_legacy,
    "meta_e2ee": read_meta_e2ee,
    "slack": read_slack,
}
#: Every format an export is read as (detect_format names one of them).
FORMATS: tuple[str, ...] = tuple(_READERS)

#: What an export says of itself beyond its messages: its shape and, where it names its owner,
#: the suggested ``--me``. Formats without one get their fixed description and no owner.
_DESCRIBERS: dict[str, Callable[[Any], dict[str, Any]]] = {
    "telegram": describe_telegram,
    "meta_legacy": describe_meta,
    "meta_e2ee": describe_meta,
    "slack": describe_slack,
    "discord_csv": describe_csv,
    "discord_csv_legacy": describe_csv,
}
_SHAPES = {
    "discord_json": "DiscordChatExporter JSON",
    "discord_csv": "DiscordChatExporter CSV",
    "discord_csv_legacy": "DiscordChatExporter CSV, `;`-separated (releases up to 2.15)",
    "discord_txt": "DiscordChatExporter PlainText",
    "whatsapp": "WhatsApp 'Export chat' text (iOS or Android)",
}


def read_export(path: str | ExportPath) -> pa.Table:
    """One export file or zip member (any supported format, detected from its content)."""
    path = as_export_path(path)
    return _read(path, detect_format(path))


def _read(path: ExportPath, fmt: str) -> pa.Table:
    """The reader for ``fmt``; when it refuses a JSON file whose keys resemble something else,
    its error also says what the file looks like, since detection chose from a few keys."""
    try:
        return _READERS[fmt](path)
    except ExportError as error:
        if fmt not in FORMAT_NAMES:
            raise
        looks, guess, _ = describe_json_head(read_head_text(path))
        if guess is None:
            raise
        raise ExportError(
            error.path,
            f"{error.problem} (read as {FORMAT_NAMES[fmt]}, chosen from its keys; but the file "
            f"is {looks}: {guess})",
        ) from None


def read_exports(paths: Iterable[str | ExportPath] | str | Path) -> pa.Table:
    """Every export under ``paths`` as one CHAT_MESSAGES table, merged and deduplicated.

    Partitions (``[part 2]``, ``[2 of 5]``, numbered CSV parts ``17.csv``) share their channel
    id, so they simply concatenate. Overlapping exports of one channel are deduplicated on
    (channel_id, message_id): real ids where the format has them, content-derived ids for the
    other formats (whose chance repeats in files that merely touch are kept: see
    ``_coincidences_kept``). Rows are sorted by
    channel, timestamp, snowflake id (JSON), file, then ``seq``; files are ranked earliest-starting first (then part
    number, then the longer one), and the copy from the first-ranked file is kept, so messages
    that share a minute (CSV/TXT/WhatsApp precision) keep their order across partitions and
    overlapping exports.
    """
    files = discover_export_files(paths)
    tables = [(file, table) for file in files if (table := read_export(file)).num_rows]
    if not tables:
        return CHAT_MESSAGES.empty_table()
    tables.sort(key=_file_rank)
    table = pa.concat_tables([t for _, t in tables])
    file_rank = np.concatenate(
        [np.full(t.num_rows, i, dtype=np.int64) for i, (_, t) in enumerate(tables)]
    )
    channel = _channel_codes(table["channel_id"])
    keep = _first_copies(table, channel)
    if keep is not None:
        keep, table = _coincidences_kept(table, channel, file_rank, keep)
        table, file_rank, channel = table.take(keep), file_rank[keep], channel[keep]
    keys = (
        table["seq"].to_numpy(),
        file_rank,
        _snowflakes(table),
        table["timestamp"].cast(pa.int64()).to_numpy(),
        channel,
    )
    order = np.lexsort(keys)  # last key first: channel, timestamp, snowflake, file, seq
    if not np.array_equal(order, np.arange(len(order))):
        table = table.take(pa.array(order))
    return table


def _snowflakes(table: pa.Table) -> np.ndarray:
    """Discord message ids as integers (0 for other formats): snowflakes grow with creation
    time, so they order messages that share a timestamp whichever file they came from."""
    ids = table["message_id"]
    real = pc.and_(
        pc.equal(table["source_format"], "discord_json"),
        pc.match_substring_regex(ids, r"^[0-9]{1,19}$"),
    )
    as_numbers = pc.if_else(real, ids, "0").cast(pa.uint64())
    return as_numbers.to_numpy()


def _channel_codes(channel_ids: pa.ChunkedArray) -> np.ndarray:
    """Each row's channel as an integer that sorts like the channel id string."""
    encoded = pc.dictionary_encode(channel_ids).combine_chunks()
    names = encoded.dictionary.to_pylist()
    rank = np.empty(len(names), dtype=np.int64)
    rank[sorted(range(len(names)), key=names.__getitem__)] = np.arange(len(names))
    return rank[encoded.indices.to_numpy(zero_copy_only=False)]


def _first_copies(table: pa.Table, channel: np.ndarray) -> np.ndarray | None:
    """Row indices that keep the first copy of every (channel, message id); None if no repeats."""
    if len(pc.unique(table["message_id"])) == table.num_rows:
        return None  # the common case, decided by one hash pass
    keyed = pa.table(
        {
            "channel": channel,
            "message_id": table["message_id"],
            "row": np.arange(table.num_rows, dtype=np.int64),
        }
    )
    first = keyed.group_by(["channel", "message_id"], use_threads=False).aggregate(
        [("row", "min")]
    )["row_min"]
    return np.sort(first.to_numpy())


def _coincidences_kept(
    table: pa.Table, channel: np.ndarray, file_rank: np.ndarray, keep: np.ndarray
) -> tuple[np.ndarray, pa.Table]:
    """``keep`` plus the repeats of content-derived ids that are not an overlap of two files.

    A content-derived id (``m-``: CSV, PlainText, WhatsApp, Meta) is the same for the same
    author, minute and text, so two files share one either because they overlap (an export
    made twice over different date ranges) or by chance (":/" sent twice in a minute, the two
    falling in consecutive numbered parts). Overlapping exports share a run at the end of one
    and the start of the other, or the whole of one; anything else is a coincidence, and
    those rows are kept, their ids suffixed (``~2``) to stay unique.
    """
    dropped = np.setdiff1d(np.arange(table.num_rows), keep)
    ids = table["message_id"]
    synthetic = pc.starts_with(ids.take(pa.array(dropped)), "m-").to_numpy(zero_copy_only=False)
    if not synthetic.any():
        return keep, table
    seq = table["seq"].to_numpy()
    sizes = np.bincount(file_rank)
    # Every row of every repeated (channel, id), by group: which files hold it, where.
    repeated = dropped[synthetic]
    keys = list(
        zip(channel[repeated].tolist(), ids.take(pa.array(repeated)).to_pylist(), strict=True)
    )
    wanted = set(keys)
    all_keys = zip(channel.tolist(), ids.to_pylist(), strict=True)
    groups: dict[tuple, list[int]] = {}
    for row, key in enumerate(all_keys):
        if key in wanted:
            groups.setdefault(key, []).append(row)
    shared: dict[tuple[int, int], list[tuple[int, int]]] = {}
    for rows in groups.values():
        for a in rows:
            for b in rows:
                if file_rank[a] < file_rank[b]:
                    shared.setdefault((file_rank[a], file_rank[b]), []).append((seq[a], seq[b]))

    overlaps: dict[tuple[int, int], bool] = {}

    def overlap(fa: int, fb: int) -> bool:
        if (fa, fb) not in overlaps:
            seqs = shared.get((fa, fb), [])
            in_a = {a for a, _ in seqs}
            in_b = {b for _, b in seqs}
            overlaps[fa, fb] = bool(
                (0 in in_b and sizes[fa] - 1 in in_a)
                or (0 in in_a and sizes[fb] - 1 in in_b)
                or len(in_a) == sizes[fa]
                or len(in_b) == sizes[fb]
            )
        return overlaps[fa, fb]

    kept_too: list[int] = []
    new_ids: dict[int, str] = {}
    for key, rows in groups.items():
        copies = 1
        for i, row in enumerate(rows[1:], start=1):
            if not any(overlap(file_rank[earlier], file_rank[row]) for earlier in rows[:i]):
                copies += 1
                kept_too.append(row)
                new_ids[row] = f"{key[1]}~{copies}"
    if not kept_too:
        return keep, table
    id_list = ids.to_pylist()
    for row, new_id in new_ids.items():
        id_list[row] = new_id
    table = table.set_column(
        table.schema.get_field_index("message_id"),
        table.schema.field("message_id"),
        pa.array(id_list, pa.string()),
    )
    return np.sort(np.concatenate([keep, np.array(kept_too, dtype=keep.dtype)])), table


def _file_rank(item: tuple[ExportPath, pa.Table]) -> tuple:
    file, table = item
    start = pc.min(table["timestamp"]).cast(pa.int64()).as_py()
    return (start, part_number(file), -table.num_rows, export_sort_key(file))


def inspect_export(path: str | ExportPath) -> dict[str, Any]:
    """What is in one export: format and shape, chats, counts by kind, time span, authors.

    ``shape`` says which form of the format this is (Telegram's single chat or whole account,
    Meta's legacy or end-to-end encrypted JSON...). ``suggested_me`` holds the owner's author
    ids where the export names its owner (Telegram's personal information, the other side of a
    Meta 1:1 thread), else is empty. ``channels`` lists every chat in the file (a Telegram
    account export holds many).

    ``authors`` counts every message, ``human_authors`` only people's own words (no bots, system
    messages or app commands): the candidates for ``--me``. ``content_access_suspect`` is True
    when most human messages are blank without attachments, the sign of an export made with a
    bot token lacking the Message Content intent.
    """
    path = as_export_path(path)
    fmt = detect_format(path)
    table = _read(path, fmt)
    kind = table["kind"]
    blank = pc.and_(pc.equal(table["content"], ""), pc.invert(table["has_attachments"]))
    human = pc.and_(pc.is_in(kind, pa.array(HUMAN_KINDS)), pc.invert(table["is_bot"]))
    humans = pc.sum(human).as_py() or 0
    blank_humans = pc.sum(pc.and_(human, blank)).as_py() or 0
    span = pc.min_max(table["timestamp"])
    described = _DESCRIBERS[fmt](path) if fmt in _DESCRIBERS else {}
    return {
        "path": str(path),
        "format": fmt,
        "shape": "; ".join(
            filter(
                None, [described.get("shape", _SHAPES.get(fmt, fmt)), described.get("shape_note")]
            )
        ),
        "suggested_me": list(described.get("suggested_me", [])),
        "channel": table["channel_name"][0].as_py() if table.num_rows else None,
        "channel_id": table["channel_id"][0].as_py() if table.num_rows else None,
        "channels": _channels(table),
        "messages": table.num_rows,
        "kinds": dict(sorted(_counts(kind).items())),
        "system": int(pc.sum(pc.equal(kind, "system")).as_py() or 0),
        "bots": int(pc.sum(table["is_bot"]).as_py() or 0),
        "blank": int(pc.sum(blank).as_py() or 0),
        "with_attachments": int(pc.sum(table["has_attachments"]).as_py() or 0),
        "first": _iso(span["min"].as_py()),
        "last": _iso(span["max"].as_py()),
        "authors": _authors(table),
        "human_authors": _authors(table.filter(human)),
        "content_access_suspect": humans > 0 and blank_humans / humans > 0.5,
    }


def _channels(table: pa.Table) -> list[dict[str, Any]]:
    """Each chat of the file with its message count, in order of first appearance."""
    grouped = table.group_by("channel_id", use_threads=False).aggregate(
        [("channel_id", "count"), ("channel_name", "first"), ("seq", "min")]
    )
    chats = sorted(
        zip(
            grouped["seq_min"].to_pylist(),
            grouped["channel_id"].to_pylist(),
            grouped["channel_name_first"].to_pylist(),
            grouped["channel_id_count"].to_pylist(),
            strict=True,
        )
    )
    return [{"id": i, "name": name, "messages": n} for _, i, name, n in chats]


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
