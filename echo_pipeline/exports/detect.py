"""Which reader a file needs, decided from its first bytes (never from its extension)."""

from __future__ import annotations

import codecs
import re
from collections.abc import Callable
from pathlib import Path

from echo_pipeline.exports.archive import ExportPath, as_export_path
from echo_pipeline.exports.discord_csv import HEADER, LEGACY_HEADERS, normalise_header
from echo_pipeline.exports.discord_txt import RULE
from echo_pipeline.exports.errors import ExportError
from echo_pipeline.exports.meta import sniff_meta_e2ee, sniff_meta_legacy
from echo_pipeline.exports.slack import sniff_slack
from echo_pipeline.exports.telegram import sniff_telegram
from echo_pipeline.exports.whatsapp import MARKS, parse_line

FORMATS = (
    "discord_json",
    "discord_csv",
    "discord_csv_legacy",
    "discord_txt",
    "whatsapp",
    "telegram",
    "meta_legacy",
    "meta_e2ee",
    "slack",
)

_HEAD_BYTES = 64 * 1024
# Top-level keys of a DCE export; the lookbehind skips quotes escaped inside message text.
_CHANNEL_KEY = re.compile(r'(?<!\\)"channel"\s*:\s*\{')
_MESSAGES_KEY = re.compile(r'(?<!\\)"messages"\s*:\s*\[')
_HTML_START = re.compile(r"<(?:!doctype\s+html|html|head|body)\b", re.IGNORECASE)
_REEXPORT_JSON = "re-export with DiscordChatExporter `-f Json`"

#: JSON exports of other apps: (format, opening, test on the file's first 64 KiB of text, which
#: may end mid-document), tried in order before DiscordChatExporter's. Each test must look at the
#: content's own keys, never at the file name.
#: The middle field is how the format's documents open: the tests for that opening run first
#: (each is a few regex searches over 64 KiB, ~1 ms, and a Slack export has a file a day); the
#: others still run after them, so a reader can name its own format's misshapen files.
JSON_SNIFFERS: tuple[tuple[str, str, Callable[[str], bool]], ...] = (
    ("telegram", "{", sniff_telegram),
    ("meta_legacy", "{", sniff_meta_legacy),
    ("meta_e2ee", "{", sniff_meta_e2ee),
    ("slack", "[", sniff_slack),
)


def detect_format(path: str | ExportPath) -> str:
    """One of FORMATS for a readable chat export; ExportError saying why for anything else."""
    path = as_export_path(path)
    head, complete = _read_head(path)
    if not head:
        raise ExportError(path, "empty file (0 bytes); re-export the chat")
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise ExportError(path, "UTF-16 text (saved as 'Unicode'); re-save the file as UTF-8")
    if b"\x00" in head:
        raise ExportError(path, "binary file (contains NUL bytes), not a chat export")
    text = _decode_head(path, head, complete).lstrip("\ufeff")
    start = text.lstrip(" \t\r\n" + MARKS)
    if not start:
        raise ExportError(path, "blank file (only whitespace); re-export the chat")

    lines = start.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    if start.startswith("{") or (start.startswith("[") and not parse_line(lines[0])):
        return _detect_json(path, start, complete)
    if _HTML_START.match(start):
        if "chatlog" in text or "DiscordChatExporter" in text:
            raise ExportError(path, f"this is a DiscordChatExporter HTML export; {_REEXPORT_JSON}")
        raise ExportError(path, f"HTML file, not a supported chat export; {_REEXPORT_JSON}")

    header = normalise_header(lines[0])
    if header == HEADER:
        return "discord_csv"
    if header in LEGACY_HEADERS:
        return "discord_csv_legacy"
    if RULE.match(lines[0]) and any(line.startswith("Guild:") for line in lines[1:4]):
        return "discord_txt"
    if any(parse_line(line) for line in [line for line in lines if line.strip()][:5]):
        return "whatsapp"
    if path.suffix.lower() == ".csv" or ("Author" in header and ("," in header or ";" in header)):
        raise ExportError(
            path,
            f"unexpected CSV header {lines[0][:120]!r}; expected `{HEADER}` "
            "(DiscordChatExporter `-f Csv`)",
        )
    raise ExportError(
        path,
        f"unrecognised file (starts with {lines[0][:60]!r}); expected a DiscordChatExporter "
        "JSON, CSV or PlainText export, a WhatsApp chat export, or the JSON of Telegram "
        "Desktop, Messenger/Instagram or a Slack export",
    )


def _read_head(path: ExportPath) -> tuple[bytes, bool]:
    """The first bytes, and whether they are the whole file."""
    try:
        with path.open("rb") as handle:
            head = handle.read(_HEAD_BYTES + 1)
    except IsADirectoryError:
        raise ExportError(path, "is a directory, not an export file") from None
    except OSError as error:
        raise ExportError(path, f"cannot read file ({error.strerror or error})") from None
    return head[:_HEAD_BYTES], len(head) <= _HEAD_BYTES


def _decode_head(path: Path, head: bytes, complete: bool) -> str:
    decoder = codecs.getincrementaldecoder("utf-8")()
    try:
        # final=False: the head may end inside a multi-byte character.
        return decoder.decode(head, final=complete)
    except UnicodeDecodeError as error:
        raise ExportError(
            path,
            f"not UTF-8 text: byte 0x{head[error.start]:02X} at byte offset {error.start} is "
            "invalid (a binary file, or text saved in another encoding; re-save it as UTF-8)",
        ) from None


def _detect_json(path: Path, start: str, complete: bool) -> str:
    likely_first = sorted(JSON_SNIFFERS, key=lambda entry: not start.startswith(entry[1]))
    for fmt, _, sniff in likely_first:
        if sniff(start):
            return fmt
    if start.startswith("["):
        raise ExportError(
            path,
            "JSON array, not a DiscordChatExporter export (expected an object with "
            f'"channel" and "messages") nor a Slack daily file; {_REEXPORT_JSON}',
        )
    has_channel = _CHANNEL_KEY.search(start) is not None
    has_messages = _MESSAGES_KEY.search(start) is not None
    if has_channel and has_messages:
        return "discord_json"
    missing = " and ".join(
        f'"{key}"' for key, ok in (("channel", has_channel), ("messages", has_messages)) if not ok
    )
    where = "" if complete else f" in its first {_HEAD_BYTES // 1024} KiB"
    raise ExportError(
        path,
        f"JSON is not a DiscordChatExporter export (no {missing}{where}); {_REEXPORT_JSON}",
    )
