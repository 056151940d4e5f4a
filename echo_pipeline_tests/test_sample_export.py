"""The bundled sample export: DCE-shaped, deterministic, and with a style worth learning."""

from __future__ import annotations

import json
import re
from datetime import datetime
from pathlib import Path

import pytest

from echo_pipeline.infra.paths import sample_export_dir
from tools.sample_export import (
    ALEX,
    DISCORD_EPOCH_MS,
    SAM,
    dm_file_name,
    generate_sample_export,
    guild_file_name,
)

ROOT_KEYS = ["guild", "channel", "dateRange", "exportedAt", "messages", "messageCount"]
MESSAGE_KEYS = [
    "id",
    "type",
    "timestamp",
    "timestampEdited",
    "callEndedTimestamp",
    "isPinned",
    "content",
    "author",
    "attachments",
    "embeds",
    "stickers",
    "reactions",
    "mentions",
]
OPTIONAL_KEYS = ["reference", "interaction"]
AUTHOR_KEYS = ["id", "name", "discriminator", "nickname", "color", "isBot", "roles", "avatarUrl"]
ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,3})?[+-]\d\d:\d\d$")
HUMAN_KINDS = ("Default", "Reply")


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """A fresh generation with the defaults: the same files as the committed data/sample/."""
    return generate_sample_export(tmp_path_factory.mktemp("sample"))


@pytest.fixture(scope="module")
def messages(sample: list[Path]) -> dict[str, list[dict]]:
    """All messages per channel id, partitions joined in part order."""
    by_channel: dict[str, list[dict]] = {}
    for path in sample:
        doc = json.loads(path.read_text(encoding="utf-8"))
        by_channel.setdefault(doc["channel"]["id"], []).extend(doc["messages"])
    return by_channel


def _human(msgs: list[dict], author_id: str) -> list[str]:
    return [
        m["content"]
        for m in msgs
        if m["author"]["id"] == author_id and m["type"] in HUMAN_KINDS and m["content"]
    ]


def test_generation_is_byte_identical_for_the_same_seed(tmp_path: Path) -> None:
    first = generate_sample_export(tmp_path / "a", messages=600, part_size=250)
    second = generate_sample_export(tmp_path / "b", messages=600, part_size=250)
    other = generate_sample_export(tmp_path / "c", messages=600, part_size=250, seed=8)

    assert [p.name for p in first] == [p.name for p in second]
    assert [p.read_bytes() for p in first] == [p.read_bytes() for p in second]
    assert first[0].read_bytes() != other[0].read_bytes()


def test_committed_sample_equals_a_fresh_generation(sample: list[Path]) -> None:
    committed = sorted(sample_export_dir().glob("*.json"))
    assert sorted(p.name for p in committed) == sorted(p.name for p in sample), (
        "data/sample/ is out of date: run `python -m tools.sample_export`"
    )
    for path in sample:
        assert (sample_export_dir() / path.name).read_bytes() == path.read_bytes(), (
            f"{path.name} differs from a fresh generation; regenerate it, do not edit it by hand"
        )


def test_dm_is_partitioned_the_way_dce_names_parts(sample: list[Path]) -> None:
    names = [p.name for p in sample]
    assert names == [dm_file_name(1), dm_file_name(2), guild_file_name()]
    assert names[1] == "Direct Messages - sam [855575384304008197] [part 2].json"
    counts = [json.loads(p.read_text(encoding="utf-8"))["messageCount"] for p in sample]
    assert counts[:2] == [2500, 1500]


@pytest.mark.parametrize("index", [0, 1, 2])
def test_each_file_is_a_complete_dce_document(sample: list[Path], index: int) -> None:
    raw = sample[index].read_bytes()
    doc = json.loads(raw)

    assert list(doc) == ROOT_KEYS
    assert doc["messageCount"] == len(doc["messages"])
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{1,7}[+-]\d\d:\d\d", doc["exportedAt"])
    assert raw.startswith(b'{\n  "guild": {\n    "id": ')
    assert not raw.endswith(b"\n") and b"\r" not in raw
    offsets = {m["timestamp"][-6:] for m in doc["messages"]}
    assert len(offsets) == 1

    previous = 0
    for m in doc["messages"]:
        keys = list(m)
        assert keys[: len(MESSAGE_KEYS)] == MESSAGE_KEYS
        assert keys[-1] == "inlineEmojis"
        assert [k for k in keys if k in OPTIONAL_KEYS] == keys[len(MESSAGE_KEYS) : -1]
        assert list(m["author"]) == AUTHOR_KEYS
        assert isinstance(m["id"], str) and isinstance(m["author"]["id"], str)
        assert ISO.match(m["timestamp"])
        # the snowflake's creation time is the timestamp, and ids ascend
        created_ms = (int(m["id"]) >> 22) + DISCORD_EPOCH_MS
        assert created_ms == int(datetime.fromisoformat(m["timestamp"]).timestamp() * 1000 + 0.5)
        assert int(m["id"]) > previous
        previous = int(m["id"])


