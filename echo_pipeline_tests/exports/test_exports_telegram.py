"""Telegram Desktop JSON exports, written the way Telegram Desktop writes them.

The fixtures follow the public descriptions of ``result.json`` (single chat and full account,
2019-style exports without ``date_unixtime`` and current ones with it); every name, id and
text in them is made up.
"""

from __future__ import annotations

import json
import zipfile
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from echo_pipeline.exports import ExportError, detect_format, read_export, read_exports
from echo_pipeline.exports.telegram import describe_telegram, read_telegram, sniff_telegram
from echo_pipeline.pairs.conversations import PairingConfig, build_pairs

ME, BOB = 1001, 4242
T0 = 1_672_574_400  # 2023-01-01 12:00:00 UTC; the exporting machine was at UTC+2
NOT_INCLUDED = "(File not included. Change data exporting settings to download.)"


def at(seconds: int) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def msg(mid: int, when: int, text: Any = "", *, unix: bool = True, **keys: Any) -> dict:
    """One message as Telegram Desktop writes it: local ``date``, ``date_unixtime`` (a string),
    ``text`` and its ``text_entities`` twin."""
    local = datetime.fromtimestamp(when, UTC).replace(tzinfo=None) + timedelta(hours=2)
    message: dict[str, Any] = {"id": mid, "type": "message", "date": local.isoformat()}
    if unix:
        message["date_unixtime"] = str(when)
    message.update(keys)
    message["text"] = text
    runs = [text] if isinstance(text, str) else text
    message["text_entities"] = [
        {"type": "plain", "text": run} if isinstance(run, str) else run for run in runs if run
    ]
    return message


def from_(uid: int, name: str | None) -> dict:
    return {"from": name, "from_id": f"user{uid}"}


PERSONAL_CHAT = {
    "name": "Bob",
    "type": "personal_chat",
    "id": BOB,
    "messages": [
        {
            "id": 1,
            "type": "service",
            "date": "2023-01-01T13:59:00",
            "date_unixtime": str(T0 - 60),
            "actor": "Bob",
            "actor_id": f"user{BOB}",
            "action": "phone_call",
            "duration_seconds": 42,
            "discard_reason": "hangup",
            "text": "",
            "text_entities": [],
        },
        msg(2, T0, "Hi there", **from_(BOB, "Bob")),
        msg(
            3,
            T0 + 60,
            [
                "see ",
                {"type": "link", "text": "https://example.com"},
                " and ",
                {"type": "bold", "text": "this"},
            ],
            **from_(ME, "Alice Me"),
            edited="2023-01-01T14:06:00",
            edited_unixtime=str(T0 + 360),
            reply_to_message_id=2,
        ),
        msg(
            4,
            T0 + 120,
            "",
            **from_(BOB, "Bob"),
            photo="photos/photo_1@01-01-2023_14-02-00.jpg",
            width=1280,
            height=960,
        ),
        msg(5, T0 + 180, "breaking", **from_(ME, "Alice Me"), forwarded_from="News Channel"),
        msg(
            6,
            T0 + 240,
            "",
            **from_(BOB, "Bob"),
            file=NOT_INCLUDED,
            thumbnail=NOT_INCLUDED,
            media_type="sticker",
            sticker_emoji="\U0001f600",
            width=512,
            height=512,
        ),
        msg(
            7,
            T0 + 300,
            "",
            **from_(BOB, "Bob"),
            file="voice_messages/audio_1@01-01-2023_14-05-00.ogg",
            media_type="voice_message",
            mime_type="audio/ogg",
            duration_seconds=3,
        ),
        msg(
            8,
            T0 + 360,
            "",
            **from_(ME, "Alice Me"),
            via_bot="@gif",
            file="video_files/cat.gif.mp4",
            media_type="animation",
            mime_type="video/mp4",
        ),
        msg(
            9,
            T0 + 420,
            "the report",
            **from_(BOB, "Bob"),
            file="files/report.pdf",
            file_name="report.pdf",
            mime_type="application/pdf",
        ),
        msg(
            10,
            T0 + 480,
            "",
            **from_(ME, "Alice Me"),
            file="round_video_messages/file_1.mp4",
            media_type="video_message",
            mime_type="video/mp4",
        ),
        msg(
            11,
            T0 + 540,
            "quoting elsewhere",
            **from_(BOB, "Bob"),
            reply_to_peer_id="channel777",
            reply_to_message_id=5,
        ),
        msg(
            12,
            T0 + 600,
            "\U0001f44d ok",
            **from_(ME, "Alice Me"),
            forwarded_from=None,  # a forward from someone who hides their account
        ),
    ],
}
# A message written before text_entities existed as a twin: only the entity list survives.
PERSONAL_CHAT["messages"].append(
    {
        "id": 13,
        "type": "message",
        "date": "2023-01-01T14:11:00",
        "date_unixtime": str(T0 + 660),
        **from_(ME, "Alice Me"),
        "text_entities": [
            {"type": "plain", "text": "ping "},
            {"type": "mention", "text": "@bob"},
        ],
    }
)

