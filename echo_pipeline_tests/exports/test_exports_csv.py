"""DiscordChatExporter CSV: the 2.15 semicolon file from a real archive, and 2.16+ comma files."""

from __future__ import annotations

import csv
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import pytest

from echo_pipeline.exports import ExportError, detect_format, read_export

DISCORD = Path(__file__).resolve().parent.parent / "fixtures" / "discord"
KOMODO = DISCORD / "gcharang__discord-archive-komodo__talk-general-414.csv"
HEADER = "AuthorID,Author,Date,Content,Attachments,Reactions"


def csv_text(rows: list[tuple[str, ...]], newline: str = "\r\n", header: str = HEADER) -> str:
    """Rows the way DCE writes them: every value quoted, quotes doubled."""
    lines = [header] + [
        ",".join('"' + value.replace('"', '""') + '"' for value in row) for row in rows
    ]
    return newline.join(lines) + newline


def test_real_semicolon_export_from_2_15(check_file_table):
    table = check_file_table(read_export(KOMODO))
    with KOMODO.open(encoding="utf-8", newline="") as handle:
        expected = list(csv.reader(handle, delimiter=";"))[1:]
    assert detect_format(KOMODO) == "discord_csv_legacy"
    assert table.num_rows == 100
    assert table["author_id"].to_pylist() == [r[0] for r in expected]
    assert table["author_name"].to_pylist() == [r[1] for r in expected]
    assert table["content"].to_pylist() == [r[3] for r in expected]
    assert Counter(table["author_id"].to_pylist()).most_common(2) == [
        ("325392897304166400", 26),
        ("347922216429813760", 23),
    ]
    assert set(table["kind"].to_pylist()) == {"message"}
    assert not any(table["has_attachments"].to_pylist())
    # "04-Sep-19 12:38 AM": dd-MMM-yy hh:mm tt, local time taken as UTC, minute precision.
    assert table["timestamp"][0].as_py() == datetime(2019, 9, 4, 0, 38, tzinfo=UTC)
    assert table["timestamp"][-1].as_py() == datetime(2019, 9, 4, 4, 46, tzinfo=UTC)
    # Multi-line content (a blank line inside quotes) survives.
    assert "\n\nI won't say anything" in table["content"][0].as_py()
    # No [id] in the name: a stable hash of the stem; the channel name is the stem.
    assert table["channel_id"][0].as_py().startswith("c-")
    assert table["channel_name"][0].as_py() == KOMODO.stem
    assert read_export(KOMODO)["message_id"].equals(table["message_id"])


def test_comma_export_multiline_quotes_system_and_attachments(write_text, check_file_table):
    rows = [
        ("111", "alice", "2024-01-15T10:30:00.1234567+02:00", 'Hello\r\nworld, "quoted"', "", ""),
        (
            "222",
            "bob#1234",
            "2024-01-15T10:31:00.0000000+02:00",
            "",
            "https://cdn.discordapp.com/attachments/1/2/cat.png,https://cdn.discordapp.com/x/doc.pdf",
            "👍 (2),😂 (1)",
        ),
        ("222", "bob#1234", "2024-01-15T10:32:00.0000000+02:00", "Pinned a message.", "", ""),
        (
            "333",
            "carol",
            "2024-01-15T10:33:00.0000000+02:00",
            "Started a call that lasted 5 minutes.",
            "",
            "",
        ),
        ("333", "carol", "2024-01-15T10:34:00.0000000+02:00", "Joined the server.", "", ""),
        ("333", "carol", "2024-01-15T10:35:00.0000000+02:00", "Added bob to the group.", "", ""),
        (
            "333",
            "carol",
            "2024-01-15T10:36:00.0000000+02:00",
            "Changed the channel name: plans",
            "",
            "",
        ),
        ("111", "alice", "2024-01-15T10:37:00.0000000+02:00", "I pinned a message.", "", ""),
    ]
    path = write_text("Guild - Text - plans [1234567890123].csv", csv_text(rows))
    table = check_file_table(read_export(path))
    got = table.to_pylist()
    assert detect_format(path) == "discord_csv"
    assert got[0]["content"] == 'Hello\nworld, "quoted"'
    assert got[0]["timestamp"] == datetime(2024, 1, 15, 8, 30, 0, 123456, tzinfo=UTC)
    assert (got[1]["has_attachments"], got[1]["attachment_kind"], got[1]["content"]) == (
        True,
        "image",
        "",
    )
    assert [r["kind"] for r in got] == ["message", "message"] + ["system"] * 5 + ["message"]
    assert {r["channel_id"] for r in got} == {"1234567890123"}
    assert {r["channel_name"] for r in got} == {"plans"}
    assert {r["author_name"] for r in got} == {"alice", "bob#1234", "carol"}
    assert not any(r["is_bot"] or r["edited"] or r["reply_to_id"] for r in got)


@pytest.mark.parametrize(
    ("date", "expected"),
    [
        ("2024-01-15T10:30:00.1234567+02:00", datetime(2024, 1, 15, 8, 30, 0, 123456, tzinfo=UTC)),
        ("2024-01-15T10:30:00.0000000+00:00", datetime(2024, 1, 15, 10, 30, tzinfo=UTC)),
        ("9/7/2023 4:12 PM", datetime(2023, 9, 7, 16, 12, tzinfo=UTC)),  # en-US "g", 2.41
        ("9/7/2023 4:12\u202fPM", datetime(2023, 9, 7, 16, 12, tzinfo=UTC)),  # ICU's narrow space
        ("07.09.2023 16:12", datetime(2023, 9, 7, 16, 12, tzinfo=UTC)),  # de-DE "g"
        ("09/07/2023 4:12 PM", datetime(2023, 9, 7, 16, 12, tzinfo=UTC)),  # MM/dd/yyyy h:mm tt
        ("05-Dec-19 12:31 AM", datetime(2019, 12, 5, 0, 31, tzinfo=UTC)),  # dd-MMM-yy, <=2.37
        ("25/12/2023 08:05", datetime(2023, 12, 25, 8, 5, tzinfo=UTC)),  # en-GB "g"
    ],
)
def test_every_dce_date_form(date, expected, write_text):
    path = write_text("dates.csv", csv_text([("1", "a", date, "hi", "", "")]))
    assert read_export(path)["timestamp"][0].as_py() == expected


