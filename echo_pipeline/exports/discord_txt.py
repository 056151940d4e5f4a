"""DiscordChatExporter ``-f PlainText`` (``.txt``) exports to CHAT_MESSAGES, best effort.

Layout (both the <=2.15 and the 2.16+ styles)::

    ==============================================================
    Guild: <guild>
    Channel: <category> / <channel>
    Topic: ... / After: ... / Messages: N / Range: ...      (optional lines)
    ==============================================================

    [<date>] <FullName>[ (pinned)]
    <content, possibly several lines>

    {Attachments} / {Embed} / {Stickers} / {Reactions} / {Forwarded Message} blocks

    ...
    ==============================================================            (2.16+ only)
    Exported N message(s)
    ==============================================================

A message header is a line ``[<date>] <author>`` that follows a blank line and whose date has
the shape of the first header's date (the date form is learned from the file). The body runs
to the next header; the ``{...}`` blocks after it are stripped from the content.

Limits: no message ids (synthesised), no types (system messages are recognised by DCE's fixed
fallback sentences), no replies, edits or bot flag; dates have minute precision and no zone
(taken as UTC; order within a minute comes from ``seq``); the author is the full name
(``name#1234`` or ``name``), used as both id and name. A content line that is a blank line
followed by something shaped like a header, or a line that is exactly ``{Embed}`` etc. after a
blank line, is misread.
"""

from __future__ import annotations

import re
from pathlib import Path

import pyarrow as pa

from echo_pipeline.exports._common import (
    attachment_kind,
    build_table,
    channel_id_from_name,
    export_stem,
    is_system_text,
    parse_export_dates,
    read_text,
    stable_channel_id,
    synthetic_message_ids,
    timestamps_to_int,
)
from echo_pipeline.exports.errors import ExportError

RULE = re.compile(r"^={10,}\s*$")
_FOOTER = re.compile(r"^Exported [\d,.\u00a0\u202f ]+ message\(s\)\s*$")
_ANY_HEADER = re.compile(r"^\[(?P<date>[^\[\]]{6,40})\] (?P<author>.+)$")
_BLOCK_TAGS = frozenset(
    {"{Attachments}", "{Embed}", "{Stickers}", "{Reactions}", "{Forwarded Message}"}
)
_PINNED = " (pinned)"


def date_shape(example: str) -> str:
    """A regex matching dates written like ``example`` (digits, letters and separators)."""
    parts = []
    for token in re.findall(r"\d+|[^\W\d_]+|\s+|.", example):
        if token[0].isdigit():
            parts.append(r"\d{1,4}")
        elif token[0].isspace():
            parts.append(r"\s+")
        elif token[0].isalpha():
            parts.append(r"[^\W\d_]+\.?")
        else:
            parts.append(re.escape(token))
    return "".join(parts)


def read_discord_txt(path: Path) -> pa.Table:
    """A DiscordChatExporter PlainText export as a CHAT_MESSAGES table (see module docstring)."""
    lines = read_text(path).split("\n")
    meta, start = _preamble(path, lines)
    end = _body_end(lines, start)

    headers = _header_lines(lines, start, end)
    authors, raw_dates, contents, first_attachments, kinds = [], [], [], [], []
    for h, (index, date, author) in enumerate(headers):
        stop = headers[h + 1][0] if h + 1 < len(headers) else end
        content, attachment, forwarded = _body(lines[index + 1 : stop])
        authors.append(author)
        raw_dates.append(date)
        contents.append(content)
        first_attachments.append(attachment)
        if is_system_text(content):
            kinds.append("system")
        elif forwarded and not content:
            kinds.append("forward")
        else:
            kinds.append("message")

    channel = meta.get("Channel")
    channel_name = channel.rsplit(" / ", 1)[-1].strip() if channel else None
    channel_id = channel_id_from_name(path) or (
        stable_channel_id("discord_txt", meta.get("Guild", ""), channel)
        if channel
        else stable_channel_id("discord_txt", export_stem(path))
    )
    timestamps = parse_export_dates(raw_dates, path, "message")
    n = len(contents)
    return build_table(
        path,
        "discord_txt",
        channel_id,
        channel_name,
        message_id=synthetic_message_ids(
            channel_id, authors, timestamps_to_int(timestamps), contents
        ),
        timestamp=timestamps,
        author_id=authors,
        author_name=authors,
        is_bot=[False] * n,
        kind=kinds,
        content=contents,
        reply_to_id=[None] * n,
        has_attachments=[a is not None for a in first_attachments],
        attachment_kind=[attachment_kind(a) if a is not None else None for a in first_attachments],
        edited=[False] * n,
    )


def _preamble(path: Path, lines: list[str]) -> tuple[dict[str, str], int]:
    """The ``Key: value`` lines between the two rules, and the index of the first body line."""
    i = 0
    while i < len(lines) and not lines[i].strip():
        i += 1
    if i == len(lines) or not RULE.match(lines[i].lstrip("\ufeff")):
        raise ExportError(path, "not a DiscordChatExporter PlainText export (no '=====' preamble)")
    meta: dict[str, str] = {}
    i += 1
    while i < len(lines) and not RULE.match(lines[i]):
        key, sep, value = lines[i].partition(":")
        if sep:
            meta.setdefault(key.strip(), value.strip())
        i += 1
    if i == len(lines):
        raise ExportError(path, "PlainText preamble never ends (no closing '=====' line)")
    return meta, i + 1


def _body_end(lines: list[str], start: int) -> int:
    """Index after the last body line: trailing blanks and the 2.16+ footer cut off."""
    end = len(lines)
    while end > start and not lines[end - 1].strip():
        end -= 1
    if (
        end - start >= 3
        and RULE.match(lines[end - 1])
        and _FOOTER.match(lines[end - 2])
        and RULE.match(lines[end - 3])
    ):
        end -= 3
    return end


def _header_lines(lines: list[str], start: int, end: int) -> list[tuple[int, str, str]]:
    """(line index, date, author) of every message header, with the date form learned once."""
    header = None
    for i in range(start, end):
        first = _ANY_HEADER.match(lines[i])
        if first:
            header = re.compile(
                r"^\[(?P<date>" + date_shape(first.group("date")) + r")\] (?P<author>.+)$"
            )
            break
    if header is None:
        return []
    found = []
    for i in range(start, end):
        if i > start and lines[i - 1].strip() and found:
            continue  # a header always follows a blank line (or opens the body)
        match = header.match(lines[i])
        if match:
            author = match.group("author").rstrip()
            author = author.removesuffix(_PINNED)
            found.append((i, match.group("date"), author))
    return found


def _body(body: list[str]) -> tuple[str, str | None, bool]:
    """(content, first attachment URL or None, has a forwarded-message block)."""
    tags = [i for i, line in enumerate(body) if line in _BLOCK_TAGS and (i == 0 or not body[i - 1])]
    content_lines = body[: tags[0]] if tags else body
    while content_lines and not content_lines[-1].strip():
        content_lines = content_lines[:-1]
    attachment = None
    forwarded = False
    for i in tags:
        if body[i] == "{Attachments}" and attachment is None:
            attachment = body[i + 1].strip() if i + 1 < len(body) else ""
        forwarded = forwarded or body[i] == "{Forwarded Message}"
    return "\n".join(content_lines), attachment, forwarded


__all__ = ["RULE", "read_discord_txt"]