# 2019-style group: no date_unixtime (dates are local), from_id numbers, a deleted account,
# message ids that repeat the personal chat's.
OLD_GROUP = {
    "name": "Trip",
    "type": "private_group",
    "id": 555,
    "messages": [
        {
            "id": 1,
            "type": "service",
            "date": "2021-06-01T09:00:00",
            "actor": "Alice Me",
            "actor_id": ME,
            "action": "create_group",
            "title": "Trip",
            "members": ["Alice Me", "Bob"],
            "text": "",
        },
        {
            "id": 2,
            "type": "message",
            "date": "2021-06-01T09:01:00",
            "from": "Bob",
            "from_id": BOB,
            "text": "Where to?",
        },
        {
            "id": 3,
            "type": "message",
            "date": "2021-06-01T09:02:00",
            "from": "Alice Me",
            "from_id": ME,
            "reply_to_message_id": 2,
            "text": "Rome!",
        },
        {
            "id": 4,
            "type": "message",
            "date": "2021-06-01T09:03:00",
            "from": None,
            "from_id": 999,
            "text": "hi all",
        },
    ],
}

SAVED = {
    "name": None,
    "type": "saved_messages",
    "id": ME,
    "messages": [
        msg(1, T0 + 7200, "note to self", **from_(ME, "Alice Me")),
        msg(2, T0 + 7260, "old note"),  # no sender named
    ],
}

LEFT_CHANNEL = {
    "name": "News Channel",
    "type": "public_channel",
    "id": 777,
    "messages": [msg(5, T0 - 86400, "breaking", unix=False)],  # old post: no from at all
}


def full_export(*, left: bool = True) -> dict:
    export = {
        "about": "Here is the data you requested. Remember: Telegram is ad free ...",
        "personal_information": {
            "user_id": ME,
            "first_name": "Alice",
            "last_name": "Me",
            "phone_number": "+1 555 0100",
            "username": "@alice_me",
            "bio": "",
        },
        "contacts": {"about": "...", "list": []},
        "frequent_contacts": {"about": "...", "list": []},
        "chats": {"about": "...", "list": [PERSONAL_CHAT, OLD_GROUP, SAVED]},
    }
    if left:
        export["left_chats"] = {"about": "...", "list": [LEFT_CHANNEL]}
    return export


def write(tmp_path: Path, document: Any, name: str = "result.json") -> Path:
    """Telegram Desktop writes UTF-8 (no escapes) with one-space indentation."""
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, ensure_ascii=False, indent=1), encoding="utf-8")
    return path


def columns(table: pa.Table, *names: str) -> list[tuple]:
    return list(zip(*(table[n].to_pylist() for n in names), strict=True))


# --- single chat ---------------------------------------------------------------------------------


