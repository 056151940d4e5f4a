"""DiscordChatExporter ``-f Json`` exports (releases 2.18-2.47) to CHAT_MESSAGES.

The file is memory-mapped and decoded by msgspec straight into small typed structs that declare
only the keys we use; every other key (embeds, reactions, roles, stickers...) is skipped in C
without building Python objects, and absent keys take defaults, so every release's schema
decodes. Each column is then gathered with ``map(attrgetter(...))`` (a C loop) and finished with
vectorised Arrow kernels; the timestamps are parsed in one vectorised call. Python-level loops
touch only the few messages that need them (replies, attachments, app commands, forwards).
"""

from __future__ import annotations

import codecs
import mmap
import re
from itertools import compress
from operator import attrgetter
from pathlib import Path

import msgspec
import pyarrow as pa
import pyarrow.compute as pc

from echo_pipeline.exports._common import (
    attachment_kind,
    build_table,
    channel_id_from_name,
    channel_name_from_name,
    decode_json,
    export_stem,
    gc_paused,
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
_NO_AUTHOR = _User(id="unknown", name="Unknown")

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
            *["1", "2", "3", "4", "5", "6", "7", "18"],
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
    with gc_paused():
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
        channel_name = export.channel.name or channel_name_from_name(path)
        return _messages_table(path, channel_id, channel_name, export.messages)


def _messages_table(
    path: Path, channel_id: str, channel_name: str | None, msgs: list[_Message]
) -> pa.Table:
    n = len(msgs)
    rows = range(n)
    authors = _column(msgs, "author")
    if None in authors:
        authors = [a if a is not None else _NO_AUTHOR for a in authors]
    author_ids = pc.fill_null(_strings(_column(authors, "id")), "unknown")
    author_names = pc.coalesce(
        _non_empty(_column(authors, "nickname")), _non_empty(_column(authors, "name")), author_ids
    )
    contents = pc.fill_null(pa.array(_column(msgs, "content"), pa.string()), "")

    kinds = list(map(_KIND_BY_TYPE.get, _column(msgs, "type")))
    if None in kinds:  # numeric types decoded as ints, unknown names
        kinds = [k or _kind_of_type(m.type) for k, m in zip(kinds, msgs, strict=True)]
    references = _column(msgs, "reference")
    for i in compress(rows, _column(msgs, "interaction")):
        if kinds[i] != "system":
            kinds[i] = "command"  # app-command output is the bot's, whatever the type says
    reply_to: list[str | None] = [None] * n
    for i in compress(rows, references):
        if references[i].type == "Forward" and kinds[i] != "system":
            kinds[i] = "forward"  # someone else's words
        elif kinds[i] == "reply":
            reply_to[i] = _as_str(references[i].messageId)

    attachments = _column(msgs, "attachments")
    attachment_kinds: list[str | None] = [None] * n
    for i in compress(rows, attachments):
        first = attachments[i][0]
        attachment_kinds[i] = attachment_kind(first.fileName or first.url or "")

    message_ids = _strings(_column(msgs, "id"))
    timestamps = _timestamps(path, msgs, message_ids)
    if message_ids.null_count:  # hand-made files: give id-less messages the text formats' ids
        synthetic = synthetic_message_ids(
            channel_id,
            author_ids.to_pylist(),
            timestamps_to_int(timestamps),
            contents.to_pylist(),
        )
        message_ids = pc.coalesce(message_ids, pa.array(synthetic, pa.string()))

    edited = pa.array(_column(msgs, "timestampEdited"), pa.string())
    return build_table(
        path,
        "discord_json",
        channel_id,
        channel_name,
        message_id=message_ids,
        timestamp=timestamps,
        author_id=author_ids,
        author_name=author_names,
        is_bot=pc.fill_null(pa.array(_column(authors, "isBot"), pa.bool_()), False),
        kind=kinds,
        content=contents,
        reply_to_id=reply_to,
        has_attachments=list(map(bool, attachments)),
        attachment_kind=attachment_kinds,
        edited=pc.fill_null(pc.not_equal(edited, ""), False),
    )


def _column(items: list, name: str) -> list:
    """One attribute of every struct, gathered in C (no per-item Python bytecode)."""
    return list(map(attrgetter(name), items))


def _strings(values: list[str | int | None]) -> pa.Array:
    """Ids as an Arrow string array; DCE writes strings, hand-made files sometimes numbers."""
    try:
        return pa.array(values, pa.string())
    except (pa.ArrowTypeError, pa.ArrowInvalid):
        return pa.array([_as_str(v) for v in values], pa.string())


def _non_empty(values: list[str | None]) -> pa.Array:
    array = pa.array(values, pa.string())
    return pc.if_else(pc.equal(array, ""), pa.scalar(None, pa.string()), array)


def _kind_of_type(message_type: str | int | None) -> str:
    return _KIND_BY_TYPE.get(_as_str(message_type), "other")


def _timestamps(path: Path, msgs: list[_Message], message_ids: pa.Array) -> pa.Array:
    """UTC timestamps; a missing or unreadable one falls back to the snowflake id's time."""
    timestamps = iso_to_utc(_column(msgs, "timestamp"))
    if timestamps.null_count == 0:
        return timestamps
    values = timestamps.cast(pa.int64()).to_pylist()
    for i, value in enumerate(values):
        if value is None:
            mid = message_ids[i].as_py()
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
    if not isinstance(path, Path):  # a zip member: no file to map, so its bytes are read
        data = path.read_bytes()
        if not data:
            raise ExportError(path, "empty file (0 bytes); re-export the chat")
        bom = 3 if data[:3] == b"\xef\xbb\xbf" else 0
        with memoryview(data) as view, view[bom:] as body:
            return _decode(path, body, bom, len(data))
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


_DECODE_ERRORS = (msgspec.DecodeError, UnicodeDecodeError)
_ADVICE_JSON = "re-export the chat with DiscordChatExporter `-f Json`"


def _decode(path: Path, body: memoryview, bom: int, size: int) -> _Export:
    """Decode; on malformed JSON retry once with lone surrogates replaced, else ExportError."""
    try:
        return decode_json(path, _DECODER, body, _ADVICE_JSON)
    except _DECODE_ERRORS as error:
        # msgspec reports a lone surrogate escape ("\ud800") as malformed or truncated JSON.
        malformed = type(error) is msgspec.DecodeError
        fixed = _replace_lone_surrogates(body) if malformed else None
        if fixed is None:
            raise _export_error(path, error, body, bom, size) from None
    try:
        return decode_json(
            path, _DECODER, fixed, _ADVICE_JSON
        )  # same length as the file: byte offsets still hold
    except _DECODE_ERRORS as error:
        raise _export_error(path, error, fixed, bom, size) from None


def _export_error(path: Path, error: Exception, data, bom: int, size: int) -> ExportError:
    if isinstance(error, msgspec.ValidationError):
        return _not_an_export(path, error)
    # Decoders word (and type) invalid UTF-8 differently from one release to the next: msgspec
    # 0.22 raises UnicodeDecodeError, 0.23 a DecodeError without a position. So the bytes decide:
    # whichever comes first, an invalid UTF-8 sequence or the point where the JSON broke.
    json_offset = _json_error_offset(error)
    scan_to = len(data) if json_offset is None else min(len(data), json_offset + 4)
    bad_byte = _first_invalid_utf8(data, scan_to)
    if bad_byte is not None and (json_offset is None or bad_byte <= json_offset):
        return _not_utf8(path, bom + bad_byte, data[bad_byte])
    return _invalid_json(path, error, json_offset, bom, size)


def _json_error_offset(error: Exception) -> int | None:
    """Where the decoder says the JSON broke, if it says (``... (byte N)``)."""
    match = _BYTE_OFFSET.search(str(error)) if isinstance(error, msgspec.DecodeError) else None
    return int(match.group(1)) if match else None


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


def _invalid_json(
    path: Path, error: Exception, json_offset: int | None, bom: int, size: int
) -> ExportError:
    detail = str(error)
    if json_offset is None:  # the decoder ran out of input: no position to give
        why = "the file ends mid-document; the export was probably interrupted, re-export it"
        offset = size
    else:
        why = f"{_BYTE_OFFSET.sub('', detail).strip()}; re-export the chat with `-f Json`"
        offset = bom + json_offset
    return ExportError(path, f"truncated or invalid JSON at byte {offset} of {size} ({why})")


def _not_an_export(path: Path, error: msgspec.ValidationError) -> ExportError:
    return ExportError(
        path,
        f"JSON is not a DiscordChatExporter export ({error}); export the chat with "
        "DiscordChatExporter `-f Json`",
    )


def _first_invalid_utf8(buf, end: int) -> int | None:
    """Offset of the first byte before ``end`` that is not valid UTF-8, or None.

    Decoded in chunks so a large export never becomes one huge string; a multi-byte character
    cut by ``end`` counts as valid (the bytes after it decide, and they were not asked about).
    """
    decoder = codecs.getincrementaldecoder("utf-8")()
    chunk = 1 << 24
    with memoryview(buf) as view:
        for start in range(0, end, chunk):
            stop = min(start + chunk, end)
            pending = len(decoder.getstate()[0])  # bytes held back from the previous chunk
            try:
                decoder.decode(view[start:stop], final=stop == len(view))
            except UnicodeDecodeError as error:
                return start - pending + error.start
    return None


def _not_utf8(path: Path, offset: int, byte: int) -> ExportError:
    return ExportError(
        path,
        f"not UTF-8 text: byte 0x{byte:02X} at byte offset {offset} is invalid (text saved in "
        "another encoding, or a damaged file); re-export the chat",
    )


__all__ = ["read_discord_json"]
