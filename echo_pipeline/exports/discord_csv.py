"""DiscordChatExporter ``-f Csv`` exports to CHAT_MESSAGES.

Two families:

* 2.16+ (``discord_csv``): header ``AuthorID,Author,Date,Content,Attachments,Reactions``.
* up to 2.15 (``discord_csv_legacy``): ``;``-separated with a trailing ``;``:
  ``AuthorID;Author;Date;Content;Attachments;Reactions;`` (2.15), ``Author;Date;...;Reactions;``
  (2.14) and ``Author;Date;Content;Attachments;`` (2.5-2.13). Without an AuthorID column the
  author's full name stands in for the id.

What CSV cannot tell (documented limits): no message ids (they are synthesised, see
``synthetic_message_ids``), no type column (system messages are recognised by DCE's fixed
fallback sentences), no bot flag (``is_bot`` is False), no replies, no edits, no channel (taken
from the ``[channelId]`` in the file name, else a hash of the file name). Dates without an
offset (every locale form) are taken as UTC. Fields are parsed as RFC 4180, so quoted content
may hold newlines; every line ending becomes ``\\n``.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pyarrow as pa

from echo_pipeline.exports._common import (
    attachment_kind,
    build_table,
    channel_id_from_name,
    channel_name_from_name,
    export_stem,
    folder_channel_name,
    is_bare_part,
    is_system_text,
    parse_export_dates,
    read_text,
    stable_channel_id,
    synthetic_message_ids,
    timestamps_to_int,
)
from echo_pipeline.exports.errors import ExportError

HEADER = "AuthorID,Author,Date,Content,Attachments,Reactions"
_FIELD_LIMIT = 1 << 30
LEGACY_HEADERS = (
    "AuthorID;Author;Date;Content;Attachments;Reactions;",
    "Author;Date;Content;Attachments;Reactions;",
    "Author;Date;Content;Attachments;",
)


def normalise_header(line: str) -> str:
    """A header line as DCE wrote it: no BOM, quotes or surrounding whitespace."""
    return line.lstrip("\ufeff").strip().replace('"', "")


def read_discord_csv(path: Path) -> pa.Table:
    """A 2.16+ comma CSV export as a CHAT_MESSAGES table."""
    return _read(path, "discord_csv")


def read_discord_csv_legacy(path: Path) -> pa.Table:
    """A <=2.15 semicolon CSV export as a CHAT_MESSAGES table."""
    return _read(path, "discord_csv_legacy")


def _read(path: Path, source_format: str) -> pa.Table:
    text = read_text(path)
    first_line = text.split("\n", 1)[0]
    header = normalise_header(first_line)
    expected = (HEADER,) if source_format == "discord_csv" else LEGACY_HEADERS
    if header not in expected:
        raise ExportError(
            path,
            f"unexpected CSV header {first_line[:120]!r}; expected `{expected[0]}` "
            "(a DiscordChatExporter `-f Csv` export)",
        )
    delimiter = "," if source_format == "discord_csv" else ";"
    columns = header.rstrip(";").split(delimiter)
    rows = _rows(path, text, delimiter)
    next(rows)  # the header, checked above

    index = {name: i for i, name in enumerate(columns)}
    width = len(columns)
    authors, names, dates, contents, attachments = [], [], [], [], []
    for row in rows:
        if not row:
            continue  # a blank line between records
        if len(row) < width:
            row = row + [""] * (width - len(row))
        name = row[index["Author"]]
        names.append(name)
        authors.append(row[index["AuthorID"]] if "AuthorID" in index else name)
        dates.append(row[index["Date"]])
        contents.append(row[index["Content"]])
        attachments.append(row[index["Attachments"]].strip())

    channel_id, channel_name = csv_channel(path)
    timestamps = parse_export_dates(dates, path, "row")
    first_urls = [a.split(",", 1)[0].strip() if a else None for a in attachments]
    return build_table(
        path,
        source_format,
        channel_id,
        channel_name,
        message_id=synthetic_message_ids(
            channel_id, authors, timestamps_to_int(timestamps), contents
        ),
        timestamp=timestamps,
        author_id=authors,
        author_name=names,
        is_bot=[False] * len(contents),
        kind=["system" if is_system_text(c) else "message" for c in contents],
        content=contents,
        reply_to_id=[None] * len(contents),
        has_attachments=[bool(a) for a in attachments],
        attachment_kind=[attachment_kind(u) if u else None for u in first_urls],
        edited=[False] * len(contents),
    )


def csv_channel(path: Path) -> tuple[str, str]:
    """(channel id, channel name) of a CSV export, which only its file name can tell.

    DCE's default name carries ``[channelId]``; a bare numbered part (``17.csv``) belongs to
    its folder's channel; anything else is its own channel, named after the file.
    """
    from_name = channel_id_from_name(path)
    if from_name is None and is_bare_part(path):
        folder = folder_channel_name(path)
        return stable_channel_id("discord_csv", "parts", folder), folder
    channel_id = from_name or stable_channel_id("discord_csv", export_stem(path))
    return channel_id, channel_name_from_name(path)


def describe_csv(path: Path) -> dict[str, str]:
    """For ``inspect``: a bare numbered part says which channel it is read as part of."""
    if channel_id_from_name(path) is None and is_bare_part(path):
        return {
            "shape_note": f"a numbered part of channel {folder_channel_name(path)!r} (no "
            "channel in the file: the numbered files of one folder are read as one channel, "
            "in time order)"
        }
    return {}


def _rows(path: Path, text: str, delimiter: str):
    # The default 128 KiB field limit would refuse a long message (Discord Nitro: 4,000 chars,
    # but hand-made or merged exports hold more); the limit is process-wide, so only raise it.
    csv.field_size_limit(max(csv.field_size_limit(), _FIELD_LIMIT))
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    try:
        yield from reader
    except csv.Error as error:
        raise ExportError(
            path,
            f"malformed CSV at line {reader.line_num} ({error}); the file is truncated or "
            "was edited by hand, re-export it",
        ) from None


__all__ = ["HEADER", "LEGACY_HEADERS", "read_discord_csv", "read_discord_csv_legacy"]
