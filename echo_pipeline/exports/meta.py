"""Meta "Download your information" JSON: Messenger and Instagram threads.

Two formats, told apart by their keys:

``meta_legacy``
    ``message_1.json``, ``message_2.json``… in one folder per thread (Messenger under
    ``messages/inbox/<name>_<id>/``, newer downloads under ``your_facebook_activity/`` or
    ``your_activity_across_facebook/``; Instagram under ``your_instagram_activity/messages/``).
    ``participants: [{name}]``, ``title``, ``thread_path`` and ``messages[]`` of
    ``sender_name``, ``timestamp_ms``, ``content``, ``type`` (Generic, Share, Call, Subscribe,
    Unsubscribe), ``is_unsent``, media lists (``photos``, ``videos``, ``audio_files``, ``gifs``,
    ``files``), ``sticker``, ``share``, ``reactions``; newest message first. Every string is
    UTF-8 whose bytes were written as Latin-1 code points ("cafÃ©" for "café").
``meta_e2ee``
    Messenger's end-to-end-encrypted download (one JSON per thread): ``participants`` as plain
    names, ``threadName`` and ``messages[]`` of ``senderName``, ``timestamp`` (ms), ``text``,
    ``media: [{uri}]``, ``reactions``, ``isUnsent``, ``type`` (as two public parsers of it
    declare; no reply link and no edit flag there). Whether its text is escaped like the legacy
    form is not settled in public sources, so the same self-checking repair runs on it.

Neither format carries message or user ids: authors are ``meta:<display name>``, message ids
are synthesised, and the channel id hashes the thread (``thread_path``, else the folder name;
the file stem for e2ee), so the ``message_N.json`` parts of one thread share a channel.
Rows come out oldest first. Unsent messages are kind ``other``; Call/Subscribe/Unsubscribe
messages and Meta's own event sentences (``SYSTEM_TEXTS``) are ``system``; reactions are not
messages. Attachments follow the Discord policy: content keeps only the person's words, and
``has_attachments``/``attachment_kind`` say what came with them. Meta's "X sent an
attachment." placeholder is not anyone's words: it becomes an attachment-only message. A
shared link keeps its text as content (like a Discord link with an embed); a share with no
text of its own is an attachment-only message of kind ``attachment_kind(link)``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from itertools import compress
from operator import attrgetter
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from echo_pipeline.exports._common import (
    attachment_kind,
    build_table,
    clip_to_date_range,
    decode_json,
    stable_channel_id,
    synthetic_message_ids,
)
from echo_pipeline.exports.errors import ExportError

# --- the formats' shapes (only the keys we use) ------------------------------------------------


class _Named(msgspec.Struct, gc=False):
    name: str | None = None


class _Media(msgspec.Struct, gc=False):
    uri: str | None = None


class _Share(msgspec.Struct, gc=False):
    link: str | None = None


class _LegacyMessage(msgspec.Struct, gc=False):
    sender_name: str | None = None
    timestamp_ms: int | float | None = None
    content: str | None = None
    type: str | None = None
    is_unsent: bool | None = None
    photos: list[_Media] | None = None
    videos: list[_Media] | None = None
    audio_files: list[_Media] | None = None
    gifs: list[_Media] | None = None
    files: list[_Media] | None = None
    sticker: _Media | None = None
    share: _Share | None = None


class _LegacyThread(msgspec.Struct, gc=False):
    participants: list[_Named | str] | None = None
    messages: list[_LegacyMessage] | None = None
    title: str | None = None
    thread_path: str | None = None


class _E2eeMessage(msgspec.Struct, gc=False):
    senderName: str | None = None
    timestamp: int | float | None = None
    text: str | None = None
    type: str | None = None
    isUnsent: bool | None = None
    media: list[_Media] | None = None


class _E2eeThread(msgspec.Struct, gc=False):
    participants: list[str | _Named] | None = None
    threadName: str | None = None
    messages: list[_E2eeMessage] | None = None


_LEGACY_DECODER = msgspec.json.Decoder(_LegacyThread)
_E2EE_DECODER = msgspec.json.Decoder(_E2eeThread)

# --- detection ---------------------------------------------------------------------------------

_KEY = r'(?<!\\)"{}"\s*:'
_PARTICIPANTS = re.compile(_KEY.format("participants") + r"\s*\[")
_LEGACY_THREAD_KEY = re.compile(_KEY.format("(?:sender_name|thread_path|is_still_participant)"))
_LEGACY_MESSAGE_KEYS = (
    re.compile(_KEY.format("sender_name")),
    re.compile(_KEY.format("timestamp_ms")),
)
_E2EE_THREAD_KEY = re.compile(_KEY.format("(?:threadName|senderName)"))
_E2EE_MESSAGE_KEYS = (re.compile(_KEY.format("senderName")), re.compile(_KEY.format("isUnsent")))


#: Files of Meta's download that sit beside the threads and are not chats.
COMPANION_FILES = frozenset(
    {"autofill_information.json", "secret_conversations.json", "support_messages.json"}
)
#: A thread's own folders of shared files (``<thread>/files/notes.txt``): attachments, not chats.
_MEDIA_FOLDERS = frozenset({"files", "photos", "videos", "audio", "gifs", "stickers_used"})


def is_meta_companion(path: Any) -> bool:
    """True for a file of a Meta download that is not a thread: the account files beside the
    inbox, and anything inside a thread's media folders (shared ``.txt`` files included)."""
    if path.name.lower() in COMPANION_FILES:
        return True
    parent = path.parent
    if parent.name.lower() not in _MEDIA_FOLDERS:
        return False
    thread = parent.parent
    try:
        return (thread / "message_1.json").exists()
    except (OSError, ValueError):
        return False


