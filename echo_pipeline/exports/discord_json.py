"""DiscordChatExporter ``-f Json`` exports (releases 2.18-2.47) to CHAT_MESSAGES.

The file is memory-mapped and decoded by msgspec straight into small typed structs that declare
only the keys we use; every other key (embeds, reactions, roles, stickers...) is skipped in C
without building Python objects, and absent keys take defaults, so every release's schema
decodes. Columns are then built with one list comprehension each and the timestamps are parsed
in one vectorised call: a 1M-message export needs no per-message Python work beyond that.
"""

from __future__ import annotations

import codecs
import mmap
import re
from pathlib import Path

import msgspec
import pyarrow as pa
import pyarrow.compute as pc

from echo_pipeline.exports._common import (
    attachment_kind,
    build_table,
    channel_id_from_name,
    channel_name_from_name,
    export_stem,
    iso_to_utc,
    stable_channel_id,
    synthetic_message_ids,
    timestamps_to_int,
)
from echo_pipeline.exports.errors import ExportError

Id = str | int | None


class _User(msgspec.Struct, gc=False):
    id: Id = None
    name: str | None = None
    nickname: str | None = None
    isBot: bool | None = None


class _Attachment(msgspec.Struct, gc=False):
    url: str | None = None
    fileName: str | None = None


class _Reference(msgspec.Struct, gc=False):
    messageId: Id = None
    type: str | None = None


class _Interaction(msgspec.Struct, gc=False):
    id: Id = None


class _Message(msgspec.Struct, gc=False):
    id: Id = None
    type: str | int | None = None
    timestamp: str | None = None
    timestampEdited: str | None = None
    content: str | None = None
    author: _User | None = None
    attachments: list[_Attachment] | None = None
    reference: _Reference | None = None
    interaction: _Interaction | None = None


class _Channel(msgspec.Struct, gc=False):
    id: Id = None
    name: str | None = None


class _Export(msgspec.Struct, gc=False):
    channel: _Channel | None = None
    messages: list[_Message] | None = None


_DECODER = msgspec.json.Decoder(_Export)

#: MessageKind names DCE writes, and the Discord type numbers it writes for the rest.
_KIND_BY_TYPE = {
    None: "message",
    "Default": "message",
    "0": "message",
    "Reply": "reply",
    "19": "reply",
    "20": "command",  # ChatInputCommand: a slash-command response
    "23": "command",  # ContextMenuCommand
    **dict.fromkeys(
        [
            "RecipientAdd",
            "RecipientRemove",
            "Call",
            "ChannelNameChange",
            "ChannelIconChange",
            "ChannelPinnedMessage",
            "GuildMemberJoin",
            "ThreadCreated",
            *"1 2 3 4 5 6 7 18".split(),
        ],
        "system",
    ),
}

# A \uD800-\uDFFF escape, preceded by an even number of backslashes (so it is a real escape),
# optionally followed by a second one. Valid high+low pairs are kept, lone halves replaced.
_SURROGATE_ESCAPE = re.compile(
    rb"(?<!\\)((?:\\\\)*)\\u([dD][89a-fA-F][0-9a-fA-F]{2})(\\u[dD][c-fC-F][0-9a-fA-F]{2})?"
)
_BYTE_OFFSET = re.compile(r"\(byte (\d+)\)")


def read_discord_json(path: Path) -> pa.Table:
    """One DiscordChatExporter JSON export as a CHAT_MESSAGES table (see module docstring)."""
    export = _decode_file(path)
    if export.channel is None:
        raise ExportError(
            path, 'JSON is not a DiscordChatExporter export: it has no "channel" object'
        )
    if export.messages is None:
        raise ExportError(
            path, 'JSON is not a DiscordChatExporter export: it has no "messages" list'
        )
    channel_id = _as_str(export.channel.id) or channel_id_from_name(path)
    channel_id = channel_id or stable_channel_id("discord_json", export_stem(path))
    return _messages_table(path, channel_id, export.channel.name, export.messages)


