"""DiscordChatExporter JSON: the real exports, every release's quirks, and msgspec's edge cases."""

from __future__ import annotations

import json
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import pytest

from echo_pipeline.exports import ExportError, detect_format, read_export

DISCORD = Path(__file__).resolve().parent.parent / "fixtures" / "discord"
GENERAL = DISCORD / (
    "slatinsky__DiscordChatExporter-frontend__Example guild - Text Channels - general "
    "[1012224565567721552].json"
)
CHILL = DISCORD / (
    "slatinsky__DiscordChatExporter-frontend__Example guild - Text Channels - chill talk "
    "[1012224565567125544].json"
)
THREAD = DISCORD / (
    "slatinsky__DiscordChatExporter-frontend__Example guild - general - Thomas is Thomas "
    "[1060927310439657577].json"
)
DM = DISCORD / "mlomb__chat-analytics__DM_2A_2M.json"
GROUP = DISCORD / "mlomb__chat-analytics__GC_3A_5M.json"


def rows(table) -> list[dict]:
    return table.to_pylist()


# --- the real exports -------------------------------------------------------------------------


@pytest.mark.parametrize("path", [GENERAL, CHILL, THREAD, DM, GROUP], ids=lambda p: p.name[:40])
def test_every_real_json_export_is_detected_and_keeps_every_message(path, check_file_table):
    document = json.loads(path.read_text(encoding="utf-8"))
    table = check_file_table(read_export(path))
    assert detect_format(path) == "discord_json"
    assert table["message_id"].to_pylist() == [m["id"] for m in document["messages"]]
    assert set(table["source_format"].to_pylist()) == {"discord_json"}
    assert set(table["source_file"].to_pylist()) == {str(path)}


def test_guild_channel_kinds_attachments_edits_and_authors(check_file_table):
    table = check_file_table(read_export(GENERAL))
    by_id = {r["message_id"]: r for r in rows(table)}
    assert table.num_rows == 35
    assert Counter(table["kind"].to_pylist()) == {"message": 31, "system": 4}
    assert by_id["1045178587575242785"]["kind"] == "system"  # GuildMemberJoin
    assert by_id["1060927310439657577"]["kind"] == "system"  # ThreadCreated
    assert by_id["1060927310439657577"]["reply_to_id"] is None  # its reference is the thread
    # A Default message with a `reference` (hand-edited file) is not a reply: type decides.
    assert by_id["1060926346089476176"]["kind"] == "message"
    assert by_id["1060926346089476176"]["reply_to_id"] is None

    assert Counter(table["author_name"].to_pylist()) == {
        "Adam": 19,
        "Thomas": 9,
        "Patrick": 6,
        "RICK NITRO": 1,
    }
    assert by_id["1060926487911485582"]["edited"] is True
    assert sum(table["edited"].to_pylist()) == 1
    kinds = {r["message_id"]: r["attachment_kind"] for r in rows(table) if r["has_attachments"]}
    assert kinds == {
        "1060926845832409158": "image",  # .png
        "1060926971418251355": "image",
        "1060927032445370408": "image",
        "1060927108362289223": "image",  # .gif
        "1060927205481402388": "video",  # .mp4
        "1060927254248558702": "audio",  # .mp3
        "1060927916252332082": "image",
    }
    assert by_id["1045179638760091709"]["content"] == ""  # embed-only message stays blank
    assert by_id["1060926197556588725"]["content"] == "Hello 👏"
    assert set(table["channel_id"].to_pylist()) == {"1012224565567721552"}
    assert set(table["channel_name"].to_pylist()) == {"general"}
    assert table["timestamp"][0].as_py() == datetime(2023, 1, 6, 14, 3, 3, 853000, tzinfo=UTC)


