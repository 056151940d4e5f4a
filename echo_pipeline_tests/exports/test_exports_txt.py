"""DiscordChatExporter PlainText, in the 2.16+ layout and the <=2.15 one."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from echo_pipeline.exports import ExportError, detect_format, read_export

RULE = "=" * 62

# 2.41+ layout: locale "g" dates, two blank lines after a plain message, {...} blocks, footer.
NEW_STYLE = f"""{RULE}
Guild: Direct Messages
Channel: liv!
{RULE}

[3/6/2023 9:07 PM] liv!
hey, are you there?


[3/6/2023 9:07 PM] tyrrrz (pinned)
yes
second line

third paragraph


[3/6/2023 9:09 PM] liv!


{{Attachments}}
https://cdn.discordapp.com/attachments/1/2/photo.jpg


[3/6/2023 9:10 PM] tyrrrz
look at this https://youtu.be/x

{{Embed}}
YouTube
https://youtu.be/x
A video title

{{Reactions}}
👍 (2) 😂


[3/6/2023 9:11 PM] liv!
Pinned a message.


[3/6/2023 9:12 PM] liv!
[3/6/2023 9:12 PM] quoted header-looking line


[3/6/2023 9:13 PM] tyrrrz


{{Forwarded Message}}
someone else's words
Originally sent: 3/5/2023 1:00 PM


{RULE}
Exported 7 message(s)
{RULE}
"""

# <=2.15 layout: Messages/Range preamble, dd-MMM-yy dates, one blank line, no footer.
OLD_STYLE = f"""{RULE}
Guild: Komodo
Channel: talk-general
Topic: General: anything goes
Messages: 3
Range: 04-Sep-19 12:38 AM -> 04-Sep-19 01:01 AM
{RULE}

[04-Sep-19 12:38 AM] KomodoWorld#8282
Or maybe not

[04-Sep-19 12:47 AM] Deleted User#0000
Komodo governance failed hard
and that's a fact.

[04-Sep-19 01:01 PM] rainbro7#4735
Well, this is interesting.
"""


def test_new_style_plaintext(write_text, check_file_table):
    path = write_text("Direct Messages - liv! [1072729769428398080].txt", NEW_STYLE)
    assert detect_format(path) == "discord_txt"
    table = check_file_table(read_export(path))
    got = table.to_pylist()
    assert [r["author_id"] for r in got] == [
        "liv!",
        "tyrrrz",
        "liv!",
        "tyrrrz",
        "liv!",
        "liv!",
        "tyrrrz",
    ]
    assert got[0]["content"] == "hey, are you there?"
    assert got[1]["content"] == "yes\nsecond line\n\nthird paragraph"  # " (pinned)" dropped
    assert got[1]["author_name"] == "tyrrrz"
    assert (got[2]["content"], got[2]["has_attachments"], got[2]["attachment_kind"]) == (
        "",
        True,
        "image",
    )
    assert got[3]["content"] == "look at this https://youtu.be/x"  # embed and reactions stripped
    assert got[3]["has_attachments"] is False
    assert got[4]["kind"] == "system"
    # A header-shaped line right under a header (no blank line before it) is content.
    assert got[5]["content"] == "[3/6/2023 9:12 PM] quoted header-looking line"
    assert (got[6]["kind"], got[6]["content"]) == ("forward", "")
    assert got[0]["timestamp"] == datetime(2023, 3, 6, 21, 7, tzinfo=UTC)
    assert {r["channel_id"] for r in got} == {"1072729769428398080"}
    assert {r["channel_name"] for r in got} == {"liv!"}
    assert table["seq"].to_pylist() == list(range(7))


def test_old_style_plaintext_with_crlf(write_text, check_file_table):
    path = write_text("talk-general.txt", OLD_STYLE.replace("\n", "\r\n"))
    assert detect_format(path) == "discord_txt"
    table = check_file_table(read_export(path))
    assert table["author_name"].to_pylist() == [
        "KomodoWorld#8282",
        "Deleted User#0000",
        "rainbro7#4735",
    ]
    assert table["content"].to_pylist()[1] == "Komodo governance failed hard\nand that's a fact."
    assert table["timestamp"].to_pylist() == [
        datetime(2019, 9, 4, 0, 38, tzinfo=UTC),
        datetime(2019, 9, 4, 0, 47, tzinfo=UTC),
        datetime(2019, 9, 4, 13, 1, tzinfo=UTC),
    ]
    # No [id] in the name: hashed from the preamble, so every part of the export agrees.
    assert table["channel_id"][0].as_py().startswith("c-")
    assert table["channel_name"][0].as_py() == "talk-general"


def test_category_path_and_german_dates(write_text):
    text = (
        f"{RULE}\nGuild: SCP\nChannel: ⬜Light Containment / 💬light-containment\n{RULE}\n\n"
        "[07.09.2023 16:12] anna\nhallo\n\n\n"
        "[07.09.2023 16:13] ben\nJoined the server.\n\n\n"
        f"{RULE}\nExported 2 message(s)\n{RULE}\n"
    )
    table = read_export(write_text("scp.txt", text))
    assert table["channel_name"][0].as_py() == "💬light-containment"
    assert table["timestamp"][0].as_py() == datetime(2023, 9, 7, 16, 12, tzinfo=UTC)
    assert table["kind"].to_pylist() == ["message", "system"]


def test_same_export_twice_gives_the_same_ids(write_text):
    first = read_export(write_text("a/x.txt", NEW_STYLE))
    second = read_export(write_text("b/x.txt", NEW_STYLE))
    assert first["message_id"].equals(second["message_id"])


def test_empty_channel_has_zero_rows(write_text, check_file_table):
    text = f"{RULE}\nGuild: G\nChannel: C\n{RULE}\n\n{RULE}\nExported 0 message(s)\n{RULE}\n"
    assert check_file_table(read_export(write_text("empty.txt", text))).num_rows == 0


def test_preamble_without_end_is_an_error(write_text):
    path = write_text("broken.txt", f"{RULE}\nGuild: G\nChannel: C\n")
    with pytest.raises(ExportError, match="preamble") as error:
        read_export(path)
    assert str(path) in str(error.value)