def sniff_meta_legacy(text: str) -> bool:
    """A Messenger/Instagram ``message_N.json`` (or a list of its messages), by its own keys."""
    if not text.startswith(("{", "[")):
        return False
    if _PARTICIPANTS.search(text) and _LEGACY_THREAD_KEY.search(text):
        return True
    return all(key.search(text) for key in _LEGACY_MESSAGE_KEYS)


def sniff_meta_e2ee(text: str) -> bool:
    """A Messenger end-to-end-encrypted thread JSON, by its own (camelCase) keys."""
    if not text.startswith(("{", "[")):
        return False
    if _PARTICIPANTS.search(text) and _E2EE_THREAD_KEY.search(text):
        return True
    return all(key.search(text) for key in _E2EE_MESSAGE_KEYS)


# --- Meta's own sentences ------------------------------------------------------------------------

#: Event sentences Meta writes as message text, by language; each pattern matches a whole
#: message. "You" (``Vous``) is the export's owner. English is from Meta exports and public
#: parsers of them; French is corroborated only by public parsers' filter lists. Add a language by
#: adding a key here (and to ATTACHMENT_TEXTS / OWNER_WORDS).
SYSTEM_TEXTS: dict[str, tuple[str, ...]] = {
    "en": (
        r".+ reacted .+ to your message ?",
        r"Reacted .+ to your message ?",  # Instagram
        r"(?:.+ )?[Ll]iked a message",  # Instagram
        r".+ named the group.*",
        r".+ changed the group name.*",
        r".+ added .+ to the group\.?",
        r".+ removed .+ from the group\.?",
        r".+ left the group\.?",
        r".+ created the group\.?",
        r".+ changed the group photo\.?",
        r".+ (?:made|added) .+ (?:an admin|as a group admin)\.?",
        r"The (?:video chat|call|video call|audio call) ended\.?",
        r".+ missed your (?:video |audio )?call\.?",
        r"You missed a (?:video |audio )?call from .+",
        r"You missed a video chat with .+",
        r"You called .+\.",
        r".+ called you\.",
        r".+ started (?:a|the) (?:video chat|call|video call)\.?",
        r".+ joined the (?:video chat|call|video call)\.?",
        r".+ set (?:the|your|his|her|their) (?:own )?nickname.*",
        r".+ cleared (?:the|your|his|her|their) (?:own )?nickname.*",
        r".+ changed the (?:chat )?theme.*",
        r".+ (?:changed|set) the (?:quick reaction|emoji) to .+",
        r".+ (?:pinned|unpinned) a message\.?",
        r"You are now connected on Messenger\.?",
        r"Say hi to your new Facebook friend.*",
        r"You can now message and call each other.*",
    ),
    "fr": (
        r".+ a réagi .+ à votre message ?",
        r".+ a ajouté .+ au groupe\.?",
        r".+ a retiré .+ du groupe\.?",
        r".+ a quitté le groupe\.?",
        r".+ a changé le nom du groupe.*",
        r".+ a défini la photo du groupe\.?",
        r"Vous avez créé le groupe\.?",
        r".+ a créé le groupe\.?",
    ),
}

