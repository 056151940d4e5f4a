"""WhatsApp chat exports from iOS and Android, written the way the phones write them."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from echo_pipeline.exports import ExportError, detect_format, read_export

LRM = "\u200e"  # left-to-right mark: iOS puts it before system and media lines
NNBSP = "\u202f"  # narrow no-break space: newer iOS puts it before AM/PM

IOS = (
    f"[12/01/2023, 10:00:00{NNBSP}PM] Friends: {LRM}Messages and calls are end-to-end encrypted. "
    "No one outside of this chat, not even WhatsApp, can read or listen to them.\n"
    f"{LRM}[12/01/2023, 10:00:05{NNBSP}PM] Friends: {LRM}Alice added Bob\n"
    f"[13/01/2023, 9:15:42{NNBSP}AM] Alice: Morning!\n"
    "How are you?\n"
    "\n"
    "Still here.\n"
    f"{LRM}[13/01/2023, 9:16:03{NNBSP}AM] Bob: {LRM}image omitted\n"
    f"[13/01/2023, 9:17:10{NNBSP}AM] Bob: Fine thanks {LRM}<This message was edited>\n"
    f"[13/01/2023, 9:18:00{NNBSP}AM] Alice: {LRM}This message was deleted.\n"
    f"{LRM}[13/01/2023, 9:19:00{NNBSP}AM] Bob: {LRM}<attached: 00000012-AUDIO-2023-01-13.opus>\n"
    f"[13/01/2023, 9:20:00{NNBSP}PM] Alice: {LRM}report.pdf • {LRM}3 pages {LRM}document omitted\n"
    f"[13/01/2023, 12:05:00{NNBSP}AM] Bob: just after midnight\n"
)

ANDROID_US = (
    "1/12/23, 10:00 PM - Messages and calls are end-to-end encrypted. No one outside of this "
    "chat, not even WhatsApp, can read or listen to them. Tap to learn more.\n"
    '1/12/23, 10:01 PM - Alice created group "Trip: Rome"\n'
    "1/12/23, 10:01 PM - Alice added Bob\n"
    "1/13/23, 9:15 AM - Alice: Morning!\n"
    "Line two\n"
    "\n"
    "Line four after a blank\n"
    "1/13/23, 9:16 AM - Bob: <Media omitted>\n"
    "1/13/23, 9:17 AM - Bob: I added salt <This message was edited>\n"
    "1/13/23, 9:18 AM - Bob: IMG-20230113-WA0001.jpg (file attached)\n"
    "nice view\n"
    "1/13/23, 9:19 AM - Bob left\n"
    "1/13/23, 9:20 AM - Alice: Note: the time: 10:00 - 11:00\n"
)

ANDROID_24H = (
    "12/01/2023, 22:15 - Alice: hi\r\n"
    "12/01/2023, 22:16 - Bob: hello\r\n"
    "over two lines\r\n"
    "05/02/2023, 08:00 - Alice: good morning\n"
)


def test_ios_export(write_text, check_file_table):
    path = write_text("WhatsApp Chat - Friends/_chat.txt", IOS)
    assert detect_format(path) == "whatsapp"
    table = check_file_table(read_export(path))
    got = table.to_pylist()
    assert [r["kind"] for r in got] == [
        "system",
        "system",
        "message",
        "message",
        "message",
        "other",
        "message",
        "message",
        "message",
    ]
    assert got[2]["content"] == "Morning!\nHow are you?\n\nStill here."
    assert got[2]["timestamp"] == datetime(2023, 1, 13, 9, 15, 42, tzinfo=UTC)  # day first
    assert (got[3]["content"], got[3]["has_attachments"], got[3]["attachment_kind"]) == (
        "",
        True,
        "image",
    )
    assert (got[4]["content"], got[4]["edited"]) == ("Fine thanks", True)
    assert got[5]["content"] == ""
    assert (got[6]["attachment_kind"], got[6]["content"]) == ("audio", "")
    assert (got[7]["attachment_kind"], got[7]["content"]) == ("file", "")
    assert got[7]["timestamp"] == datetime(2023, 1, 13, 21, 20, tzinfo=UTC)
    assert got[8]["timestamp"] == datetime(2023, 1, 13, 0, 5, tzinfo=UTC)  # 12 AM is 00
    assert {r["author_name"] for r in got if r["kind"] != "system"} == {"Alice", "Bob"}
    assert not any("\u200e" in r["content"] or "\u200e" in r["author_id"] for r in got)
    assert {r["channel_name"] for r in got} == {"Friends"}  # from the folder of _chat.txt


def test_android_us_export(write_text, check_file_table):
    path = write_text("WhatsApp Chat with Trip.txt", ANDROID_US)
    assert detect_format(path) == "whatsapp"
    table = check_file_table(read_export(path))
    got = table.to_pylist()
    assert [r["kind"] for r in got] == [
        "system",
        "system",  # the quoted name holds ": " yet it is no "Name: text" line
        "system",
        "message",
        "message",
        "message",
        "message",
        "system",
        "message",
    ]
    assert {r["author_id"] for r in got if r["kind"] == "system"} == {"(system)"}
    assert got[3]["content"] == "Morning!\nLine two\n\nLine four after a blank"
    # 1/13/23: the second field is above 12, so this file is month first.
    assert got[3]["timestamp"] == datetime(2023, 1, 13, 9, 15, tzinfo=UTC)
    assert (got[4]["has_attachments"], got[4]["content"]) == (True, "")
    assert (got[5]["content"], got[5]["edited"], got[5]["author_id"]) == (
        "I added salt",
        True,
        "Bob",
    )
    assert (got[6]["attachment_kind"], got[6]["content"]) == ("image", "nice view")
    assert got[8]["content"] == "Note: the time: 10:00 - 11:00"
    assert {r["channel_name"] for r in got} == {"Trip"}


def test_android_24h_day_first_by_default_with_crlf(write_text, check_file_table):
    path = write_text("WhatsApp Chat with Bob.txt", ANDROID_24H)
    table = check_file_table(read_export(path))
    assert table["timestamp"].to_pylist() == [
        datetime(2023, 1, 12, 22, 15, tzinfo=UTC),
        datetime(2023, 1, 12, 22, 16, tzinfo=UTC),
        datetime(2023, 2, 5, 8, 0, tzinfo=UTC),
    ]
    assert table["content"].to_pylist() == ["hi", "hello\nover two lines", "good morning"]


def test_same_chat_exported_twice_gives_the_same_ids(write_text):
    first = read_export(write_text("WhatsApp Chat with Bob.txt", ANDROID_24H))
    again = read_export(
        write_text(
            "later/WhatsApp Chat with Bob.txt", ANDROID_24H + "05/02/2023, 08:01 - Bob: yo\n"
        )
    )
    assert first["message_id"].to_pylist() == again["message_id"].to_pylist()[:3]
    assert first["channel_id"].equals(again["channel_id"].slice(0, 3))


def test_impossible_date_names_the_line(write_text):
    path = write_text(
        "WhatsApp Chat with X.txt", "12/01/2023, 22:15 - A: hi\n31/02/2023, 10:00 - A: no\n"
    )
    with pytest.raises(ExportError, match="line 2: unreadable WhatsApp date") as error:
        read_export(path)
    assert str(path) in str(error.value)