def test_single_chat_every_column(tmp_path, check_file_table):
    path = write(tmp_path, PERSONAL_CHAT)
    assert detect_format(path) == "telegram"
    table = check_file_table(read_export(path))
    assert set(table["source_format"].to_pylist()) == {"telegram"}
    assert set(table["channel_id"].to_pylist()) == {f"telegram:{BOB}"}
    assert set(table["channel_name"].to_pylist()) == {"Bob"}
    assert set(table["source_file"].to_pylist()) == {str(path)}
    assert table["message_id"].to_pylist() == [str(i) for i in range(1, 14)]
    assert table["timestamp"].to_pylist() == [at(T0 - 60)] + [at(T0 + 60 * k) for k in range(12)]
    me, bob = f"user{ME}", f"user{BOB}"
    assert columns(table, "author_id", "author_name", "kind", "content") == [
        (bob, "Bob", "system", "phone_call"),
        (bob, "Bob", "message", "Hi there"),
        (me, "Alice Me", "reply", "see https://example.com and this"),
        (bob, "Bob", "message", ""),
        (me, "Alice Me", "forward", "breaking"),
        (bob, "Bob", "message", ""),
        (bob, "Bob", "message", ""),
        (me, "Alice Me", "command", ""),
        (bob, "Bob", "message", "the report"),
        (me, "Alice Me", "message", ""),
        (bob, "Bob", "message", "quoting elsewhere"),
        (me, "Alice Me", "forward", "\U0001f44d ok"),
        (me, "Alice Me", "message", "ping @bob"),
    ]
    assert table["reply_to_id"].to_pylist() == [None, None, "2"] + [None] * 10
    assert columns(table, "has_attachments", "attachment_kind") == [
        (False, None),
        (False, None),
        (False, None),
        (True, "image"),  # photo
        (False, None),
        (True, "image"),  # sticker
        (True, "audio"),  # voice message
        (True, "video"),  # animation
        (True, "file"),  # pdf
        (True, "video"),  # round video message
        (False, None),
        (False, None),
        (False, None),
    ]
    assert table["edited"].to_pylist() == [False, False, True] + [False] * 10
    assert table["is_bot"].to_pylist() == [False] * 13


def test_renamed_file_is_still_detected_and_describe_names_me(tmp_path):
    path = write(tmp_path, PERSONAL_CHAT, "bob chat backup.txt")
    assert detect_format(path) == "telegram"
    info = describe_telegram(path)
    assert info["suggested_me"] == [f"user{ME}"]  # the personal chat's id is Bob's
    assert "single chat (personal_chat)" in info["shape"]
    assert "date_unixtime" in info["shape"]


def test_old_export_dates_are_local_time_read_as_utc(tmp_path, check_file_table):
    path = write(tmp_path, OLD_GROUP)
    assert detect_format(path) == "telegram"
    table = check_file_table(read_telegram(path))
    assert table["timestamp"].to_pylist() == [
        datetime(2021, 6, 1, 9, m, tzinfo=UTC) for m in range(4)
    ]
    assert columns(table, "author_id", "author_name", "kind", "content", "reply_to_id") == [
        (f"user{ME}", "Alice Me", "system", "create_group", None),
        (f"user{BOB}", "Bob", "message", "Where to?", None),
        (f"user{ME}", "Alice Me", "reply", "Rome!", "2"),
        ("user999", "user999", "message", "hi all", None),  # deleted account: no name
    ]
    info = describe_telegram(path)
    assert "local time" in info["shape"] and info["suggested_me"] == []


def test_messages_out_of_time_order_are_sorted_within_the_chat(tmp_path, check_file_table):
    chat = {
        "name": "x",
        "type": "private_supergroup",
        "id": 9,
        "messages": [
            msg(1, T0 + 10, "second", **from_(1, "a")),
            msg(2, T0, "first", **from_(2, "b")),
        ],
    }
    table = check_file_table(read_telegram(write(tmp_path, chat)))
    assert table["content"].to_pylist() == ["first", "second"]
    assert table["message_id"].to_pylist() == ["2", "1"]


def test_same_chat_exported_twice_merges_without_duplicates(tmp_path):
    first = write(tmp_path, PERSONAL_CHAT, "a/result.json")
    second = write(
        tmp_path, {**PERSONAL_CHAT, "messages": PERSONAL_CHAT["messages"][:5]}, "b/result.json"
    )
    merged = read_exports([first.parent, second.parent])
    assert merged.num_rows == len(PERSONAL_CHAT["messages"])


def test_missing_type_is_a_message_and_an_unknown_one_other(tmp_path, check_file_table):
    untyped = msg(1, T0, "hand-made", **from_(1, "a"))
    del untyped["type"]
    chat = {
        "name": "x",
        "type": "private_group",
        "id": 9,
        "messages": [untyped, msg(2, T0 + 1, "?", type="future_kind", **from_(2, "b"))],
    }
    table = check_file_table(read_telegram(write(tmp_path, chat)))
    assert table["kind"].to_pylist() == ["message", "other"]


