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
    """One of ``reader.FORMATS`` for a readable chat export; ExportError saying why for anything else."""
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
        raise ExportError(
            path,
            "this is an HTML page, not an export (a failed download? an error or login page "
            "saved under the export's name); download the export again, as JSON where the app "
            "offers it (DiscordChatExporter: `-f Json`)",
        )

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


def read_head_text(path: ExportPath) -> str:
    """The file's first 64 KiB as text (undecodable bytes replaced), for error messages."""
    head, _ = _read_head(path)
    return head.decode("utf-8", "replace").lstrip("\ufeff \t\r\n")


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
    has_channel = _CHANNEL_KEY.search(start) is not None
    has_messages = _MESSAGES_KEY.search(start) is not None
    if start.startswith("{") and has_channel and has_messages:
        return "discord_json"
    looks, guess, advice = describe_json_head(start)
    if guess is not None:
        raise ExportError(path, f"{looks}: {guess} ({_TRIED}); {advice}")
    if start.startswith("["):
        raise ExportError(
            path,
            f"JSON array, not a DiscordChatExporter export (expected an object with "
            f'"channel" and "messages") nor a Slack daily file: {looks} ({_TRIED}); '
            f"{_REEXPORT_JSON}",
        )
    missing = " and ".join(
        f'"{key}"' for key, ok in (("channel", has_channel), ("messages", has_messages)) if not ok
    )
    where = "" if complete else f" in its first {_HEAD_BYTES // 1024} KiB"
    raise ExportError(
        path,
        f"JSON is not a DiscordChatExporter export (no {missing}{where}): {looks} ({_TRIED}); "
        f"{_REEXPORT_JSON}",
    )


#: The JSON formats, as people call them (the formats whose detection reads keys).
FORMAT_NAMES = {
    "discord_json": "DiscordChatExporter JSON",
    "telegram": "Telegram Desktop JSON",
    "meta_legacy": "Messenger/Instagram JSON",
    "meta_e2ee": "Messenger end-to-end encrypted JSON",
    "slack": "Slack daily file",
}
_TRIED = "formats tried: " + ", ".join(
    FORMAT_NAMES[fmt] for fmt in ("telegram", "meta_legacy", "meta_e2ee", "slack", "discord_json")
)

#: What a JSON document's keys say it is, when it is not quite an export: (keys that must all
#: be there, what it looks like, what to do). Tried in order on the document's top-level keys
#: (or those of its first array element), so the most specific shapes come first.
_SHAPES: tuple[tuple[str, frozenset[str], frozenset[str], str, str], ...] = (
    (
        "array",
        frozenset({"id", "from"}),
        frozenset(),
        "looks like a Telegram chat's messages wrapped in a list",
        'export the chat again from Telegram Desktop as "Machine-readable JSON" (an object '
        'with "name", "type" and "messages")',
    ),
    (
        "array",
        frozenset({"name", "type", "id", "messages"}),
        frozenset(),
        "looks like a Telegram chat export wrapped in a list",
        'give result.json as Telegram Desktop wrote it (one object with "name", "type" and '
        '"messages"), or export again as "Machine-readable JSON"',
    ),
    (
        "array",
        frozenset({"channel", "messages"}),
        frozenset(),
        "looks like several DiscordChatExporter exports joined into one list",
        "give each exported channel as its own file",
    ),
    (
        "array",
        frozenset({"timestamp", "author", "content"}),
        frozenset(),
        "looks like DiscordChatExporter messages without their channel around them",
        f"give the export file as DiscordChatExporter wrote it; {_REEXPORT_JSON}",
    ),
    (
        "array",
        frozenset({"sender_name", "timestamp_ms"}),
        frozenset(),
        "looks like Messenger/Instagram messages without their thread around them",
        'give the message_N.json file as downloaded from Meta\'s "Download your information"',
    ),
    (
        "object",
        frozenset({"ts"}),
        frozenset(),
        "looks like one Slack message, but a Slack daily file is a JSON array of messages",
        "re-download the Slack export and give its folder or zip",
    ),
    (
        "object",
        frozenset({"messages"}),
        frozenset({"ts"}),
        "looks like Slack messages wrapped in an object, but a Slack daily file is a JSON "
        "array of messages",
        "re-download the Slack export and give its folder or zip",
    ),
    (
        "object",
        frozenset({"id", "from"}),
        frozenset(),
        "looks like one Telegram message, not a chat export",
        'export the chat from Telegram Desktop as "Machine-readable JSON"',
    ),
)


def describe_json_head(text: str) -> tuple[str, str | None, str]:
    """(what a JSON document looks like, which format it resembles or None, what to do).

    Read from the keys in the first 64 KiB: the top-level keys of an object, or the keys of
    the objects in a top-level array (nested keys count too, so a Slack object's messages
    give their ``ts``).
    """
    top, keys, nested = _json_keys(text)
    if top == "array":
        looks = (
            f"a JSON array of objects with keys {_key_list(keys)}"
            if keys
            else "a JSON array without objects"
        )
    else:
        looks = f"a JSON object with keys {_key_list(keys)}" if keys else "an empty JSON object"
    for shape_top, needed, needed_inside, guess, advice in _SHAPES:
        if shape_top == top and needed <= keys and needed_inside <= nested:
            return looks, guess, advice
    return looks, None, _REEXPORT_JSON


def _key_list(keys: set[str], shown: int = 6) -> str:
    names = sorted(keys)
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return "/".join(f"`{name}`" for name in names[:shown]) + more


_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')


def _json_keys(text: str) -> tuple[str, set[str], set[str]]:
    """("object" | "array", keys one level in, keys one level deeper) of a JSON head.

    A tolerant scan (the head may end mid-document): strings are skipped whole, depth is
    counted on brackets, a string followed by ``:`` is a key.
    """
    top = "array" if text.startswith("[") else "object"
    key_depth = 2 if top == "array" else 1  # an array's element objects hold the keys
    keys: set[str] = set()
    nested: set[str] = set()
    depth = 0
    i = 0
    n = len(text)
    while i < n:
        char = text[i]
        if char == '"':
            match = _STRING.match(text, i)
            if match is None:
                break  # the head ends inside a string
            i = match.end()
            rest = text[i : i + 8].lstrip()
            if rest.startswith(":"):
                name = match.group(0)[1:-1]
                if depth == key_depth:
                    keys.add(name)
                elif depth > key_depth:
                    nested.add(name)
            continue
        if char in "[{":
            depth += 1
        elif char in "]}":
            depth -= 1
        i += 1
    return top, keys, nested