def _messages_table(
    path: Path, channel_id: str, channel_name: str | None, msgs: list[_Message]
) -> pa.Table:
    authors = [m.author for m in msgs]
    author_ids = [_as_str(a.id) if a is not None else None for a in authors]
    author_ids = [a if a is not None else "unknown" for a in author_ids]
    author_names = [
        (a.nickname or a.name or author_id) if a is not None else "Unknown"
        for a, author_id in zip(authors, author_ids, strict=True)
    ]
    contents = [m.content if m.content is not None else "" for m in msgs]

    types = [m.type for m in msgs]
    kinds = [_KIND_BY_TYPE.get(t if t.__class__ is not int else str(t), "other") for t in types]
    for i, m in enumerate(msgs):
        if m.interaction is not None or (m.reference is not None and m.reference.type):
            kinds[i] = _override_kind(m, kinds[i])
    reply_to = [
        _as_str(m.reference.messageId) if k == "reply" and m.reference is not None else None
        for m, k in zip(msgs, kinds, strict=True)
    ]

    attachments = [m.attachments for m in msgs]
    first_attachment = [(a[0].fileName or a[0].url or "") if a else None for a in attachments]

    message_ids = [_as_str(m.id) for m in msgs]
    timestamps = _timestamps(path, msgs, message_ids)
    if None in message_ids:  # hand-made files: give id-less messages the text formats' ids
        synthetic = synthetic_message_ids(
            channel_id, author_ids, timestamps_to_int(timestamps), contents
        )
        message_ids = [m or s for m, s in zip(message_ids, synthetic, strict=True)]

    return build_table(
        path,
        "discord_json",
        channel_id,
        channel_name,
        message_id=message_ids,
        timestamp=timestamps,
        author_id=author_ids,
        author_name=author_names,
        is_bot=[bool(a is not None and a.isBot) for a in authors],
        kind=kinds,
        content=contents,
        reply_to_id=reply_to,
        has_attachments=[bool(a) for a in attachments],
        attachment_kind=[attachment_kind(f) if f is not None else None for f in first_attachment],
        edited=[bool(m.timestampEdited) for m in msgs],
    )


def _override_kind(m: _Message, kind: str) -> str:
    """Forwards and app-command output are not the author's own words, whatever their type."""
    if kind == "system":
        return kind
    if m.reference is not None and m.reference.type == "Forward":
        return "forward"
    if m.interaction is not None:
        return "command"
    return kind


def _timestamps(path: Path, msgs: list[_Message], message_ids: list[str | None]) -> pa.Array:
    """UTC timestamps; a missing or unreadable one falls back to the snowflake id's time."""
    timestamps = iso_to_utc([m.timestamp for m in msgs])
    if timestamps.null_count == 0:
        return timestamps
    values = timestamps.cast(pa.int64()).to_pylist()
    for i, value in enumerate(values):
        if value is None:
            mid = message_ids[i]
            if mid is None or not mid.isdigit():
                raise ExportError(
                    path,
                    f"message {mid or f'#{i + 1}'} has no readable timestamp "
                    f"({msgs[i].timestamp!r}) and no snowflake id to take one from",
                )
            values[i] = ((int(mid) >> 22) + 1_420_070_400_000) * 1000
    return pc.cast(pa.array(values, pa.int64()), pa.timestamp("us", tz="UTC"))


def _as_str(value: str | int | None) -> str | None:
    if value is None or value.__class__ is str:
        return value  # type: ignore[return-value]
    return str(value)


# --- decoding ---------------------------------------------------------------------------------


def _decode_file(path: Path) -> _Export:
    try:
        with path.open("rb") as handle:
            size = path.stat().st_size
            if size == 0:
                raise ExportError(path, "empty file (0 bytes); re-export the chat")
            with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as buf:
                bom = 3 if buf[:3] == b"\xef\xbb\xbf" else 0  # DCE writes none; editors may
                with memoryview(buf) as view, view[bom:] as body:
                    return _decode(path, body, bom, size)
    except OSError as error:
        raise ExportError(path, f"cannot read file ({error.strerror or error})") from None