def test_bot_chat_marks_the_bot(tmp_path, check_file_table):
    chat = {
        "name": "Weather Bot",
        "type": "bot_chat",
        "id": 77,
        "messages": [
            msg(1, T0, "/start", **from_(ME, "Alice Me")),
            msg(2, T0 + 1, "Sunny, 21 °C", **from_(77, "Weather Bot")),
        ],
    }
    path = write(tmp_path, chat)
    table = check_file_table(read_telegram(path))
    assert table["is_bot"].to_pylist() == [False, True]
    assert describe_telegram(path)["suggested_me"] == [f"user{ME}"]


def test_empty_chat_reads_as_no_rows(tmp_path, check_file_table):
    path = write(tmp_path, {"name": "x", "type": "personal_chat", "id": 3, "messages": []})
    assert detect_format(path) == "telegram"
    assert check_file_table(read_telegram(path)).num_rows == 0


# --- full-account export -----------------------------------------------------------------------


def test_full_account_export_reads_every_chat_and_left_chats(tmp_path, check_table):
    path = write(tmp_path, full_export())
    assert detect_format(path) == "telegram"
    table = check_table(read_export(path))
    n_personal = len(PERSONAL_CHAT["messages"])
    assert table.num_rows == n_personal + 4 + 2 + 1
    assert table["seq"].to_pylist() == list(range(table.num_rows))
    # ids repeat across chats (each chat numbers its own), never within one
    keys = columns(table, "channel_id", "message_id")
    assert len(set(keys)) == table.num_rows
    assert table["message_id"].to_pylist().count("1") == 3
    channels = table["channel_id"].to_pylist()
    assert channels == (
        [f"telegram:{BOB}"] * n_personal
        + ["telegram:555"] * 4
        + [f"telegram:{ME}"] * 2
        + ["telegram:777"]
    )
    saved = table.slice(n_personal + 4, 2)
    assert columns(saved, "author_id", "author_name", "content") == [
        (f"user{ME}", "Alice Me", "note to self"),
        (f"user{ME}", f"user{ME}", "old note"),  # no sender: Saved Messages are the owner's
    ]
    post = table.slice(table.num_rows - 1)
    assert columns(post, "author_id", "author_name", "kind", "channel_name", "timestamp") == [
        # no date_unixtime: the local (UTC+2) time is read as UTC
        ("channel777", "News Channel", "message", "News Channel", at(T0 - 86400 + 7200))
    ]


def test_entity_only_text_is_found_in_a_later_chat(tmp_path):
    export = full_export()
    export["chats"]["list"] = [OLD_GROUP, SAVED]
    export["left_chats"]["list"] = [PERSONAL_CHAT]  # the text_entities-only message is here
    table = read_telegram(write(tmp_path, export))
    assert table["content"].to_pylist()[-1] == "ping @bob"


def test_full_account_describe(tmp_path):
    info = describe_telegram(write(tmp_path, full_export()))
    assert info["suggested_me"] == [f"user{ME}"]
    assert "full-account export (3 chats, 1 left chats)" in info["shape"]
    assert "local time" in info["shape"]  # the old group has no date_unixtime


def test_personal_information_far_from_chats_is_detected(tmp_path):
    export = full_export(left=False)
    # contacts push the chats beyond the 64 KiB detect reads
    export["contacts"]["list"] = [
        {
            "first_name": f"c{i}",
            "last_name": "",
            "phone_number": "+1",
            "date": "2020-01-01T00:00:00",
        }
        for i in range(2000)
    ]
    path = write(tmp_path, export)
    assert path.stat().st_size > 64 * 1024
    assert detect_format(path) == "telegram"


def test_end_to_end_pairs_with_me_from_personal_information(tmp_path):
    folder = tmp_path / "telegram"
    write(folder, full_export())
    messages = read_exports([folder])
    me = describe_telegram(folder / "result.json")["suggested_me"]
    pairs, _report = build_pairs(messages.to_pandas(), PairingConfig(me=tuple(me)))
    got = sorted(
        columns(pairs, "channel_id", "prompt", "reply", "is_explicit_reply", "reply_author_id")
    )
    # The [video] reply to "the report" is dropped as placeholder-only; forwards and the
    # via-bot GIF never become turns; the system call message neither.
    assert got == [
        (f"telegram:{BOB}", "Hi there", "see https://example.com and this", True, f"user{ME}"),
        (f"telegram:{BOB}", "quoting elsewhere", "ping @bob", False, f"user{ME}"),
        ("telegram:555", "Where to?", "Rome!", True, f"user{ME}"),
    ]