#: Meta's stand-in text for a message that is only an attachment (a shared post, a reel…).
ATTACHMENT_TEXTS: dict[str, tuple[str, ...]] = {
    "en": (r".+ sent an attachment\.",),
    "fr": (r".+ a envoyé une pièce jointe\.", r"Vous avez envoyé une pièce jointe\."),
}

#: How the owner is named in those sentences: a sentence starting so was sent by the owner.
OWNER_WORDS: dict[str, str] = {"en": "You ", "fr": "Vous "}

_SYSTEM_TYPES = ("Call", "Subscribe", "Unsubscribe")  # a tuple: see telegram._MESSAGE
_UNKNOWN_SENDER = "(unknown)"


def _anchored(table: dict[str, tuple[str, ...]]) -> str:
    """One RE2 pattern matching a whole text against every language's sentences."""
    return "^(?:" + "|".join(p for patterns in table.values() for p in patterns) + ")$"


_SYSTEM_PATTERN = _anchored(SYSTEM_TEXTS)
_ATTACHMENT_PATTERN = _anchored(ATTACHMENT_TEXTS)


# --- mojibake ----------------------------------------------------------------------------------


def repair_mojibake(values: list[str]) -> list[str]:
    """Undo Meta's Latin-1 escaping of UTF-8 ("cafÃ©" -> "café"), only where that is what it is.

    The escaping is a property of the whole file, so the decision is too: one character above
    U+00FF anywhere proves the text is already decoded (mojibake is bytes, never above 0xFF), and
    so does a file whose non-ASCII strings mostly fail to decode as UTF-8 (real Latin-1 text:
    a lone "é" is not valid UTF-8). Otherwise each string is repaired if its bytes are valid
    UTF-8 and left as it is if not. In an escaped file, a person's own "Ã©" was escaped too, so
    it comes back as "Ã©"; in an already-decoded file nothing is touched.
    """
    suspects = [i for i, value in enumerate(values) if not value.isascii()]
    if not suspects:
        return values
    texts = [values[i] for i in suspects]
    try:
        joined = "\x00".join(texts).encode("latin-1")
    except UnicodeEncodeError:
        return values
    try:
        repaired = joined.decode("utf-8").split("\x00")  # NUL never sits inside a UTF-8 sequence
    except UnicodeDecodeError:
        repaired = []
    if len(repaired) != len(texts):  # a bad sequence, or a NUL inside a string: one by one
        repaired, failures = [], 0
        for text in texts:
            try:
                repaired.append(text.encode("latin-1").decode("utf-8"))
            except UnicodeDecodeError:
                repaired.append(text)
                failures += 1
        if failures * 2 > len(texts):
            return values
    out = list(values)
    for i, text in zip(suspects, repaired, strict=True):
        out[i] = text
    return out


# --- reading -----------------------------------------------------------------------------------


def read_meta_legacy(path: Path) -> pa.Table:
    """A Messenger/Instagram ``message_N.json`` as CHAT_MESSAGES, oldest first."""
    return _read_legacy(path).table


def read_meta_e2ee(path: Path) -> pa.Table:
    """A Messenger end-to-end-encrypted thread JSON as CHAT_MESSAGES, oldest first."""
    return _read_e2ee(path).table


