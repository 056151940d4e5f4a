"""Pieces shared by the format readers: file naming, synthetic ids, dates, system text, the table."""

from __future__ import annotations

import gc
import hashlib
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from echo_pipeline.exports.errors import ExportError
from echo_pipeline.infra.schemas import CHAT_MESSAGES

# --- file names -------------------------------------------------------------------------------

_SNOWFLAKE_IN_NAME = re.compile(r"\[(\d{1,20})\]")
_PART_SUFFIX = re.compile(r"\s*\[(?:part (?P<n>\d+)|(?P<k>\d+) of \d+)\]\s*$")
_RANGE_SUFFIX = re.compile(
    r"\s*\((?:\d{4}-\d{2}-\d{2} to \d{4}-\d{2}-\d{2}|after [^()]*|before [^()]*)\)\s*$"
)
_COPY_SUFFIX = re.compile(r"\s*\(\d{1,3}\)\s*$")  # "chat (1).txt": a second download of one export
_WHATSAPP_PREFIX = re.compile(r"^WhatsApp Chat(?: with | - )", re.IGNORECASE)


#: A file named by its number alone (``17.csv``, ``part 17.csv``, ``part_017.csv``): a part of
#: a longer log, split for publishing, whose channel is the folder it sits in.
_BARE_PART = re.compile(r"^(?:part[\s_-]*)?0*(?P<n>\d{1,9})$", re.IGNORECASE)
_DIGITS = re.compile(r"(\d+)")


def part_number(path: Path) -> int:
    """1 for a whole export or the first part; N for ``name [part N].json`` / ``name [N of M].csv``
    and for a bare numbered part (``N.csv``)."""
    bare = _BARE_PART.match(path.stem.strip())
    if bare is not None:
        return int(bare.group("n"))
    match = _PART_SUFFIX.search(path.stem)
    if match is None:
        return 1
    return int(match.group("n") or match.group("k"))


def is_bare_part(path: Path) -> bool:
    """True for a file named by its number alone (``17.csv``): see :func:`folder_channel_name`."""
    return _BARE_PART.match(path.stem.strip()) is not None


def folder_channel_name(path: Path) -> str:
    """The channel of a bare numbered part: its folder's name (or its archive's, less ``.zip``).

    Such parts carry no channel of their own (CSV has no channel column), so the parts of one
    folder are one channel, ordered by time with their numbers breaking ties.
    """
    folder = path.parent.name or "export"
    return folder[:-4] if folder.lower().endswith(".zip") else folder


def natural_key(text: str) -> tuple:
    """Sorts ``2.csv`` before ``10.csv``: digit runs compare as numbers."""
    return tuple(int(p) if i % 2 else p for i, p in enumerate(_DIGITS.split(text)))


def export_stem(path: Path) -> str:
    """The file stem without the partition, date-range and copy suffixes: one per channel."""
    stem = path.stem
    while True:
        shorter = _COPY_SUFFIX.sub("", _RANGE_SUFFIX.sub("", _PART_SUFFIX.sub("", stem)))
        if shorter == stem:
            return stem.strip()
        stem = shorter


def export_sort_key(path: Path) -> tuple:
    """Sort key that keeps the partitions of one export together and in part order (names in
    natural order: ``2.csv`` before ``10.csv``)."""
    stem = "" if is_bare_part(path) else export_stem(path)
    return (str(path.parent), natural_key(stem), part_number(path), natural_key(path.name))


def channel_id_from_name(path: Path) -> str | None:
    """The ``[channelId]`` DiscordChatExporter puts in its default file names, if present."""
    ids = _SNOWFLAKE_IN_NAME.findall(export_stem(path))
    return ids[-1] if ids else None


def channel_name_from_name(path: Path) -> str:
    """A channel name from ``Guild - Category - channel [id].csv`` or a WhatsApp file name."""
    stem = export_stem(path)
    if stem.lower() == "_chat" and path.parent.name:  # iOS: "WhatsApp Chat - Bob/_chat.txt"
        folder = path.parent.name  # or the archive itself: "WhatsApp Chat - Bob.zip/_chat.txt"
        folder = folder[:-4] if folder.lower().endswith(".zip") else folder
        stem = export_stem(Path(folder + ".txt"))
    whatsapp = _WHATSAPP_PREFIX.match(stem)
    if whatsapp:
        return stem[whatsapp.end() :].strip() or stem
    stem = _SNOWFLAKE_IN_NAME.sub("", stem).strip()
    return stem.rsplit(" - ", 1)[-1].strip() or stem