def test_emoji_are_surrogate_escapes_and_bmp_text_is_raw(sample: list[Path]) -> None:
    text = b"".join(p.read_bytes() for p in sample).decode("utf-8")
    assert "\\uD83D\\uDE02" in text  # 😂 as DCE writes it
    assert all(ord(c) <= 0xFFFF for c in text)
    assert "Montréal" in text or "crème brûlée" in text


def test_alex_and_sam_write_in_different_styles(messages: dict[str, list[dict]]) -> None:
    for msgs in messages.values():
        alex = _human(msgs, ALEX.id)
        sam = [c for c in _human(msgs, SAM.id) if not c.startswith("http")]
        assert alex and sam
        assert all(c == c.lower() for c in alex)
        assert not any(c.endswith(".") for c in alex)
        assert all(c[0].isupper() for c in sam)

    dm = messages["855575384304008197"]
    alex_words = [len(c.split()) for c in _human(dm, ALEX.id) if not c.startswith("http")]
    sam_words = [len(c.split()) for c in _human(dm, SAM.id) if not c.startswith("http")]
    assert sum(alex_words) / len(alex_words) < 8 < sum(sam_words) / len(sam_words)
    assert sum(any(t in c for t in ("lol", "tbh", "ngl")) for c in _human(dm, ALEX.id)) > 500


def test_replies_and_pins_reference_existing_messages(messages: dict[str, list[dict]]) -> None:
    for channel_id, msgs in messages.items():
        ids = {m["id"]: m for m in msgs}
        for m in msgs:
            if "reference" not in m:
                continue
            ref = m["reference"]
            assert ref["channelId"] == channel_id
            assert ref["messageId"] in ids
            assert int(ref["messageId"]) < int(m["id"])
            if m["type"] == "ChannelPinnedMessage":
                assert ids[ref["messageId"]]["isPinned"]

    dm = messages["855575384304008197"]
    alex_msgs = [m for m in dm if m["author"]["id"] == ALEX.id and m["type"] in HUMAN_KINDS]
    alex_replies = [m for m in alex_msgs if m["type"] == "Reply"]
    assert 0.05 < len(alex_replies) / len(alex_msgs) < 0.12
    assert all(m["reference"]["guildId"] is None for m in alex_replies)
    # replies are to sam, and some reach past the message right before them
    author_of = {m["id"]: m["author"]["id"] for m in dm}
    assert all(author_of[m["reference"]["messageId"]] == SAM.id for m in alex_replies)
    position = {m["id"]: i for i, m in enumerate(dm)}
    assert any(position[m["id"]] - position[m["reference"]["messageId"]] > 1 for m in alex_replies)


def test_the_sample_exercises_the_loader(messages: dict[str, list[dict]]) -> None:
    dm = messages["855575384304008197"]
    guild = messages["929467687237632004"]
    kinds = {m["type"] for m in dm}
    assert {"Default", "Reply", "Call", "ChannelPinnedMessage"} <= kinds
    calls = [m for m in dm if m["type"] == "Call"]
    assert all(m["callEndedTimestamp"] and "Started a call" in m["content"] for m in calls)
    assert any(m["attachments"] and not m["content"] for m in dm)
    assert any(m["attachments"] and m["content"] for m in dm)
    assert any(a["fileName"].endswith(".mp4") for m in dm for a in m["attachments"])
    assert any(m["stickers"] and not m["content"] for m in dm)
    assert any(m["content"].startswith("https://example.com/") for m in dm)
    assert any(m["timestampEdited"] for m in dm)
    text = "\n".join(m["content"] for m in dm)
    assert "sam.rivera@example.com" in text and "+1 (555) 010-4477" in text

    bot = [m for m in guild if m["author"]["isBot"]]
    assert bot and all(m["author"]["name"] == "DJ Bot" for m in bot)
    commands = [m for m in guild if m["type"] == "20"]
    assert commands and all(m["interaction"]["user"]["isBot"] is False for m in commands)
    assert sum(m["type"] == "GuildMemberJoin" for m in guild) >= 3
    assert {"alex", "sam", "jordan"} <= {m["author"]["name"] for m in guild}