def test_chill_talk_surrogate_emoji_reply_and_nickname(check_file_table):
    table = check_file_table(read_export(CHILL))
    by_id = {r["message_id"]: r for r in rows(table)}
    # "\uD83E\uDD76" in the file is one character, U+1F976.
    assert by_id["1060953753550860429"]["content"] == "It's a little cold in here \U0001f976"
    reply = by_id["1060954094627463198"]
    assert (reply["kind"], reply["reply_to_id"]) == ("reply", "1060954094627463098")
    spammer = by_id["1060954094627463098"]
    assert (spammer["author_name"], spammer["author_id"]) == ("RICK NITRO", "521486476985321458")
    assert spammer["is_bot"] is False  # a spam "bot" that Discord does not flag
    assert by_id["1060954419862188072"]["edited"] is True
    # The file name says [1012224565567125544]; the document's channel.id wins.
    assert set(table["channel_id"].to_pylist()) == {"1012224565567875236"}
    assert set(table["channel_name"].to_pylist()) == {"chill talk"}


def test_thread_replies_point_at_their_messages(check_file_table):
    table = check_file_table(read_export(THREAD))
    replies = [(r["message_id"], r["reply_to_id"]) for r in rows(table) if r["kind"] == "reply"]
    assert replies == [
        ("1060927555093413928", "1060927520008065176"),
        ("1060927583467876363", "1060927555093413928"),
    ]
    assert table["channel_name"][0].as_py() == "Thomas is Thomas"


def test_group_dm_call_icon_and_name_changes_are_system(check_file_table):
    table = check_file_table(read_export(GROUP))
    kinds = dict(zip(table["message_id"].to_pylist(), table["kind"].to_pylist(), strict=True))
    assert kinds["1064990775659729017"] == "system"  # ChannelNameChange
    assert kinds["1064991038751649806"] == "system"  # ChannelIconChange
    assert kinds["100"] == "system"  # Call
    assert Counter(kinds.values()) == {"message": 3, "system": 3}
    names = dict(zip(table["author_id"].to_pylist(), table["author_name"].to_pylist(), strict=True))
    assert names["333333333333333333"] == "theplant"  # nickname preferred over name
    # A reply written before 2.26 (type Default + reference) stays a plain message.
    old_reply = next(r for r in rows(table) if r["message_id"] == "530805779645595660")
    assert (old_reply["kind"], old_reply["reply_to_id"]) == ("message", None)


def test_dm_bot_flag_and_call(check_file_table):
    table = check_file_table(read_export(DM))
    assert table["is_bot"].to_pylist() == [False, True, True]
    assert table["author_name"].to_pylist() == ["mlomb", "Someones nickname", "Someones nickname"]
    assert table["kind"].to_pylist() == ["message", "message", "system"]
    assert table["channel_name"][0].as_py() == "Someones name"


# --- release differences and tolerance --------------------------------------------------------


@pytest.mark.parametrize(
    ("stamp", "expected"),
    [
        ("2023-05-16T20:50:18+00:00", datetime(2023, 5, 16, 20, 50, 18, tzinfo=UTC)),
        ("2023-05-16T20:50:18.3+00:00", datetime(2023, 5, 16, 20, 50, 18, 300000, tzinfo=UTC)),
        ("2023-05-16T20:50:18.31+00:00", datetime(2023, 5, 16, 20, 50, 18, 310000, tzinfo=UTC)),
        ("2023-05-16T20:50:18.312+00:00", datetime(2023, 5, 16, 20, 50, 18, 312000, tzinfo=UTC)),
        ("2023-05-16T20:50:18.3121+00:00", datetime(2023, 5, 16, 20, 50, 18, 312100, tzinfo=UTC)),
        ("2025-01-20T22:07:57.3900215+00:00", datetime(2025, 1, 20, 22, 7, 57, 390021, tzinfo=UTC)),
        ("2023-05-16T22:50:18.31+02:00", datetime(2023, 5, 16, 20, 50, 18, 310000, tzinfo=UTC)),
        ("2023-05-16T15:20:18-05:30", datetime(2023, 5, 16, 20, 50, 18, tzinfo=UTC)),
        ("2023-05-16T20:50:18Z", datetime(2023, 5, 16, 20, 50, 18, tzinfo=UTC)),
    ],
)
def test_timestamps_with_any_fraction_and_offset_become_utc(
    stamp, expected, write_json, dce_message
):
    path = write_json([dce_message("1", timestamp=stamp)])
    assert read_export(path)["timestamp"][0].as_py() == expected