def stable_channel_id(*parts: str) -> str:
    """A deterministic channel id for formats that carry none (``c-`` + 16 hex digits)."""
    return "c-" + _digest("\x1f".join(parts), 8)


def _digest(text: str, size: int) -> str:
    data = text.encode("utf-8", "surrogatepass")
    return hashlib.blake2b(data, digest_size=size).hexdigest()


# --- synthetic message ids --------------------------------------------------------------------


def synthetic_message_ids(
    channel_id: str,
    author_ids: Sequence[str],
    timestamps_us: Sequence[int],
    contents: Sequence[str],
) -> list[str]:
    """Ids for messages that have none, equal for the same message in two overlapping exports.

    The id hashes (channel, author, timestamp, content, n) where n counts earlier identical
    messages in the same file, so "lol" sent twice in one minute stays two messages.
    """
    seen: dict[tuple[str, int, str], int] = {}
    ids = []
    blake2b = hashlib.blake2b  # the loop runs once per message: 1M on a big export
    for author, ts, content in zip(author_ids, timestamps_us, contents, strict=True):
        key = (author, ts, content)
        n = seen.get(key, 0)
        seen[key] = n + 1
        text = f"{channel_id}\x1f{author}\x1f{ts}\x1f{content}\x1f{n}"
        digest = blake2b(text.encode("utf-8", "surrogatepass"), digest_size=10).hexdigest()
        ids.append("m-" + digest)
    return ids


# --- attachments ------------------------------------------------------------------------------

_EXTENSION_KIND = {
    **dict.fromkeys(
        [
            "png",
            "jpg",
            "jpeg",
            "gif",
            "webp",
            "bmp",
            "tif",
            "tiff",
            "heic",
            "heif",
            "avif",
            "svg",
            "jfif",
            "ico",
        ],
        "image",
    ),
    **dict.fromkeys(
        ["mp4", "mov", "webm", "mkv", "avi", "m4v", "wmv", "flv", "3gp", "mpg", "mpeg"], "video"
    ),
    **dict.fromkeys(
        ["mp3", "wav", "ogg", "oga", "opus", "m4a", "flac", "aac", "wma", "amr"], "audio"
    ),
}


def attachment_kind(name_or_url: str | None) -> str | None:
    """``image | video | audio | file`` from an attachment's file name, URL or local path."""
    if name_or_url is None:
        return None
    name = name_or_url.split("?", 1)[0].split("#", 1)[0]
    name = name.replace("\\", "/").rstrip("/").rsplit("/", 1)[-1]
    ext = name.rsplit(".", 1)[-1].lower() if "." in name else ""
    return _EXTENSION_KIND.get(ext, "file")


# --- system messages in formats without a type column -----------------------------------------

_SYSTEM_TEXTS = frozenset(
    {
        "Added a recipient.",
        "Removed a recipient.",
        "Left the group.",
        "Started a call.",
        "Changed the channel name.",
        "Changed the channel icon.",
        "Pinned a message.",
        "Started a thread.",
        "Joined the server.",
    }
)
_SYSTEM_PATTERN = re.compile(
    r"Added .+ to the group\."
    r"|Removed .+ from the group\."
    r"|Started a call that lasted [\d,.\u00a0\u202f ]+ minutes?\."
    r"|Changed the channel name: .*"
)


def is_system_text(content: str) -> bool:
    """True for DiscordChatExporter's fallback text of a system message (CSV and PlainText).

    These formats have no type column; the exporter writes fixed English sentences instead.
    A human who types exactly "Pinned a message." is misread as a system message.
    """
    return content in _SYSTEM_TEXTS or _SYSTEM_PATTERN.fullmatch(content) is not None


# --- dates ------------------------------------------------------------------------------------

#: Locale date forms DiscordChatExporter wrote into CSV and PlainText, most likely first:
#: en-US "g" and the 2.38-2.40 default, de-DE/ru-RU "g", the <=2.37 default, then other "g"s.
LOCAL_DATE_FORMATS = (
    "%m/%d/%Y %I:%M %p",
    "%d.%m.%Y %H:%M",
    "%d-%b-%y %I:%M %p",
    "%d/%m/%Y %H:%M",
    "%Y-%m-%d %H:%M",
    "%Y/%m/%d %H:%M",
    "%d/%m/%Y %I:%M %p",
    "%m/%d/%Y %H:%M",
    "%d.%m.%y %H:%M",
    "%m/%d/%y %I:%M %p",
    "%d/%m/%y %H:%M",
    "%d-%m-%Y %H:%M",
    "%m/%d/%Y %I:%M:%S %p",
    "%d.%m.%Y %H:%M:%S",
    "%d/%m/%Y %H:%M:%S",
    "%Y-%m-%d %H:%M:%S",
)
_SAMPLE = 500


