"""Telegram Desktop "Export chat history" / "Export Telegram data" JSON (``result.json``).

Two shapes share one message format: a single chat's export (``name``, ``type``, ``id``,
``messages``) and the full-account export (``personal_information``, ``chats.list[]``,
``left_chats.list[]``). Chats the owner left are read too: their history up to leaving is still
the owner's conversation. One table per chat is built and the tables are concatenated, with
``seq`` renumbered over the whole file.

msgspec decodes the file into small structs that declare only the keys used here; everything
else (reactions, stickers' thumbnails, poll answers...) is skipped in C. Columns are gathered with
``map(attrgetter(...))`` and finished with Arrow kernels; Python loops touch only the messages
that need them (entity lists, media). Choices the format leaves open:

- ``text`` (a string, or a list of strings and ``{"type", "text"}`` entities) is joined into
  plain text; ``text_entities`` holds the same characters, each run wrapped in an object, so it
  is read only when ``text`` is absent.
- Time is ``date_unixtime`` (UTC seconds) when present; older exports only have ``date``, the
  exporting machine's local time without an offset, which is taken as UTC.
- ``type: "service"`` is ``system`` (author: ``actor_id``/``actor``; content: the text, else the
  action name). ``forwarded_from`` is ``forward`` even when the owner sent it. A message sent
  ``via_bot`` (an inline bot's result, e.g. @gif) is ``command``: a person chose it but the words
  are the bot's, so it is not the person's voice. The export has no bot flag: ``is_bot`` is
  set only in a ``bot_chat``, whose ``id`` is the bot's user id.
- Replies (``reply_to_message_id``) are ``reply`` with ``reply_to_id``; a reply to a message in
  another chat (``reply_to_peer_id``) is a plain message, since its id is another chat's.
- Media follows the Discord attachment policy: ``photo`` and stickers are ``image``; video files,
  round video messages and animations (GIFs, stored as MP4) ``video``; voice messages and audio
  files ``audio``; other files by MIME type or file name.
- Message ids are the export's own, unique per chat: a full-account export repeats ids across
  chats, which stay apart by ``channel_id`` (``telegram:<chat id>``).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from itertools import compress, repeat
from operator import attrgetter, is_not
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from echo_pipeline.exports._common import (
    attachment_kind,
    build_table,
    decode_json,
    gc_paused,
    iso_to_utc,
    raw_date_bounds,
    synthetic_message_ids,
    timestamps_to_int,
)
from echo_pipeline.exports.errors import ExportError
from echo_pipeline.infra.schemas import CHAT_MESSAGES, MESSAGE_KINDS

Id = str | int | None
_ABSENT = "\x00absent"  # default of keys whose mere presence matters (forwarded_from may be null)


class _Entity(msgspec.Struct, gc=False):
    text: str | None = None


class _Message(msgspec.Struct, gc=False):
    id: Id = None
    type: str | None = None
    date: str | None = None
    date_unixtime: str | int | None = None
    edited: str | None = None
    edited_unixtime: str | int | None = None
    author: str | None = msgspec.field(default=None, name="from")
    from_id: Id = None
    actor: str | None = None
    actor_id: Id = None
    action: str | None = None
    text: str | list[str | _Entity] | None = None
    forwarded_from: str | None = _ABSENT
    forwarded_from_id: Id = None
    via_bot: str | None = None
    reply_to_message_id: Id = None
    reply_to_peer_id: Id = None
    photo: str | None = None
    file: str | None = None
    file_name: str | None = None
    mime_type: str | None = None
    media_type: str | None = None


class _Chat(msgspec.Struct, gc=False):
    name: str | None = None
    type: str | None = None
    id: Id = None
    messages: list[_Message] | None = None


class _ChatList(msgspec.Struct, gc=False):
    chats: list[_Chat] | None = msgspec.field(default=None, name="list")


class _Personal(msgspec.Struct, gc=False):
    user_id: Id = None


class _Export(msgspec.Struct, gc=False):
    name: str | None = None
    type: str | None = None
    id: Id = None
    messages: list[_Message] | None = None
    personal_information: _Personal | None = None
    chats: _ChatList | None = None
    left_chats: _ChatList | None = None


class _EntitiesOnly(msgspec.Struct, gc=False):
    text_entities: list[_Entity] | None = None


class _EntitiesChat(msgspec.Struct, gc=False):
    messages: list[_EntitiesOnly] | None = None


class _EntitiesChatList(msgspec.Struct, gc=False):
    chats: list[_EntitiesChat] | None = msgspec.field(default=None, name="list")


class _EntitiesExport(msgspec.Struct, gc=False):
    """Only ``text_entities``: a second pass for messages without ``text`` (hand-made files)."""

    messages: list[_EntitiesOnly] | None = None
    chats: _EntitiesChatList | None = None
    left_chats: _EntitiesChatList | None = None


_DECODER = msgspec.json.Decoder(_Export)
_ENTITIES_DECODER = msgspec.json.Decoder(_EntitiesExport)

#: Chat ``type`` values Telegram Desktop writes (2018-2025).
CHAT_TYPES = (
    "personal_chat",
    "bot_chat",
    "private_group",
    "private_supergroup",
    "public_supergroup",
    "private_channel",
    "public_channel",
    "saved_messages",
    "replies",
    "verification_codes",
)
_CHANNEL_TYPES = ("private_channel", "public_channel")

# Codes into schemas.MESSAGE_KINDS (a plain tuple: a pyarrow array built at import would
# import pandas, through pyarrow's array-like checks, into the Dagster code location).
_MESSAGE, _REPLY, _SYSTEM, _COMMAND, _FORWARD, _OTHER = range(6)
assert MESSAGE_KINDS[:6] == ("message", "reply", "system", "command", "forward", "other")

_MEDIA_KIND = {
    "sticker": "image",
    "photo": "image",
    "animation": "video",
    "video_file": "video",
    "video_message": "video",
    "voice_message": "audio",
    "audio_file": "audio",
}
_MIME_KIND = {"image": "image", "video": "video", "audio": "audio"}
_BOM = b"\xef\xbb\xbf"
_BYTE_OFFSET = re.compile(r"\(byte (\d+)\)")
_ADVICE = 'export again from Telegram Desktop with format "Machine-readable JSON"'

# --- detection ---------------------------------------------------------------------------------

_KEY = r'(?<!\\)"{}"\s*:\s*'
_PERSONAL_KEY = re.compile(_KEY.format("personal_information") + r"\{")
_MESSAGES_KEY = re.compile(_KEY.format("messages") + r"\[")
_CHAT_TYPE = re.compile(_KEY.format("type") + '"(?:' + "|".join(CHAT_TYPES) + ')"')
_TELEGRAM_MESSAGE = re.compile(
    _KEY.format("date_unixtime") + '"?\\d' + "|" + _KEY.format("from_id") + r'"(?:user|channel)\d'
)


def sniff_telegram(text: str) -> bool:
    """True when the first 64 KiB of a JSON file look like a Telegram Desktop export."""
    if _PERSONAL_KEY.search(text) and text.lstrip().startswith("{"):
        return True
    return (
        text.lstrip().startswith("{")
        and _MESSAGES_KEY.search(text) is not None
        and (_CHAT_TYPE.search(text) is not None or _TELEGRAM_MESSAGE.search(text) is not None)
    )


# --- reading -----------------------------------------------------------------------------------


def read_telegram(path: Path) -> pa.Table:
    """A Telegram Desktop JSON export (one chat or the whole account) as CHAT_MESSAGES."""
    with gc_paused():
        export = _decode_file(path)
        owner = _owner_id(export)
        entities = _LazyEntities(path)
        tables = [
            _chat_table(path, chat, where, owner, lambda k=k: entities.chat(k))
            for k, (chat, where) in enumerate(_chats(path, export))
        ]
    tables = [t for t in tables if t.num_rows]
    if not tables:
        return CHAT_MESSAGES.empty_table()
    if len(tables) == 1:
        return tables[0]
    return _renumbered(pa.concat_tables(tables))


def _renumbered(table: pa.Table) -> pa.Table:
    """``seq`` = 0..n-1 again after concatenating or reordering."""
    seq = pa.array(np.arange(table.num_rows, dtype=np.int64))
    return table.set_column(CHAT_MESSAGES.get_field_index("seq"), CHAT_MESSAGES.field("seq"), seq)


def describe_telegram(path: Path) -> dict[str, Any]:
    """The export's shape in words and the owner's author id(s) when the export names them.

    A full-account export names its owner (``personal_information.user_id``). A single chat
    does not, but a personal (or bot) chat's ``id`` is the other side's user id, so the one
    other author is the owner; in Saved Messages every author is the owner.
    """
    with gc_paused():
        export = _decode_file(path)
        owner = _owner_id(export)
        chats = _chats(path, export)
        if export.chats is not None or export.left_chats is not None:
            left = len(export.left_chats.chats or []) if export.left_chats else 0
            shape = f"full-account export ({len(chats) - left} chats, {left} left chats)"
        else:
            shape = f"single chat ({export.type or 'unknown type'})"
        messages = [m for chat, _ in chats for m in chat.messages or []]
        if messages and all(m.date_unixtime is not None for m in messages):
            shape += ", times from date_unixtime (UTC)"
        else:
            shape += ", times are the exporting machine's local time, read as UTC"
        suggested = [owner] if owner else _owner_from_single_chat(export)
    return {"shape": "Telegram Desktop JSON, " + shape, "suggested_me": suggested}


def _owner_id(export: _Export) -> str | None:
    info = export.personal_information
    return _user_id(info.user_id) if info is not None and info.user_id is not None else None


def _owner_from_single_chat(export: _Export) -> list[str]:
    msgs = export.messages or []
    ids = {_user_id(m.from_id) for m in msgs if m.from_id is not None and m.type == "message"}
    if export.type == "saved_messages":
        return sorted(ids)
    if export.type in ("personal_chat", "bot_chat") and export.id is not None:
        others = ids - {f"user{export.id}"}
        if len(others) == 1 and f"user{export.id}" in ids:
            return sorted(others)
    return []


def _user_id(value: str | int) -> str:
    """Author ids as the export writes them; early exports wrote bare user numbers."""
    return value if value.__class__ is str else f"user{value}"  # type: ignore[return-value]


def _chats(path: Path, export: _Export) -> list[tuple[_Chat, str]]:
    """Every chat in the file, with where it sits (for error messages)."""
    if export.chats is not None or export.left_chats is not None:
        chats = []
        for key, group in (("chats", export.chats), ("left_chats", export.left_chats)):
            for i, chat in enumerate((group.chats or []) if group is not None else []):
                chats.append((chat, f"{key}.list[{i}]"))
        for chat, where in chats:
            if chat.messages is None:
                raise ExportError(path, f'chat {_label(chat, where)} has no "messages" list')
        return chats
    if export.messages is None:
        if export.personal_information is not None:
            raise ExportError(
                path,
                "full-account Telegram export without chats; tick 'Personal chats' (and groups) "
                f"in Settings > Advanced > Export Telegram data, or {_ADVICE}",
            )
        raise ExportError(path, f'not a Telegram chat export: it has no "messages" list; {_ADVICE}')
    chat = _Chat(name=export.name, type=export.type, id=export.id, messages=export.messages)
    return [(chat, "the chat")]


def _label(chat: _Chat, where: str) -> str:
    return f"{chat.name!r} ({where})" if chat.name else where


def _chat_table(
    path: Path,
    chat: _Chat,
    where: str,
    owner: str | None,
    entities: Callable[[], list[_EntitiesOnly]],
) -> pa.Table:
    msgs = chat.messages or []
    n = len(msgs)
    channel_id = "telegram:" + (str(chat.id) if chat.id is not None else where)
    if n == 0:
        return CHAT_MESSAGES.empty_table()

    types = pa.array(_column(msgs, "type"), pa.string())
    service = pc.fill_null(pc.equal(types, "service"), False)
    author_ids = pc.coalesce(_ids(_column(msgs, "from_id")), _ids(_column(msgs, "actor_id")))
    author_names = pc.coalesce(
        _non_empty(_column(msgs, "author")), _non_empty(_column(msgs, "actor"))
    )
    if author_ids.null_count:  # old channel posts and saved messages name no sender
        fallback_id, fallback_name = _default_author(chat, owner)
        author_ids = pc.fill_null(author_ids, fallback_id)
        author_names = pc.coalesce(author_names, pa.scalar(fallback_name))
    author_names = pc.coalesce(author_names, author_ids)  # deleted accounts: from is null

    contents = _contents(msgs, entities)
    contents = pc.if_else(
        pc.and_(service, pc.equal(contents, "")),
        pc.fill_null(pa.array(_column(msgs, "action"), pa.string()), ""),
        contents,
    )

    forwarded = pc.or_(
        pc.fill_null(
            pc.not_equal(pa.array(_column(msgs, "forwarded_from"), pa.string()), _ABSENT), True
        ),
        pc.is_valid(_ids(_column(msgs, "forwarded_from_id"))),
    )
    reply_to = _ids(_column(msgs, "reply_to_message_id"), bare=True)
    same_chat_reply = pc.and_(
        pc.is_valid(reply_to), pc.is_null(_ids(_column(msgs, "reply_to_peer_id"), bare=True))
    )
    codes = np.full(n, _MESSAGE, dtype=np.int8)
    codes[_mask(same_chat_reply)] = _REPLY
    codes[_mask(pc.is_valid(pa.array(_column(msgs, "via_bot"), pa.string())))] = _COMMAND
    codes[_mask(forwarded)] = _FORWARD
    # Telegram Desktop writes "message" or "service"; a message without a type is a message.
    known = pc.or_(pc.is_in(types, pa.array(["message", "service"])), pc.is_null(types))
    codes[~_mask(known)] = _OTHER
    codes[_mask(service)] = _SYSTEM
    kinds = pa.array(MESSAGE_KINDS, pa.string()).take(pa.array(codes))
    is_reply = pa.array(codes == _REPLY)
    reply_to = pc.if_else(is_reply, reply_to, pa.scalar(None, pa.string()))

    media = _media_kinds(msgs)
    timestamps = _timestamps(path, msgs, chat, where)
    message_ids = _ids(_column(msgs, "id"), bare=True)
    if message_ids.null_count:  # hand-made files: give id-less messages content-derived ids
        synthetic = synthetic_message_ids(
            channel_id,
            author_ids.to_pylist(),
            timestamps_to_int(timestamps),
            contents.to_pylist(),
        )
        message_ids = pc.coalesce(message_ids, pa.array(synthetic, pa.string()))
    edited = pc.or_(
        pc.is_valid(pa.array(_column(msgs, "edited"), pa.string())),
        pc.is_valid(_ids(_column(msgs, "edited_unixtime"), bare=True)),
    )

    table = build_table(
        path,
        "telegram",
        channel_id,
        chat.name,
        message_id=message_ids,
        timestamp=timestamps,
        author_id=author_ids,
        author_name=author_names,
        is_bot=_bot_rows(chat, author_ids),
        kind=kinds,
        content=contents,
        reply_to_id=reply_to,
        has_attachments=pc.is_valid(media),
        attachment_kind=media,
        edited=edited,
    )
    stamps = timestamps.cast(pa.int64()).to_numpy()
    if n > 1 and (np.diff(stamps) < 0).any():  # exports are in id order; keep time order
        order = np.argsort(stamps, kind="stable")
        table = _renumbered(table.take(pa.array(order)))
    return table


def _bot_rows(chat: _Chat, author_ids: pa.Array) -> pa.Array:
    """In a chat with a bot (``bot_chat``, whose ``id`` is the bot's) the bot's messages."""
    if chat.type == "bot_chat" and chat.id is not None:
        return pc.equal(author_ids, f"user{chat.id}")
    return pa.array(np.zeros(len(author_ids), dtype=bool))


def _default_author(chat: _Chat, owner: str | None) -> tuple[str, str]:
    """Who wrote a message that names no sender: the channel itself, or me in Saved Messages."""
    if chat.type in _CHANNEL_TYPES and chat.id is not None:
        return f"channel{chat.id}", chat.name or f"channel{chat.id}"
    if chat.type == "saved_messages" and owner is not None:
        return owner, owner
    return "unknown", "Unknown"


def _column(items: list, name: str) -> list:
    """One attribute of every struct, gathered in C (no per-item Python bytecode)."""
    return list(map(attrgetter(name), items))


def _mask(values: pa.Array) -> np.ndarray:
    return pc.fill_null(values, False).to_numpy(zero_copy_only=False)


def _ids(values: list[str | int | None], *, bare: bool = False) -> pa.Array:
    """Ids as strings; numbers (early exports' from_id, every message id) converted in C."""
    try:
        return pa.array(values, pa.string())
    except (pa.ArrowTypeError, pa.ArrowInvalid):
        pass
    try:
        return (
            pa.array(values, pa.int64()).cast(pa.string())
            if bare
            else pa.array([None if v is None else _user_id(v) for v in values], pa.string())
        )
    except (pa.ArrowTypeError, pa.ArrowInvalid):  # strings and numbers mixed
        return pa.array([None if v is None else str(v) for v in values], pa.string())


def _non_empty(values: list[str | None]) -> pa.Array:
    array = pa.array(values, pa.string())
    return pc.if_else(pc.equal(array, ""), pa.scalar(None, pa.string()), array)


def _contents(msgs: list[_Message], entities: Callable[[], list[_EntitiesOnly]]) -> pa.Array:
    """Plain text: strings kept, entity lists joined, ``text_entities`` when ``text`` is absent."""
    texts = _column(msgs, "text")
    # Rows whose text is not a plain string, found in C: most messages are plain strings.
    for i in compress(range(len(texts)), map(is_not, map(type, texts), repeat(str))):
        text = texts[i]
        if text is None:
            text = entities()[i].text_entities or []
        texts[i] = "".join(
            part if part.__class__ is str else (part.text or "")  # type: ignore[union-attr]
            for part in text
        )
    return pa.array(texts, pa.string())


class _LazyEntities:
    """Every message's ``text_entities``, decoded from the file once, on first need."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.chats: list[list[_EntitiesOnly]] | None = None

    def chat(self, k: int) -> list[_EntitiesOnly]:
        if self.chats is None:
            data = _read_bytes(self.path)
            try:
                body = data[3:] if data[:3] == _BOM else data
                export = decode_json(self.path, _ENTITIES_DECODER, body, _ADVICE)
            except msgspec.ValidationError as error:
                raise ExportError(
                    self.path, f"JSON is not a Telegram Desktop export ({error}); {_ADVICE}"
                ) from None
            if export.chats is not None or export.left_chats is not None:
                groups = (export.chats, export.left_chats)
                chats = [c for g in groups if g is not None for c in g.chats or []]
                self.chats = [c.messages or [] for c in chats]
            else:
                self.chats = [export.messages or []]
        return self.chats[k]


def _media_kinds(msgs: list[_Message]) -> pa.Array:
    """image | video | audio | file for messages with a photo, file or media type, else null."""
    kinds: list[str | None] = [None] * len(msgs)
    has_media = pc.or_(
        pc.or_(_present(msgs, "photo"), _present(msgs, "file")), _present(msgs, "media_type")
    )
    for i in np.flatnonzero(has_media.to_numpy(zero_copy_only=False)).tolist():
        msg = msgs[i]
        if msg.photo is not None:
            kinds[i] = "image"
        elif msg.media_type in _MEDIA_KIND:
            kinds[i] = _MEDIA_KIND[msg.media_type]
        elif msg.mime_type and msg.mime_type.split("/", 1)[0] in _MIME_KIND:
            kinds[i] = _MIME_KIND[msg.mime_type.split("/", 1)[0]]
        else:
            kinds[i] = attachment_kind(msg.file_name or msg.file or "")
    return pa.array(kinds, pa.string())


def _present(msgs: list[_Message], name: str) -> pa.Array:
    return pc.is_valid(pa.array(_column(msgs, name), pa.string()))


def _timestamps(path: Path, msgs: list[_Message], chat: _Chat, where: str) -> pa.Array:
    """UTC from ``date_unixtime``; where missing, ``date`` (local time without offset) as UTC."""
    unix = _ids(_column(msgs, "date_unixtime"), bare=True)
    try:
        seconds = pc.cast(unix, pa.int64())
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        seconds = pa.array([_int_or_none(v) for v in unix.to_pylist()], pa.int64())
    low, high = raw_date_bounds(1)
    clipped = pc.max_element_wise(seconds, low, skip_nulls=False)
    seconds = pc.min_element_wise(clipped, high, skip_nulls=False)  # no int64 wrap
    micros = pc.multiply(seconds, 1_000_000).cast(pa.timestamp("us", tz="UTC"))
    if micros.null_count == 0:
        return micros
    local = iso_to_utc(_column(msgs, "date"))
    timestamps = pc.coalesce(micros, local)
    if timestamps.null_count:
        i = int(np.flatnonzero(pc.is_null(timestamps).to_numpy(zero_copy_only=False))[0])
        msg = msgs[i]
        label = f"message {msg.id}" if msg.id is not None else f"message #{i + 1}"
        raise ExportError(
            path,
            f"{label} in chat {_label(chat, where)} has no readable date "
            f"(date={msg.date!r}, date_unixtime={msg.date_unixtime!r}); {_ADVICE}",
        )
    return timestamps


def _int_or_none(value: str | None) -> int | None:
    try:
        seconds = int(value) if value is not None else None
    except ValueError:
        return None
    if seconds is None:
        return None
    low, high = raw_date_bounds(1)  # past int64 too: out of range, reported by build_table
    return min(max(seconds, low), high)


# --- decoding ----------------------------------------------------------------------------------


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except IsADirectoryError:
        raise ExportError(path, "is a directory, not an export file") from None
    except OSError as error:
        raise ExportError(path, f"cannot read file ({error.strerror or error})") from None


def _decode_file(path: Path) -> _Export:
    data = _read_bytes(path)
    if not data.strip():
        raise ExportError(path, f"empty file; {_ADVICE}")
    bom = 3 if data[:3] == _BOM else 0
    try:
        with memoryview(data) as view, view[bom:] as body:
            return decode_json(path, _DECODER, body, _ADVICE)
    except msgspec.ValidationError as error:
        raise ExportError(
            path, f"JSON is not a Telegram Desktop export ({error}); {_ADVICE}"
        ) from None
    except (msgspec.DecodeError, UnicodeDecodeError) as error:
        raise _decode_error(path, error, data, bom) from None


def _decode_error(path: Path, error: Exception, data: bytes, bom: int) -> ExportError:
    detail = str(error)
    if isinstance(error, UnicodeDecodeError) or "UTF-8" in detail:
        try:
            data.decode("utf-8")
        except UnicodeDecodeError as bad:
            return ExportError(
                path,
                f"not UTF-8 text: byte 0x{data[bad.start]:02X} at byte offset {bad.start} is "
                f"invalid (a damaged file, or saved in another encoding); {_ADVICE}",
            )
    match = _BYTE_OFFSET.search(detail)
    if match is None:
        return ExportError(
            path,
            f"truncated JSON: the file ends mid-document at byte {len(data)} (the export was "
            f"probably interrupted or the file cut short); {_ADVICE}",
        )
    offset = bom + int(match.group(1))
    why = _BYTE_OFFSET.sub("", detail).strip()
    return ExportError(path, f"invalid JSON at byte {offset} of {len(data)} ({why}); {_ADVICE}")


__all__ = ["CHAT_TYPES", "describe_telegram", "read_telegram", "sniff_telegram"]