def test_all_timestamp_forms_in_one_file_parse_together(write_json, dce_message):
    stamps = ["2023-05-16T20:50:18+00:00", "2023-05-16T20:50:19.3121234-07:00", "2023-05-16T20:51Z"]
    path = write_json([dce_message(str(i), timestamp=s) for i, s in enumerate(stamps)])
    got = read_export(path)["timestamp"].to_pylist()
    assert got[1] == datetime(2023, 5, 17, 3, 50, 19, 312123, tzinfo=UTC)


@pytest.mark.parametrize(
    ("message_type", "extra", "kind"),
    [
        ("Default", {}, "message"),
        ("Reply", {"reference": {"messageId": "5", "channelId": "900", "guildId": "1"}}, "reply"),
        ("19", {"reference": {"messageId": "5", "channelId": "900", "guildId": None}}, "reply"),
        ("20", {}, "command"),
        ("Default", {"interaction": {"id": "9", "name": "ask", "user": {"id": "1"}}}, "command"),
        ("8", {}, "other"),  # server boost
        ("21", {}, "other"),  # thread starter
        ("46", {}, "other"),  # poll result
        ("SomethingNew", {}, "other"),
        ("ChannelPinnedMessage", {"reference": {"messageId": "5"}}, "system"),
        ("RecipientAdd", {}, "system"),
        ("RecipientRemove", {}, "system"),
        ("Default", {"reference": {"type": "Forward", "messageId": "5"}}, "forward"),
        ("Reply", {"reference": {"type": "Default", "messageId": "5"}}, "reply"),
    ],
)
def test_message_types_map_to_kinds(message_type, extra, kind, write_json, dce_message):
    path = write_json([dce_message("7", "x", type=message_type, **extra)])
    row = read_export(path).to_pylist()[0]
    assert row["kind"] == kind
    assert row["reply_to_id"] == ("5" if kind == "reply" else None)


def test_minimal_2_18_message_and_unknown_keys_are_tolerated(write_json, check_file_table):
    old = {
        "id": "10",
        "type": "Default",
        "timestamp": "2020-02-01T10:00:00.5+00:00",
        "timestampEdited": None,
        "isPinned": False,
        "content": "from 2020",
        "author": {"id": "1", "name": "old", "discriminator": "1234", "isBot": False},
        "attachments": [],
        "embeds": [],
        "reactions": [],
    }
    future = {
        "id": "11",
        "type": "Default",
        "timestamp": "2026-02-01T10:00:00+00:00",
        "content": "from 2026",
        "author": {"id": "2", "name": "new", "nickname": None, "isBot": None, "badge": {"x": [1]}},
        "attachments": None,
        "reference": None,
        "forwardedMessage": {"content": "quoted", "attachments": []},
        "somethingAdded2027": [{"deep": {"er": [1, 2, {"a": None}]}}],
    }
    table = check_file_table(read_export(write_json([old, future])))
    assert table["content"].to_pylist() == ["from 2020", "from 2026"]
    assert table["author_name"].to_pylist() == ["old", "new"]
    assert table["is_bot"].to_pylist() == [False, False]
    assert table["has_attachments"].to_pylist() == [False, False]


def test_null_values_and_missing_pieces_get_defaults(write_json, dce_message, check_file_table):
    no_author = dce_message("20", None)
    no_author["author"] = None
    no_id = dce_message(None, "no id here")
    no_stamp = dce_message("1060927462046978058", "stamp from the snowflake", timestamp=None)
    numeric = dce_message("22", "ints", type=19)
    numeric["id"] = 22
    numeric["author"]["id"] = 333
    table = check_file_table(read_export(write_json([no_author, no_id, no_stamp, numeric])))
    got = table.to_pylist()
    assert (got[0]["author_id"], got[0]["author_name"], got[0]["content"]) == (
        "unknown",
        "Unknown",
        "",
    )
    assert got[1]["message_id"].startswith("m-")
    # (id >> 22) + Discord epoch = 2023-01-06T14:26:58.031Z, the thread fixture's first message.
    assert got[2]["timestamp"] == datetime(2023, 1, 6, 14, 26, 58, 31000, tzinfo=UTC)
    assert (got[3]["message_id"], got[3]["author_id"], got[3]["kind"]) == ("22", "333", "reply")