def test_zip_member_path_is_read(tmp_path, check_file_table):
    archive = tmp_path / "export.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("ChatExport_2023-01-02/result.json", json.dumps(PERSONAL_CHAT))
    member = zipfile.Path(archive, "ChatExport_2023-01-02/result.json")
    table = check_file_table(read_telegram(member))
    assert table.num_rows == len(PERSONAL_CHAT["messages"])
    assert describe_telegram(member)["suggested_me"] == [f"user{ME}"]


# --- detection ---------------------------------------------------------------------------------


def test_sniff_is_by_keys_and_leaves_discord_alone(write_json, dce_message):
    assert sniff_telegram(json.dumps(PERSONAL_CHAT)[:300])
    assert sniff_telegram('{\n "about": "x",\n "personal_information": {\n  "user_id": 1')
    dce = write_json([dce_message("1", '"type": "personal_chat", "from_id": "user1"')])
    assert detect_format(dce) == "discord_json"
    assert not sniff_telegram('{"messages": [{"id": 1, "text": "hi"}]}')


# --- hostile input -----------------------------------------------------------------------------


def error_for(path: Path) -> str:
    with pytest.raises(ExportError) as caught:
        read_telegram(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: ") and "\n" not in message
    return message


def test_truncated_json_names_the_file(tmp_path):
    text = json.dumps(PERSONAL_CHAT, indent=1)
    path = tmp_path / "result.json"
    path.write_text(text[: len(text) // 2])
    assert detect_format(path) == "telegram"
    assert "truncated JSON" in error_for(path)


def test_invalid_json_gives_the_byte(tmp_path):
    path = tmp_path / "result.json"
    path.write_text('{"name": "x", "type": "personal_chat", "messages": [}')
    assert "invalid JSON at byte" in error_for(path)


def test_not_utf8(tmp_path):
    path = tmp_path / "result.json"
    path.write_bytes(b'{"name": "caf\xe9", "messages": []}')
    assert "not UTF-8" in error_for(path)


def test_list_instead_of_an_object(tmp_path):
    path = write(tmp_path, [PERSONAL_CHAT])
    assert "not a Telegram Desktop export" in error_for(path)
    with pytest.raises(ExportError):
        read_export(path)


def test_messages_not_a_list(tmp_path):
    path = write(tmp_path, {**PERSONAL_CHAT, "messages": {"1": "hi"}})
    assert "$.messages" in error_for(path)


def test_missing_messages(tmp_path):
    path = write(tmp_path, {"name": "x", "type": "personal_chat", "id": 3})
    assert 'no "messages" list' in error_for(path)
    path = write(tmp_path, {"personal_information": {"user_id": 1}}, "account.json")
    assert "without chats" in error_for(path)
    export = full_export()
    export["chats"]["list"][1] = {"name": "Trip", "type": "private_group", "id": 555}
    path = write(tmp_path, export, "full.json")
    assert "'Trip' (chats.list[1])" in error_for(path)


def test_wrong_type_in_a_message_field(tmp_path):
    bad = {**PERSONAL_CHAT, "messages": [msg(1, T0, {"not": "text"}, **from_(1, "a"))]}
    assert "$.messages[0].text" in error_for(write(tmp_path, bad))


def test_message_without_date(tmp_path):
    chat = {
        "name": "x",
        "type": "personal_chat",
        "id": 3,
        "messages": [{"id": 7, "type": "message", "from": "a", "from_id": "user1", "text": "hi"}],
    }
    message = error_for(write(tmp_path, chat))
    assert "message 7" in message and "no readable date" in message


def test_empty_file(tmp_path):
    path = tmp_path / "result.json"
    path.write_text("  \n")
    assert "empty file" in error_for(path)


def test_synthetic_benchmark_export_reads(tmp_path, check_table):
    """The generator benchmarks/bench_ingest.py can import writes what the reader expects."""
    from echo_pipeline_tests.exports.telegram_synthetic import write_synthetic_telegram

    path = write_synthetic_telegram(tmp_path / "result.json", 2_000, chats=3)
    assert detect_format(path) == "telegram"
    table = check_table(read_telegram(path))
    assert table.num_rows == 2_000
    assert set(table["kind"].to_pylist()) == {"message", "reply", "system", "forward"}
    assert set(table["attachment_kind"].drop_null().to_pylist()) == {"image", "audio"}
    assert describe_telegram(path)["suggested_me"] == ["user1001"]