def test_date_form_is_chosen_for_the_whole_file(write_text):
    # 1/2 alone is ambiguous; 13/2 in the same file is not, so the file is day first.
    dates = ["01/02/2023 10:00", "13/02/2023 10:00"]
    path = write_text(
        "gb.csv", csv_text([("1", "a", d, str(i), "", "") for i, d in enumerate(dates)])
    )
    got = read_export(path)["timestamp"].to_pylist()
    assert got == [datetime(2023, 2, 1, 10, tzinfo=UTC), datetime(2023, 2, 13, 10, tzinfo=UTC)]


def test_unknown_date_names_the_row(write_text):
    rows = [("1", "a", "9/7/2023 4:12 PM", "x", "", ""), ("1", "a", "next tuesday", "y", "", "")]
    path = write_text("baddate.csv", csv_text(rows))
    with pytest.raises(ExportError, match="unrecognised date 'next tuesday' in row 2") as error:
        read_export(path)
    assert str(error.value).startswith(str(path))


def test_legacy_2_14_header_without_author_id_uses_the_name(write_text, check_file_table):
    text = (
        "Author;Date;Content;Attachments;Reactions;\n"
        '"bob#1234";"05-Dec-19 07:48 AM";"Still can use it";"";"👆 (9)";\n'
        '"ann#0001";"05-Dec-19 07:49 AM";"two\nlines";"https://cdn/x.mp4";"";\n'
    )
    path = write_text("old [1 of 1].csv", text)
    table = check_file_table(read_export(path))
    assert detect_format(path) == "discord_csv_legacy"
    assert table["author_id"].to_pylist() == ["bob#1234", "ann#0001"]
    assert table["content"].to_pylist() == ["Still can use it", "two\nlines"]
    assert table["attachment_kind"].to_pylist() == [None, "video"]


def test_utf8_bom_and_mixed_line_endings(write_text, check_file_table):
    text = "\ufeff" + HEADER + "\r\n" + '"1","a","2024-01-15T10:30:00+00:00","x\ry","",""\n'
    text += '"2","b","2024-01-15T10:31:00+00:00","z","",""\r\n\r\n'
    path = write_text("bom.csv", text)
    table = check_file_table(read_export(path))
    assert table["content"].to_pylist() == ["x\ny", "z"]
    assert table["author_id"].to_pylist() == ["1", "2"]


def test_wrong_header_names_the_expected_one(write_text):
    path = write_text("mine.csv", "id,user,time,text\n1,a,2024-01-01,hi\n")
    with pytest.raises(ExportError) as error:
        detect_format(path)
    message = str(error.value)
    assert message.startswith(f"{path}: unexpected CSV header")
    assert HEADER in message


def test_almost_right_header_is_refused(write_text):
    path = write_text("cut.csv", "AuthorID,Author,Date,Content,Attachments\n")
    with pytest.raises(ExportError, match=f"expected `{HEADER}`"):
        read_export(path)


def test_non_utf8_csv_names_the_byte_offset(write_text):
    text = csv_text([("1", "a", "2024-01-15T10:30:00+00:00", "café", "", "")])
    path = write_text("excel.csv", text, encoding="cp1252")
    offset = text.encode("cp1252").index(b"\xe9")
    with pytest.raises(ExportError, match=rf"byte 0xE9 at byte offset {offset}\b") as error:
        read_export(path)
    assert str(error.value).startswith(f"{path}: not UTF-8")


def test_non_utf8_late_in_a_large_csv(write_text):
    rows = [("1", "a", "2024-01-15T10:30:00+00:00", "x" * 100, "", "")] * 1000
    text = csv_text(rows) + '"1","a","2024-01-15T10:30:00+00:00","ol\xe9","",""\r\n'
    path = write_text("late.csv", text, encoding="latin-1")
    offset = text.index("\xe9")  # latin-1: one byte per character
    with pytest.raises(ExportError, match=rf"byte offset {offset}\b"):
        read_export(path)


def test_truncated_csv_mid_quote(write_text):
    text = csv_text([("1", "a", "2024-01-15T10:30:00+00:00", "fine", "", "")])
    path = write_text("cut.csv", text + '"2","b","2024-01-15T10:31:00+00:00","never clo')
    with pytest.raises(ExportError, match="malformed CSV") as error:
        read_export(path)
    assert str(path) in str(error.value)


def test_one_megabyte_message(write_text):
    big = 'a long, "quoted" line\n' * 45_000
    path = write_text("big.csv", csv_text([("1", "a", "2024-01-15T10:30:00+00:00", big, "", "")]))
    assert path.stat().st_size > 1_000_000
    assert read_export(path)["content"].to_pylist() == [big]


def test_header_only_csv_is_zero_rows(write_text, check_file_table):
    path = write_text("empty channel [42].csv", HEADER + "\r\n")
    table = check_file_table(read_export(path))
    assert table.num_rows == 0
