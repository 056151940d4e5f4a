"""WhatsApp "Export chat" text files (iOS ``_chat.txt`` and Android ``WhatsApp Chat with X.txt``).

Line shapes::

    [12/01/2023, 10:15:42 PM] Bob: text          iOS (U+202F may sit before PM, U+200E before
                                                 system and media lines)
    12/01/2023, 22:15 - Bob: text                Android (also "1/12/23, 10:15 PM - ...")
    12/01/2023, 22:15 - Alice added Bob          Android system line: no "Name: "

A line that does not start with a timestamp continues the previous message. Day/month order is
inferred from the file: a first field above 12 means day first, a second one above 12 means
month first; otherwise day first (most locales). Times carry no zone and are taken as UTC.

Media placeholders (``<Media omitted>``, ``image omitted``, ``<attached: x.jpg>``,
``x.jpg (file attached)``) set ``has_attachments`` and leave the content empty; ``<This message
was edited>`` sets ``edited``; deleted-message placeholders become kind ``other``; encryption
notices, group changes and missed calls become ``system`` (recognised in English only).
Author id and name are the contact name as the phone showed it; system lines without an author
get ``(system)``. Message ids are synthesised (see ``synthetic_message_ids``). The channel is the
chat's name from the file name ("WhatsApp Chat with Bob.txt", "WhatsApp Chat - Bob/_chat.txt"),
and its id a hash of that name, so two chats with the same name share a channel id.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa

from echo_pipeline.exports._common import (
    attachment_kind,
    build_table,
    channel_name_from_name,
    read_text,
    stable_channel_id,
    synthetic_message_ids,
)
from echo_pipeline.exports.errors import ExportError

#: Invisible direction marks WhatsApp sprinkles over its exports.
MARKS = "\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\ufeff"
_STRIP_MARKS = dict.fromkeys(map(ord, MARKS))

_DATE = r"(?P<date>\d{1,4}[./-]\d{1,2}[./-]\d{1,4})"
_TIME = r"(?P<time>\d{1,2}[:.]\d{2}(?:[:.]\d{2})?(?:\s?(?P<ampm>[AaPp])\.?\s?[Mm]\.?)?)"
IOS_LINE = re.compile(r"^\[" + _DATE + r",?\s" + _TIME + r"\]\s(?P<rest>.*)$")
ANDROID_LINE = re.compile(r"^" + _DATE + r",?\s" + _TIME + r"\s[-–]\s(?P<rest>.*)$")

SYSTEM_AUTHOR = "(system)"

# System notices that can contain ": " themselves (quoted group names), checked first.
_QUOTED_SYSTEM = re.compile(
    r'(?:(?!: ).)+? (?:created group|changed the subject (?:from|to)|changed the group name (?:from|to)) "'
)
# Notices recognisable from their wording even inside a "Name: text" line.
_NOTICE = re.compile(
    r"(?:Messages and calls are end-to-end encrypted"
    r"|Messages to this (?:group|chat) are now secured with end-to-end encryption"
    r"|Your security code with .+ changed"
    r"|Missed (?:group )?(?:voice|video) call"
    r"|This chat is with a business account"
    r"|Disappearing messages were turned (?:on|off)"
    r").*",
    re.DOTALL,
)
_DELETED = re.compile(r"(?:This message was deleted|You deleted this message)\.?")
_EDITED = re.compile(r"\s*<This message was edited>\s*$")
_MEDIA = re.compile(
    r"<Media omitted>"
    r"|(?P<what>image|video|audio|sticker|GIF|Contact card|voice message) omitted"
    r"|(?:.+ )?document omitted"  # iOS: "report.pdf • 3 pages document omitted"
    r"|<attached: (?P<attached>[^>]+)>"
    r"|(?P<file>[^\n]+?\.\w{2,5}) \(file attached\)",
    re.IGNORECASE,
)
_MEDIA_KIND = {
    "image": "image",
    "sticker": "image",
    "gif": "video",
    "video": "video",
    "audio": "audio",
    "voice message": "audio",
}


def parse_line(line: str) -> re.Match[str] | None:
    """The timestamp header of a WhatsApp line (iOS or Android), or None for a continuation."""
    head = line.lstrip(MARKS)
    return IOS_LINE.match(head) or ANDROID_LINE.match(head)


def read_whatsapp(path: Path) -> pa.Table:
    """A WhatsApp chat export as a CHAT_MESSAGES table (see module docstring)."""
    lines = read_text(path).split("\n")
    stamps: list[tuple[str, str, str | None, int]] = []  # date, time, am/pm, line number
    authors: list[str] = []
    bodies: list[list[str]] = []
    ios_marked: list[bool] = []  # text began with U+200E: an iOS system or media line
    for number, line in enumerate(lines, start=1):
        match = parse_line(line)
        if match is None:
            if bodies:
                bodies[-1].append(line.translate(_STRIP_MARKS))
            continue
        ampm = match.group("ampm")
        stamps.append((match.group("date"), match.group("time"), ampm, number))
        author, text, marked = _split_author(match.group("rest"), ios=match.re is IOS_LINE)
        authors.append(author)
        bodies.append([text])
        ios_marked.append(marked)

    if not stamps:
        raise ExportError(path, "no WhatsApp messages found (no line starts with a date)")
    timestamps = _timestamps(path, stamps)

    kinds, contents, edited, media = [], [], [], []
    for author, body, marked in zip(authors, bodies, ios_marked, strict=True):
        kind, content, is_edited, medium = _classify(author, "\n".join(body), marked)
        kinds.append(kind)
        contents.append(content)
        edited.append(is_edited)
        media.append(medium)
    authors = [
        SYSTEM_AUTHOR if k == "system" and a == "" else a
        for a, k in zip(authors, kinds, strict=True)
    ]

    channel_name = channel_name_from_name(path)
    # The chat's name, not the file's: a re-export ("... (1).txt", another folder) dedupes.
    channel_id = stable_channel_id("whatsapp", channel_name)
    return build_table(
        path,
        "whatsapp",
        channel_id,
        channel_name,
        message_id=synthetic_message_ids(channel_id, authors, timestamps, contents),
        timestamp=pa.array(timestamps, pa.timestamp("us", tz="UTC")),
        author_id=authors,
        author_name=authors,
        is_bot=[False] * len(kinds),
        kind=kinds,
        content=contents,
        reply_to_id=[None] * len(kinds),
        has_attachments=[m is not None for m in media],
        attachment_kind=media,
        edited=edited,
    )


def _split_author(rest: str, *, ios: bool) -> tuple[str, str, bool]:
    """(author or "", text, text was U+200E-marked) from what follows the timestamp."""
    if not ios and _QUOTED_SYSTEM.match(rest.translate(_STRIP_MARKS)):
        return "", rest, False
    author, sep, text = rest.partition(": ")
    if not sep:
        return "", rest, False  # Android system line ("Alice added Bob") or iOS oddity
    return author.translate(_STRIP_MARKS).strip(), text, ios and text.startswith("\u200e")


def _classify(author: str, raw: str, marked: bool) -> tuple[str, str, bool, str | None]:
    """(kind, content, edited, attachment kind or None) of one message's text."""
    text = raw.translate(_STRIP_MARKS).rstrip()
    edited = _EDITED.search(text) is not None
    if edited:
        text = _EDITED.sub("", text)
    if author == "":
        return "system", text.strip(), False, None
    first, _, rest = text.partition("\n")
    media = _MEDIA.fullmatch(first.strip())
    if media is not None:
        return "message", rest.strip(), edited, _media_kind(media)
    if _DELETED.fullmatch(text.strip()):
        return "other", "", edited, None
    if _NOTICE.fullmatch(text.strip()) or marked:
        return "system", text.strip(), False, None
    return "message", text, edited, None


