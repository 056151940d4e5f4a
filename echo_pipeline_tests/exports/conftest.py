"""Shared fixtures for the export-reader tests: the real exports and small export writers."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from echo_pipeline.infra.schemas import CHAT_MESSAGES, MESSAGE_KINDS


def _check_table(table: pa.Table) -> pa.Table:
    """The invariants every reader promises, whatever the input."""
    assert table.schema.equals(CHAT_MESSAGES, check_metadata=False)
    for field in CHAT_MESSAGES:
        if not field.nullable:
            assert table[field.name].null_count == 0, field.name
    assert set(table["kind"].to_pylist()) <= set(MESSAGE_KINDS)
    assert set(table["attachment_kind"].drop_null().to_pylist()) <= {
        "image",
        "video",
        "audio",
        "file",
    }
    return table


def _check_file_table(table: pa.Table) -> pa.Table:
    """_check_table plus the per-file promises: seq is 0..n-1 and message ids are unique."""
    _check_table(table)
    assert np.array_equal(table["seq"].to_numpy(), np.arange(table.num_rows))
    assert len(set(table["message_id"].to_pylist())) == table.num_rows
    return table


def _dce_message(
    message_id: str | None,
    content: str = "hi",
    *,
    type: str = "Default",
    timestamp: str = "2023-01-06T14:00:00+00:00",
    author: tuple[str, str] = ("111", "alice"),
    **extra: Any,
) -> dict[str, Any]:
    """A message as DCE 2.4x writes it (null-valued keys included)."""
    message = {
        "id": message_id,
        "type": type,
        "timestamp": timestamp,
        "timestampEdited": None,
        "callEndedTimestamp": None,
        "isPinned": False,
        "content": content,
        "author": {
            "id": author[0],
            "name": author[1],
            "discriminator": "0000",
            "nickname": None,
            "color": None,
            "isBot": False,
            "roles": [],
            "avatarUrl": "https://cdn.discordapp.com/embed/avatars/0.png",
        },
        "attachments": [],
        "embeds": [],
        "stickers": [],
        "reactions": [],
        "mentions": [],
        "inlineEmojis": [],
    }
    message.update(extra)
    return message


def _dce_document(messages: list[dict], channel_id: str = "900", name: str = "general") -> dict:
    return {
        "guild": {"id": "1", "name": "Guild", "iconUrl": "https://cdn.discordapp.com/x.png"},
        "channel": {
            "id": channel_id,
            "type": "GuildTextChat",
            "categoryId": "2",
            "category": "Text Channels",
            "name": name,
            "topic": None,
        },
        "dateRange": {"after": None, "before": None},
        "exportedAt": "2025-01-20T22:07:57.3900215+00:00",
        "messages": messages,
        "messageCount": len(messages),
    }


@pytest.fixture
def check_table() -> Callable[[pa.Table], pa.Table]:
    """Assert the schema invariants of any reader output (nulls, kinds, attachment kinds)."""
    return _check_table


@pytest.fixture
def check_file_table() -> Callable[[pa.Table], pa.Table]:
    """Assert the invariants of one file's table (also seq = 0..n-1, unique message ids)."""
    return _check_file_table


@pytest.fixture
def dce_message() -> Callable[..., dict[str, Any]]:
    """Build one DCE 2.4x message dict: ``dce_message("123", "text", type="Reply", ...)``."""
    return _dce_message


@pytest.fixture
def write_json(tmp_path: Path) -> Callable[..., Path]:
    """Write a DCE-shaped JSON export (``ensure_ascii`` like DCE: emoji as surrogate pairs)."""

    def write(
        messages: list[dict], name: str = "export.json", *, newline: str = "\n", **channel: str
    ) -> Path:
        text = json.dumps(_dce_document(messages, **channel), indent=2, ensure_ascii=True)
        path = tmp_path / name
        path.write_bytes(text.replace("\n", newline).encode("utf-8"))
        return path

    return write


@pytest.fixture
def write_text(tmp_path: Path) -> Callable[..., Path]:
    """Write text exactly as given (bytes are not touched: pass CRLF yourself)."""

    def write(name: str, text: str, encoding: str = "utf-8") -> Path:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(text.encode(encoding))
        return path

    return write