@dataclass
class _Read:
    """A thread as read: the table, and what ``describe_meta`` needs beside it."""

    table: pa.Table
    names: list[str]
    title: str
    owners: set[str]
    app: str | None = None


def _read_legacy(path: Path) -> _Read:
    thread = _decode(path, _LEGACY_DECODER)
    msgs = _messages(path, thread.messages)
    rows = range(len(msgs))
    contents = [c or "" for c in map(attrgetter("content"), msgs)]
    senders = [s or _UNKNOWN_SENDER for s in map(attrgetter("sender_name"), msgs)]
    names = _participant_names(thread.participants)
    unique_senders = sorted(set(senders))
    title = thread.title or ""
    fixed = repair_mojibake(contents + unique_senders + names + [title])
    n = len(msgs)
    contents, fixed_senders = fixed[:n], fixed[n : n + len(unique_senders)]
    names, title = fixed[n + len(unique_senders) : -1], fixed[-1]
    rename = dict(zip(unique_senders, fixed_senders, strict=True))
    senders = [rename[s] for s in senders]

    media: list[str | None] = [None] * n
    # Lowest priority first, so the first attachment of the highest-priority list wins.
    for field, kind in (
        ("sticker", "image"),
        ("files", None),
        ("audio_files", "audio"),
        ("gifs", "image"),
        ("videos", "video"),
        ("photos", "image"),
    ):
        values = list(map(attrgetter(field), msgs))
        for i in compress(rows, values):
            first = values[i] if field == "sticker" else values[i][0]
            media[i] = kind or attachment_kind(first.uri or "") or "file"
    shares = list(map(attrgetter("share"), msgs))
    share_kind: list[str | None] = [None] * n
    for i in compress(rows, shares):
        share_kind[i] = attachment_kind(shares[i].link) if shares[i].link else "file"

    channel_key = thread.thread_path or _folder_name(path)
    channel_name = title or ", ".join(names) or channel_key
    table, owners = _table(
        path,
        "meta_legacy",
        "meta:" + stable_channel_id("meta", channel_key).removeprefix("c-"),
        channel_name,
        timestamps=list(map(attrgetter("timestamp_ms"), msgs)),
        senders=senders,
        contents=contents,
        types=list(map(attrgetter("type"), msgs)),
        unsent=list(map(attrgetter("is_unsent"), msgs)),
        media=media,
        share_kind=share_kind,
    )
    return _Read(table, names, title, owners, _legacy_app(path, msgs))


def _read_e2ee(path: Path) -> _Read:
    thread = _decode(path, _E2EE_DECODER)
    msgs = _messages(path, thread.messages)
    rows = range(len(msgs))
    n = len(msgs)
    contents = [c or "" for c in map(attrgetter("text"), msgs)]
    senders = [s or _UNKNOWN_SENDER for s in map(attrgetter("senderName"), msgs)]
    names = _participant_names(thread.participants)
    unique_senders = sorted(set(senders))
    title = thread.threadName or ""
    # Escaped or not is unsettled for this format; the repair checks the file before acting.
    fixed = repair_mojibake(contents + unique_senders + names + [title])
    contents, fixed_senders = fixed[:n], fixed[n : n + len(unique_senders)]
    names, title = fixed[n + len(unique_senders) : -1], fixed[-1]
    rename = dict(zip(unique_senders, fixed_senders, strict=True))
    senders = [rename[s] for s in senders]

    media_lists = list(map(attrgetter("media"), msgs))
    media: list[str | None] = [None] * n
    for i in compress(rows, media_lists):
        media[i] = attachment_kind(media_lists[i][0].uri or "") or "file"

    # One file per thread, all in one folder: the file's own name is the thread.
    channel_key = path.stem
    table, owners = _table(
        path,
        "meta_e2ee",
        "meta:" + stable_channel_id("meta_e2ee", channel_key).removeprefix("c-"),
        title or ", ".join(names) or channel_key,
        timestamps=list(map(attrgetter("timestamp"), msgs)),
        senders=senders,
        contents=contents,
        types=list(map(attrgetter("type"), msgs)),
        unsent=list(map(attrgetter("isUnsent"), msgs)),
        media=media,
        share_kind=[None] * n,
    )
    return _Read(table, names, title, owners)