def _media_kind(match: re.Match[str]) -> str:
    name = match.group("attached") or match.group("file")
    if name:
        return attachment_kind(name) or "file"
    return _MEDIA_KIND.get((match.group("what") or "").lower(), "file")


def _timestamps(path: Path, stamps: list[tuple[str, str, str | None, int]]) -> list[int]:
    """UTC microseconds for every header, with the file's day/month order inferred once."""
    fields = [tuple(int(x) for x in re.split(r"[./-]", date)) for date, _, _, _ in stamps]
    year_first = all(len(re.split(r"[./-]", d)[0]) == 4 for d, _, _, _ in stamps)
    day_first = True
    if not year_first and not any(f[0] > 12 for f in fields) and any(f[1] > 12 for f in fields):
        day_first = False
    out = []
    for (date, time, ampm, number), (a, b, c) in zip(stamps, fields, strict=True):
        if year_first:
            year, month, day = a, b, c
        elif day_first:
            day, month, year = a, b, c
        else:
            month, day, year = a, b, c
        if year < 100:
            year += 2000
        clock = [int(x) for x in re.findall(r"\d+", time)]
        hour, minute, second = clock[0], clock[1], clock[2] if len(clock) > 2 else 0
        if ampm is not None:
            hour = hour % 12 + (12 if ampm.lower() == "p" else 0)
        try:
            moment = datetime(year, month, day, hour, minute, second, tzinfo=UTC)
        except ValueError as error:
            raise ExportError(
                path, f"line {number}: unreadable WhatsApp date {date!r} {time!r} ({error})"
            ) from None
        out.append(int(moment.timestamp()) * 1_000_000)
    return out


__all__ = ["ANDROID_LINE", "IOS_LINE", "MARKS", "parse_line", "read_whatsapp"]