def iso_to_utc(values: Sequence[str | None]) -> pa.TimestampArray:
    """Vectorised ISO-8601 (0-9 fraction digits, any offset) to UTC microseconds; bad ones null."""
    import pandas as pd  # lazily: keeps `import echo_pipeline` light

    parsed = pd.to_datetime(
        pd.Series(values, dtype=object), utc=True, format="ISO8601", errors="coerce"
    )
    return _to_arrow(parsed)


def _to_arrow(parsed) -> pa.TimestampArray:
    return pa.Array.from_pandas(parsed.dt.as_unit("us")).cast(pa.timestamp("us", tz="UTC"))


def parse_export_dates(values: Sequence[str], path: Path, what: str) -> pa.TimestampArray:
    """Dates of a CSV or PlainText export (ISO ``o`` or a locale form) as UTC microseconds.

    One format serves a whole file, so it is chosen on a sample and then applied to all rows.
    Locale forms carry no zone: they are the exporting machine's local time, which is unknown
    here, so they are taken as UTC (times may be off by the exporter's UTC offset).
    Raises ExportError naming the first date no known form can read.
    """
    import pandas as pd

    cleaned = pd.Series(
        [" ".join(v.replace("\u202f", " ").replace("\u00a0", " ").split()) for v in values],
        dtype=object,
    )
    sample = pd.concat([cleaned.iloc[:_SAMPLE], cleaned.iloc[-_SAMPLE:]])
    best_format, best_ok = "ISO8601", -1
    for fmt in ("ISO8601", *LOCAL_DATE_FORMATS):
        ok = int(pd.to_datetime(sample, utc=True, format=fmt, errors="coerce").notna().sum())
        if ok == len(sample):
            parsed = pd.to_datetime(cleaned, utc=True, format=fmt, errors="coerce")
            if not parsed.isna().any():
                return _to_arrow(parsed)
        if ok > best_ok:
            best_format, best_ok = fmt, ok
    # Report the first date the most successful form cannot read.
    parsed = pd.to_datetime(cleaned, utc=True, format=best_format, errors="coerce")
    first = int(np.flatnonzero(parsed.isna().to_numpy())[0])
    raise ExportError(
        path,
        f"unrecognised date {values[first]!r} in {what} {first + 1}; expected ISO-8601 or a "
        "DiscordChatExporter locale date such as '9/7/2023 4:12 PM', '07.09.2023 16:12' "
        "or '05-Dec-19 12:31 AM'",
    )


#: The dates Python's ``datetime`` can hold, years 1 to 9999: ``inspect``, pandas users and
#: every Parquet reader downstream need them, and no real chat lies outside.
MIN_TIMESTAMP_US = -62_135_596_800_000_000
MAX_TIMESTAMP_US = 253_402_300_799_999_999


def raw_date_bounds(per_second: int) -> tuple[int, int]:
    """Raw times (``per_second`` units a second) just past the datetime range: a reader clips
    to them before scaling to microseconds, so a wild value cannot wrap around int64 and stays
    out of range for :func:`build_table` to report."""
    scale = 1_000_000 // per_second
    return MIN_TIMESTAMP_US // scale - 1, MAX_TIMESTAMP_US // scale + 1


def clip_to_date_range(values: np.ndarray, per_second: int) -> np.ndarray:
    """``values`` clipped to :func:`raw_date_bounds`."""
    return np.clip(values, *raw_date_bounds(per_second))


def _check_date_range(path: Path, timestamp: pa.Array, message_id) -> None:
    """ExportError naming the first message dated outside years 1-9999 (a damaged export)."""
    micros = timestamp.cast(pa.int64()).to_numpy(zero_copy_only=False)
    if not len(micros):
        return
    if micros.min() >= MIN_TIMESTAMP_US and micros.max() <= MAX_TIMESTAMP_US:
        return
    i = int(np.flatnonzero((micros < MIN_TIMESTAMP_US) | (micros > MAX_TIMESTAMP_US))[0])
    mid = message_id[i]
    mid = mid.as_py() if isinstance(mid, pa.Scalar) else mid
    label = f"message {i + 1}" + (f" (id {mid})" if mid and not str(mid).startswith("m-") else "")
    side = "after year 9999" if micros[i] > 0 else "before year 1"
    raise ExportError(
        path,
        f"{label} is dated {side} ({micros[i] // 1_000_000} seconds since 1970-01-01), which no "
        "chat app writes: the export is damaged or was edited; re-export the chat",
    )