_REDOWNLOAD = 're-download it from Meta\'s "Download your information" in JSON format'


def _decode(path: Path, decoder: msgspec.json.Decoder) -> Any:
    try:
        data = path.read_bytes()
    except OSError as error:
        raise ExportError(path, f"cannot read file ({error.strerror or error})") from None
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    try:
        return decode_json(path, decoder, data, _REDOWNLOAD)
    except msgspec.ValidationError as error:
        problem = str(error)
        if problem.startswith("Expected `object`, got `array`") and "`$." not in problem:
            problem = "the file is a JSON list; expected an object with participants and messages"
        raise ExportError(
            path,
            f"not a Meta thread JSON as downloaded: {problem}; re-download it from Meta's "
            '"Download your information" in JSON format',
        ) from None
    except msgspec.DecodeError as error:
        raise ExportError(
            path,
            f"truncated or invalid JSON ({error}); re-download the export or unzip it again",
        ) from None


def _messages(path: Path, messages: list | None) -> list:
    if messages is None:
        raise ExportError(
            path, 'not a Meta thread JSON: it has no "messages" list; re-download the export'
        )
    return messages


def _participant_names(participants: list | None) -> list[str]:
    names = []
    for participant in participants or []:
        name = participant if isinstance(participant, str) else participant.name
        if name:
            names.append(name)
    return names


def _mask(values: pa.Array) -> np.ndarray:
    """A boolean Arrow array as a NumPy mask, nulls as False."""
    return pc.fill_null(values, False).to_numpy(zero_copy_only=False)


def _folder_name(path: Path) -> str:
    return path.parent.name or path.stem


def _table(
    path: Path,
    source_format: str,
    channel_id: str,
    channel_name: str,
    *,
    timestamps: list,
    senders: list[str],
    contents: list[str],
    types: list[str | None],
    unsent: list[bool | None],
    media: list[str | None],
    share_kind: list[str | None],
) -> tuple[pa.Table, set[str]]:
    """Classify, order oldest first and build the table (shared by both formats).

    Also returns the senders of Meta's sentences in the owner's voice ("You named the
    group…"): whoever sent those is the export's owner.
    """
    n = len(timestamps)
    if None in timestamps:
        raise ExportError(
            path,
            f"message {timestamps.index(None) + 1} (counted from the top of the file) has no "
            "timestamp; re-download the export",
        )
    try:
        ms = np.array(
            timestamps,
            dtype=np.float64 if any(isinstance(t, float) for t in timestamps) else np.int64,
        )
    except OverflowError:  # an integer past int64: out of range, reported by build_table
        ms = np.array(timestamps, dtype=np.float64)
    order = np.arange(n)
    if n > 1 and ms[0] > ms[-1]:  # Meta writes newest first
        order = order[::-1]
    order = order[np.argsort(ms[order], kind="stable")]

    content_array = pa.array(contents, pa.string())
    placeholder_np = _mask(pc.match_substring_regex(content_array, _ATTACHMENT_PATTERN))
    system_np = _mask(pc.match_substring_regex(content_array, _SYSTEM_PATTERN))
    system_type = _mask(pc.is_in(pa.array(types, pa.string()), value_set=pa.array(_SYSTEM_TYPES)))
    unsent_np = _mask(pa.array(unsent, pa.bool_()))

    kinds = np.full(n, "message", dtype=object)
    kinds[system_np | system_type] = "system"
    kinds[unsent_np] = "other"
    attachment = np.array(media, dtype=object)
    blank_text = _mask(pc.equal(pc.utf8_trim_whitespace(content_array), "")) | placeholder_np
    shared = np.array([k is not None for k in share_kind], dtype=bool)
    share_only = shared & blank_text & np.equal(attachment, None)
    attachment[share_only] = np.array(share_kind, dtype=object)[share_only]
    attachment[placeholder_np & np.equal(attachment, None)] = "file"
    attachment[unsent_np | (kinds == "system")] = None
    content = np.array(contents, dtype=object)
    content[placeholder_np | unsent_np] = ""

    owner_voice = np.zeros(n, dtype=bool)
    for word in OWNER_WORDS.values():
        owner_voice |= _mask(pc.starts_with(content_array, word))
    owners = {senders[i] for i in np.flatnonzero(owner_voice & (system_np | placeholder_np))}

    take = order.tolist()
    authors = [senders[i] for i in take]
    author_ids = ["meta:" + name for name in authors]
    content_sorted = content[order].tolist()
    ts_us = (clip_to_date_range(ms[order], 1000) * 1000).astype(np.int64)
    attachment_sorted = attachment[order].tolist()
    table = build_table(
        path,
        source_format,
        channel_id,
        channel_name,
        message_id=synthetic_message_ids(channel_id, author_ids, ts_us.tolist(), content_sorted),
        timestamp=pa.array(ts_us, pa.timestamp("us", tz="UTC")),
        author_id=author_ids,
        author_name=authors,
        is_bot=pa.repeat(pa.scalar(False), n),
        kind=kinds[order].tolist(),
        content=content_sorted,
        reply_to_id=pa.nulls(n, pa.string()),
        has_attachments=[k is not None for k in attachment_sorted],
        attachment_kind=attachment_sorted,
        edited=pa.repeat(pa.scalar(False), n),
    )
    return table, owners