_DECODE_ERRORS = (msgspec.DecodeError, UnicodeDecodeError, RecursionError)


def _decode(path: Path, body: memoryview, bom: int, size: int) -> _Export:
    """Decode; on malformed JSON retry once with lone surrogates replaced, else ExportError."""
    try:
        return _DECODER.decode(body)
    except _DECODE_ERRORS as error:
        # msgspec reports a lone surrogate escape ("\ud800") as malformed or truncated JSON.
        malformed = type(error) is msgspec.DecodeError
        fixed = _replace_lone_surrogates(body) if malformed else None
        if fixed is None:
            raise _export_error(path, error, body, bom, size) from None
    try:
        return _DECODER.decode(fixed)  # same length as the file: byte offsets still hold
    except _DECODE_ERRORS as error:
        raise _export_error(path, error, fixed, bom, size) from None


def _export_error(path: Path, error: Exception, data, bom: int, size: int) -> ExportError:
    if isinstance(error, msgspec.ValidationError):
        return _not_an_export(path, error)
    if isinstance(error, msgspec.DecodeError):
        return _invalid_json(path, error, bom, size)
    if isinstance(error, UnicodeDecodeError):
        return _not_utf8(path, data, bom)
    return _too_deep(path)


def _replace_lone_surrogates(buf) -> bytes | None:
    """The file with lone UTF-16 surrogate escapes turned into U+FFFD (same length), or None."""
    data = bytes(buf)
    if not re.search(rb"\\u[dD][89a-fA-F]", data):
        return None

    def fix(match: re.Match[bytes]) -> bytes:
        backslashes, first, second = match.group(1), match.group(2), match.group(3)
        if first[1:2].lower() in b"89ab" and second is not None:
            return match.group(0)  # a valid pair
        replaced = backslashes + b"\\ufffd"
        if second is not None:  # a lone low surrogate followed by another lone low one
            replaced += b"\\ufffd"
        return replaced

    fixed = _SURROGATE_ESCAPE.sub(fix, data)
    return None if fixed == data else fixed


def _invalid_json(path: Path, error: msgspec.DecodeError, bom: int, size: int) -> ExportError:
    detail = str(error)
    match = _BYTE_OFFSET.search(detail)
    offset = int(match.group(1)) + bom if match else size
    if match is None or "truncated" in detail:
        why = "the file ends mid-document; the export was probably interrupted, re-export it"
    else:
        why = f"{_BYTE_OFFSET.sub('', detail).strip()}; re-export the chat with `-f Json`"
    return ExportError(path, f"truncated or invalid JSON at byte {offset} of {size} ({why})")


def _not_an_export(path: Path, error: msgspec.ValidationError) -> ExportError:
    return ExportError(
        path,
        f"JSON is not a DiscordChatExporter export ({error}); export the chat with "
        "DiscordChatExporter `-f Json`",
    )


def _not_utf8(path: Path, buf, bom: int) -> ExportError:
    """Find the first invalid UTF-8 byte without building one huge string."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    chunk = 1 << 24
    where = ""
    with memoryview(buf) as view:
        for start in range(0, len(view), chunk):
            pending = len(decoder.getstate()[0])  # bytes held back from the previous chunk
            try:
                decoder.decode(view[start : start + chunk], final=start + chunk >= len(view))
            except UnicodeDecodeError as error:
                where = f" at byte offset {bom + start - pending + error.start}"
                break
    return ExportError(path, f"not UTF-8 text: invalid byte{where}; re-export the chat")


def _too_deep(path: Path) -> ExportError:
    return ExportError(
        path, "JSON is nested too deeply to be a DiscordChatExporter export; re-export the chat"
    )


__all__ = ["read_discord_json"]