def test_unreadable_timestamp_without_snowflake_names_the_message(write_json, dce_message):
    path = write_json([dce_message("abc", timestamp="yesterday")])
    with pytest.raises(ExportError, match="message abc has no readable timestamp") as error:
        read_export(path)
    assert str(path) in str(error.value)


def test_attachment_kinds_from_names_urls_and_windows_paths(write_json, dce_message):
    def attached(name, url):
        return [{"id": "1", "url": url, "fileName": name, "fileSizeBytes": 10}]

    messages = [
        dce_message("1", attachments=attached("a.JPG", "https://cdn.discordapp.com/a.JPG?ex=1")),
        dce_message("2", attachments=attached("clip.webm", "x")),
        dce_message("3", attachments=attached("voice-message.ogg", "x")),
        dce_message("4", attachments=attached("notes.pdf", "x")),
        dce_message("5", attachments=attached(None, "G - general [1].json_Files\\pic-1A2B3.png")),
        dce_message("6", attachments=attached("README", "x")),
        dce_message("7"),
    ]
    table = read_export(write_json(messages))
    assert table["attachment_kind"].to_pylist() == [
        "image",
        "video",
        "audio",
        "file",
        "image",
        "file",
        None,
    ]
    assert table["has_attachments"].to_pylist() == [True] * 6 + [False]


def test_messages_empty_gives_zero_typed_rows(write_json, check_file_table):
    table = check_file_table(read_export(write_json([])))
    assert table.num_rows == 0


def test_crlf_json_from_windows(write_json, dce_message):
    path = write_json([dce_message("1", "line one\nline two")], newline="\r\n")
    assert b"\r\n" in path.read_bytes()
    assert read_export(path)["content"].to_pylist() == ["line one\nline two"]


def test_utf8_bom_and_raw_non_ascii(tmp_path, dce_message):
    document = {
        "channel": {"id": "5", "name": "図月"},
        "messages": [dce_message("1", "図月 ok \u3000 ✓")],
    }
    path = tmp_path / "raw.json"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(document, ensure_ascii=False).encode("utf-8"))
    table = read_export(path)
    assert table["content"].to_pylist() == ["図月 ok \u3000 ✓"]
    assert table["channel_name"].to_pylist() == ["図月"]


# --- msgspec edge cases -----------------------------------------------------------------------


def test_lone_surrogates_become_replacement_characters(write_json, dce_message):
    path = write_json(
        [
            dce_message("1", "placeholder-1"),
            dce_message("2", "placeholder-2"),
            dce_message("3", "pair stays \U0001f976"),
        ]
    )
    raw = path.read_text(encoding="utf-8")
    raw = raw.replace("placeholder-1", "high \\ud800 alone").replace(
        "placeholder-2", "low \\udc00\\udc01 end \\\\ud800 is text"
    )
    path.write_text(raw, encoding="utf-8")
    assert "\\ud83e\\udd76" in raw  # the emoji really is a surrogate pair in the file
    contents = read_export(path)["content"].to_pylist()
    assert contents == [
        "high \ufffd alone",
        "low \ufffd\ufffd end \\ud800 is text",
        "pair stays \U0001f976",
    ]


def test_one_megabyte_message(write_json, dce_message, check_file_table):
    big = "long line of text. " * 55_000  # ~1 MB
    table = check_file_table(read_export(write_json([dce_message("1", big), dce_message("2")])))
    assert table["content"][0].as_py() == big
    assert table.num_rows == 2


def test_deep_nesting_inside_a_message_is_an_export_error(write_json, dce_message):
    path = write_json([dce_message("1", "PLACEHOLDER")])
    depth = 100_000
    raw = path.read_text(encoding="utf-8").replace('"PLACEHOLDER"', "[" * depth + "]" * depth)
    path.write_text(raw, encoding="utf-8")
    with pytest.raises(ExportError) as error:
        read_export(path)
    assert str(path) in str(error.value)


