"""Hostile exports of issue 23, written small: dates past year 9999, JSON nested 100k levels
deep in each JSON reader's files, and files detection used to misdiagnose. ``CASES`` maps a case
to (writer of the bad file under a folder, returning the path an error must name; the words the
error must hold). Used by the CLI tests (exports/) and the Dagster ones (defs/)."""

from __future__ import annotations

import json
import shutil
import zipfile
from collections.abc import Callable
from pathlib import Path

FAR = 253_402_300_800  # 10000-01-01T00:00:00Z, in seconds
DEEP = "[" * 100_000 + "]" * 100_000  # far past the decoder's recursion limit
T0 = 1_705_309_200  # 2024-01-15T09:00:00Z


def write_text(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def _json_with(document: dict | list, extra: str | None) -> str:
    """The document as JSON, with ``"extra": <extra>`` appended to its last object."""
    text = json.dumps(document)
    if extra is None:
        return text
    closing = text.rstrip("]}")
    return closing + f', "extra": {extra}' + text[len(closing) :]


def _meta(root: Path, when_ms: int = T0 * 1000, extra: str | None = None) -> Path:
    thread = {
        "participants": [{"name": "Bob"}, {"name": "Alice"}],
        "messages": [
            {"sender_name": "Alice", "timestamp_ms": when_ms, "content": "later"},
            {"sender_name": "Bob", "timestamp_ms": T0 * 1000, "content": "hi"},
        ],
        "title": "Bob",
        "thread_path": "inbox/bob_1",
    }
    return write_text(root / "inbox" / "bob_1" / "message_1.json", _json_with(thread, extra))


def _telegram(root: Path, when: int = T0, extra: str | None = None) -> Path:
    chat = {
        "name": "Bob",
        "type": "personal_chat",
        "id": 4242,
        "messages": [
            {"id": 1, "type": "message", "date_unixtime": str(T0), "from": "Bob", "text": "hi"},
            {"id": 2, "type": "message", "date_unixtime": str(when), "from": "A", "text": "yo"},
        ],
    }
    return write_text(root / "result.json", _json_with(chat, extra))


def _slack(root: Path, ts: str = f"{T0}.000200", extra: str | None = None) -> Path:
    write_text(root / "users.json", '[{"id": "U1", "name": "alice"}, {"id": "U2", "name": "bob"}]')
    write_text(root / "channels.json", '[{"id": "C1", "name": "general"}]')
    day = [
        {"type": "message", "user": "U2", "text": "hi", "ts": f"{T0}.000100"},
        {"type": "message", "user": "U1", "text": "yo", "ts": ts},
    ]
    return write_text(root / "general" / "2024-01-15.json", _json_with(day, extra))


def _discord(root: Path, extra: str | None = None) -> Path:
    document = {
        "channel": {"id": "900", "name": "general"},
        "messages": [
            {
                "id": "1",
                "timestamp": "2024-01-15T09:00:00+00:00",
                "content": "hi",
                "author": {"id": "7", "name": "Bob"},
            }
        ],
    }
    return write_text(root / "general [900].json", _json_with(document, extra))


def _scratch(root: Path, write: Callable[..., Path], **options) -> str:
    """What ``write`` writes, as text, written aside and removed again."""
    scratch = root.parent / f".scratch-{root.name}"
    text = write(scratch, **options).read_text()
    shutil.rmtree(scratch)
    return text


def telegram_in_a_list(root: Path) -> Path:
    messages = json.loads(_scratch(root, _telegram))["messages"]
    return write_text(root / "chat.json", json.dumps(messages))


def _telegram_chat_in_a_list(root: Path) -> Path:
    chat = json.loads(_scratch(root, _telegram))
    for message in chat["messages"]:
        message["date"] = "2024-01-15T09:00:00"  # as Telegram Desktop writes them
    return write_text(root / "chat.json", json.dumps([chat]))


def _slack_day_as_object(root: Path) -> Path:
    day = json.loads(_scratch(root, _slack))
    return write_text(root / "general" / "2024-01-16.json", json.dumps({"messages": day}))


def _meta_messages_in_a_list(root: Path) -> Path:
    """Detected as Meta by its message keys; the reader then wants the thread around them."""
    messages = json.loads(_scratch(root, _meta))["messages"]
    return write_text(root / "message_1.json", json.dumps(messages))


def _html_saved_as_zip(root: Path) -> Path:
    page = "<!DOCTYPE html><html><head><title>Error</title></head><body>Try again</body></html>"
    return write_text(root / "facebook-alice-2024-01-15-abc.zip", page)


def _far_date_in_an_archive(root: Path) -> Path:
    archive = root / "telegram.zip"
    root.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.writestr("ChatExport/result.json", _scratch(root, _telegram, when=FAR))
    return archive / "ChatExport" / "result.json"


#: case -> (writer of the bad file under a folder: the path an error must name, problem words)
CASES: dict[str, tuple[Callable[[Path], Path], str]] = {
    "meta_far_date": (lambda r: _meta(r, when_ms=FAR * 1000), "dated after year 9999"),
    "telegram_far_date": (lambda r: _telegram(r, when=FAR), "dated after year 9999"),
    "slack_far_date": (lambda r: _slack(r, ts=f"{FAR}.000100"), "dated after year 9999"),
    "telegram_past_int64": (lambda r: _telegram(r, when=10**30), "dated after year 9999"),
    "meta_deep": (lambda r: _meta(r, extra=DEEP), "JSON nested too deeply"),
    "slack_deep": (lambda r: _slack(r, extra=DEEP), "JSON nested too deeply"),
    "telegram_deep": (lambda r: _telegram(r, extra=DEEP), "JSON nested too deeply"),
    "discord_deep": (lambda r: _discord(r, extra=DEEP), "JSON nested too deeply"),
    "telegram_in_a_list": (
        telegram_in_a_list,
        "looks like a Telegram chat's messages wrapped in a list",
    ),
    "telegram_chat_in_a_list": (
        _telegram_chat_in_a_list,
        "looks like a Telegram chat export wrapped in a list",
    ),
    "slack_day_as_object": (
        _slack_day_as_object,
        "looks like Slack messages wrapped in an object",
    ),
    "meta_messages_in_a_list": (
        _meta_messages_in_a_list,
        "(read as Messenger/Instagram JSON, chosen from its keys; but the file is a JSON array "
        "of objects with keys `content`/`sender_name`/`timestamp_ms`: looks like "
        "Messenger/Instagram messages without their thread around them)",
    ),
    "html_saved_as_zip": (
        _html_saved_as_zip,
        "this is an HTML page, not an export (a failed download?",
    ),
    "far_date_in_an_archive": (_far_date_in_an_archive, "dated after year 9999"),
}