# --- describe ----------------------------------------------------------------------------------

_INSTAGRAM_ROOT = "your_instagram_activity"
_FACEBOOK_ROOTS = ("your_facebook_activity", "your_activity_across_facebook")


def describe_meta(path: Path) -> dict[str, Any]:
    """The export's shape in words and its owner as ``--me`` candidates (author ids).

    In a 1:1 thread the title is the other person, so the owner is the participant who is not
    the title; otherwise the sender of Meta's sentences in the owner's voice ("You named the
    group…"), when exactly one person sent them; else nobody.
    """
    head = _head_text(path)
    if sniff_meta_e2ee(head) and not sniff_meta_legacy(head):
        read, shape = _read_e2ee(path), "Messenger end-to-end encrypted JSON"
    else:
        read = _read_legacy(path)
        shape = (
            f"{read.app} legacy JSON" if read.app else "Meta legacy JSON (Messenger or Instagram)"
        )
    others = [name for name in dict.fromkeys(read.names) if name != read.title]
    if len(set(read.names)) == 2 and len(others) == 1:
        me = others
    elif len(read.owners) == 1:
        me = sorted(read.owners)
    else:
        me = []
    return {"shape": shape, "suggested_me": ["meta:" + name for name in me]}


def _head_text(path: Path) -> str:
    try:
        with path.open("rb") as handle:
            head = handle.read(64 * 1024)
    except OSError as error:
        raise ExportError(path, f"cannot read file ({error.strerror or error})") from None
    return head.decode("utf-8", errors="ignore").lstrip("\ufeff \t\r\n")


def _legacy_app(path: Path, msgs: list[_LegacyMessage]) -> str | None:
    """ "Instagram" or "Messenger" from the download's folder names or the media paths inside."""
    folder, seen = path.parent, 0
    while folder.name and seen < 12:
        if folder.name == _INSTAGRAM_ROOT:
            return "Instagram"
        if folder.name in _FACEBOOK_ROOTS:
            return "Messenger"
        folder, seen = folder.parent, seen + 1
    for field in ("photos", "videos", "audio_files", "gifs", "files"):
        for media in filter(None, map(attrgetter(field), msgs)):
            uri = media[0].uri or ""
            if uri.startswith(_INSTAGRAM_ROOT + "/"):
                return "Instagram"
            if uri.startswith(_FACEBOOK_ROOTS):
                return "Messenger"
            break  # the first media path of each kind says as much as any other
    return None