def test_deep_nesting_in_an_unknown_key_is_an_export_error(write_json, dce_message):
    path = write_json([dce_message("1", "ok", embeds="PLACEHOLDER")])
    depth = 100_000
    raw = path.read_text(encoding="utf-8").replace('"PLACEHOLDER"', "[" * depth + "]" * depth)
    path.write_text(raw, encoding="utf-8")
    with pytest.raises(ExportError, match="nested too deeply") as error:
        read_export(path)
    assert str(path) in str(error.value)


def test_truncated_real_export_reports_the_byte(tmp_path):
    data = GENERAL.read_bytes()
    cut = data.index(b'"content": "Hello') + 12
    path = tmp_path / "cut.json"
    path.write_bytes(data[:cut])
    with pytest.raises(ExportError, match=rf"truncated or invalid JSON at byte {cut}\b") as error:
        read_export(path)
    assert str(error.value).startswith(f"{path}: ")
    assert "\n" not in str(error.value)


def test_malformed_json_reports_the_byte(tmp_path, dce_message):
    text = json.dumps({"channel": {"id": "1"}, "messages": [dce_message("1")]})
    bad = text.replace('"content": "hi"', '"content": "hi",,')
    path = tmp_path / "bad.json"
    path.write_text(bad, encoding="utf-8")
    with pytest.raises(ExportError, match=r"truncated or invalid JSON at byte \d+") as error:
        read_export(path)
    offset = int(str(error.value).split("at byte ")[1].split()[0])
    assert abs(offset - bad.index(",,")) <= 2


def test_wrong_value_type_names_the_key(tmp_path, dce_message):
    message = dce_message("1")
    message["author"]["isBot"] = "yes"
    path = tmp_path / "typed.json"
    path.write_text(json.dumps({"channel": {"id": "1"}, "messages": [message]}), encoding="utf-8")
    with pytest.raises(ExportError, match=r"isBot") as error:
        read_export(path)
    assert str(path) in str(error.value)


@pytest.mark.parametrize("padding", [0, 100_000], ids=["in-head", "past-head"])
def test_invalid_utf8_inside_json_reports_the_offset(padding, tmp_path, dce_message):
    content = "x" * padding + "caf@"
    text = json.dumps({"channel": {"id": "1"}, "messages": [dce_message("1", content)]})
    data = text.encode("utf-8").replace(b"caf@", b"caf\xe9")
    offset = data.index(b"caf\xe9") + 3
    path = tmp_path / "latin.json"
    path.write_bytes(data)
    with pytest.raises(ExportError, match=rf"not UTF-8 .*byte offset {offset}\b") as error:
        read_export(path)
    assert str(path) in str(error.value)


@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        ("latin1_then_cut", r"not UTF-8 .*byte offset {latin1}\b"),
        ("syntax_then_latin1", r"truncated or invalid JSON at byte \d+ of \d+ \(JSON is malformed"),
    ],
)
def test_the_first_problem_in_the_file_is_the_one_reported(damage, expected, tmp_path, dce_message):
    """Whatever msgspec says (0.22: UnicodeDecodeError, 0.23: a DecodeError without a
    position), the bytes decide: the earlier of a bad byte and a JSON error is reported."""
    # Past the 64 KiB head that format detection decodes (it reports a bad byte there itself).
    messages = [dce_message("1", "x" * 100_000 + "caf@"), dce_message("2", "late")]
    data = json.dumps({"channel": {"id": "1"}, "messages": messages}).encode()
    data = data.replace(b"caf@", b"caf\xe9")
    if damage == "latin1_then_cut":
        data = data[: data.index(b"late")]  # an interrupted export that was Latin-1 already
    else:
        data = data.replace(b'"content": "x', b'"content": ]"x', 1)
    path = tmp_path / "damaged.json"
    path.write_bytes(data)
    pattern = expected.format(latin1=data.index(b"\xe9"))
    with pytest.raises(ExportError, match=pattern):
        read_export(path)