def timestamps_to_int(ts: pa.TimestampArray) -> list[int]:
    """Microseconds since the epoch, for hashing."""
    return ts.cast(pa.int64()).to_pylist()


# --- text -------------------------------------------------------------------------------------


def decode_utf8(data: bytes, path: Path) -> str:
    """UTF-8 (BOM tolerated) to str; otherwise ExportError with the byte offset of the bad byte."""
    bom = 3 if data.startswith(b"\xef\xbb\xbf") else 0
    try:
        return data[bom:].decode("utf-8")
    except UnicodeDecodeError as error:
        offset = error.start + bom
        raise ExportError(
            path,
            f"not UTF-8 text: byte 0x{data[offset]:02X} at byte offset {offset} is invalid; "
            "re-export the chat, or re-save the file as UTF-8",
        ) from None


def read_text(path: Path) -> str:
    """The whole file as text with every line ending (CRLF, CR, LF) turned into ``\\n``."""
    try:
        data = path.read_bytes()
    except OSError as error:
        raise ExportError(path, f"cannot read file ({error.strerror or error})") from None
    return decode_utf8(data, path).replace("\r\n", "\n").replace("\r", "\n")


# --- decoding big files ---------------------------------------------------------------------


def decode_json(path: Path, decoder: Any, data: Any, advice: str) -> Any:
    """``decoder.decode(data)`` for every JSON reader, so none can forget hostile nesting.

    msgspec raises RecursionError on a document nested deeper than the interpreter's stack
    allows (100k nested lists in one unused key is enough); here that is an ExportError like any
    other bad file. Every other decoder error is left for the reader, which knows its format.
    """
    try:
        return decoder.decode(data)
    except RecursionError:
        raise ExportError(
            path,
            "JSON nested too deeply (thousands of levels, where an export has a few): a damaged "
            f"or hostile file, not an export; {advice}",
        ) from None


@contextmanager
def gc_paused() -> Iterator[None]:
    """The cyclic garbage collector off while a reader decodes: millions of new structs would
    trigger ever-longer full collections, and none of them are cycles."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


# --- the table --------------------------------------------------------------------------------


def build_table(
    path: Path,
    source_format: str,
    channel_id: str,
    channel_name: str | None,
    *,
    message_id: Sequence[str] | pa.Array,
    timestamp: pa.Array,
    author_id: Sequence[str] | pa.Array,
    author_name: Sequence[str] | pa.Array,
    is_bot: Sequence[bool] | pa.Array,
    kind: Sequence[str] | pa.Array,
    content: Sequence[str] | pa.Array,
    reply_to_id: Sequence[str | None] | pa.Array,
    has_attachments: Sequence[bool] | pa.Array,
    attachment_kind: Sequence[str | None] | pa.Array,
    edited: Sequence[bool] | pa.Array,
) -> pa.Table:
    """One file's messages as a CHAT_MESSAGES table; ``seq`` is the position in the file."""
    n = len(timestamp)
    _check_date_range(path, timestamp, message_id)
    columns = {
        "source_file": pa.repeat(pa.scalar(str(path), pa.string()), n),
        "source_format": pa.repeat(pa.scalar(source_format, pa.string()), n),
        "channel_id": pa.repeat(pa.scalar(channel_id, pa.string()), n),
        "channel_name": pa.repeat(pa.scalar(channel_name, pa.string()), n),
        "message_id": message_id,
        "seq": pa.array(np.arange(n, dtype=np.int64)),
        "timestamp": timestamp,
        "author_id": author_id,
        "author_name": author_name,
        "is_bot": is_bot,
        "kind": kind,
        "content": content,
        "reply_to_id": reply_to_id,
        "has_attachments": has_attachments,
        "attachment_kind": attachment_kind,
        "edited": edited,
    }
    arrays = [
        columns[field.name]
        if isinstance(columns[field.name], pa.Array)
        else pa.array(columns[field.name], type=field.type)
        for field in CHAT_MESSAGES
    ]
    return pa.Table.from_arrays(arrays, schema=CHAT_MESSAGES)
