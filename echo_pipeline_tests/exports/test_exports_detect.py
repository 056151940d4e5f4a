"""Format detection, folder discovery and the hostile inputs every reader must refuse cleanly."""

from __future__ import annotations

import ast
import json
import os
import pickle
from pathlib import Path

import pytest

from echo_pipeline.exports import (
    ExportError,
    detect_format,
    discover_export_files,
    inspect_export,
    read_export,
    read_exports,
)

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
DISCORD = FIXTURES / "discord"
HOSTILE = FIXTURES / "hostile"
PACKAGE = Path(__file__).resolve().parents[2] / "echo_pipeline" / "exports"


# --- the error type ---------------------------------------------------------------------------


def test_export_error_is_one_line_and_survives_pickling(tmp_path):
    error = ExportError(tmp_path / "x.json", "bad thing\nhappened;  fix it")
    assert str(error) == f"{tmp_path / 'x.json'}: bad thing happened; fix it"
    assert isinstance(error, ValueError)
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.path, copy.problem, str(copy)) == (error.path, error.problem, str(error))


# --- hostile fixtures -------------------------------------------------------------------------

REFUSED = {
    "truncated_mid_message.json": r"truncated or invalid JSON at byte 1884 of 1884",
    "empty.json": r"empty file \(0 bytes\)",
    "binary_named.json": r"binary file",
    "not_an_export.json": r'not a DiscordChatExporter export \(no "channel"\)',
    "json_array.json": r"JSON array, not a DiscordChatExporter export",
    "wrong_header.csv": r"unexpected CSV header 'id,user,time,text'; expected `AuthorID,Author,",
    "latin1_export.csv": r"not UTF-8 text: byte 0xE9 at byte offset 59\b",
    "dce_html_export.html": r"this is a DiscordChatExporter HTML export; re-export with .*`-f Json`",
}


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_hostile_file_is_refused_with_one_line_naming_it(name):
    path = HOSTILE / name
    for call in (read_export, inspect_export, read_exports):
        with pytest.raises(ExportError, match=REFUSED[name]) as error:
            call(path)
        message = str(error.value)
        assert message.startswith(f"{path}: ")
        assert "\n" not in message
        assert error.value.path == path


def test_lone_surrogate_fixture_reads_with_replacement_character(check_file_table):
    table = check_file_table(read_export(HOSTILE / "lone_surrogate.json"))
    assert table["content"].to_pylist() == ["broken \ufffd emoji"]


# --- detection by content ---------------------------------------------------------------------


def test_detection_ignores_the_extension(tmp_path):
    general = next(DISCORD.glob("*general*.json"))
    komodo = next(DISCORD.glob("*.csv"))
    renamed = [
        (tmp_path / "export.txt", general.read_bytes(), "discord_json"),
        (tmp_path / "export.json", komodo.read_bytes(), "discord_csv_legacy"),
        (tmp_path / "export", b"1/2/23, 9:00 PM - A: hi\n", "whatsapp"),
    ]
    for path, data, expected in renamed:
        path.write_bytes(data)
        assert detect_format(path) == expected


def test_html_without_dce_markers_is_still_refused(tmp_path):
    path = tmp_path / "page.html"
    path.write_text("<html><body><p>hello</p></body></html>")
    with pytest.raises(
        ExportError, match=r"this is an HTML page, not an export \(a failed download"
    ):
        detect_format(path)


def test_non_utf8_text_and_blank_files(tmp_path):
    latin = tmp_path / "notes.txt"
    latin.write_bytes("caf\u00e9".encode("latin-1"))
    with pytest.raises(ExportError, match="not UTF-8 text: byte 0xE9 at byte offset 3"):
        detect_format(latin)
    blank = tmp_path / "blank.json"
    blank.write_text("  \r\n\n")
    with pytest.raises(ExportError, match="blank file"):
        detect_format(blank)


def test_utf16_text_is_named_as_such(tmp_path):
    path = tmp_path / "notepad.csv"
    path.write_bytes("AuthorID,Author,Date,Content,Attachments,Reactions\n".encode("utf-16"))
    with pytest.raises(ExportError, match=r"UTF-16 text .*re-save the file as UTF-8"):
        read_export(path)


def test_unrecognised_text_lists_what_is_supported(tmp_path):
    path = tmp_path / "diary.txt"
    path.write_text("Dear diary,\ntoday I wrote a parser.\n")
    with pytest.raises(ExportError, match=r"unrecognised file .*DiscordChatExporter JSON, CSV"):
        detect_format(path)


def test_json_object_without_messages_is_refused(tmp_path):
    path = tmp_path / "channel.json"
    path.write_text(json.dumps({"guild": {}, "channel": {"id": "1"}}))
    with pytest.raises(ExportError, match=r'no "messages"'):
        read_export(path)


def test_top_level_deep_nesting_is_an_export_error(tmp_path):
    path = tmp_path / "deep.json"
    head = '{"channel": {"id": "1"}, "messages": [], "extra": '
    path.write_text(head + '{"a":' * 100_000 + "1" + "}" * 100_001)
    with pytest.raises(ExportError, match="nested too deeply") as error:
        read_export(path)
    assert str(path) in str(error.value)


def test_directory_given_as_a_file(tmp_path):
    with pytest.raises(ExportError, match="is a directory"):
        detect_format(tmp_path)


# --- discovery --------------------------------------------------------------------------------


def test_missing_path_is_an_export_error(tmp_path):
    missing = tmp_path / "nope" / "export.json"
    with pytest.raises(ExportError, match="no such file or directory") as error:
        discover_export_files([missing])
    assert str(error.value).startswith(str(missing))
    with pytest.raises(ExportError, match="no such file"):
        read_exports(missing)


def test_folder_walk_skips_media_hidden_and_files_folders_and_orders_parts(tmp_path):
    names = [
        "b/chat [part 10].json",
        "b/chat [part 2].json",
        "b/chat.json",
        "a/x.csv",
        "a/x.json_Files/avatar.png.json",
        "a/.hidden.json",
        ".git/config.json",
        "a/photo.JPG",
        "a/voice.opus",
        "a/notes.txt",
    ]
    for name in names:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x")
    found = [p.relative_to(tmp_path).as_posix() for p in discover_export_files([tmp_path])]
    assert found == [
        "a/notes.txt",
        "a/x.csv",
        "b/chat.json",
        "b/chat [part 2].json",
        "b/chat [part 10].json",
    ]
    # A file named explicitly is kept whatever its suffix; duplicates are dropped.
    photo = tmp_path / "a" / "photo.JPG"
    assert discover_export_files([photo, tmp_path / "a" / "x.csv", photo]) == [
        photo,
        tmp_path / "a" / "x.csv",
    ]
    assert discover_export_files(str(photo)) == [photo]


def test_broken_symlink_in_a_folder_is_named(tmp_path):
    (tmp_path / "ok.json").write_text("{}")
    (tmp_path / "gone.json").symlink_to(tmp_path / "deleted-target.json")
    with pytest.raises(ExportError, match="cannot read file") as error:
        discover_export_files([tmp_path])
    assert str(error.value).startswith(str(tmp_path / "gone.json"))


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_unreadable_file_in_a_folder_is_named(tmp_path):
    secret = tmp_path / "secret.json"
    secret.write_text("{}")
    secret.chmod(0)
    try:
        with pytest.raises(ExportError, match="cannot read file") as error:
            discover_export_files([tmp_path])
        assert str(error.value).startswith(str(secret))
    finally:
        secret.chmod(0o644)


def test_empty_folder_reads_as_an_empty_typed_table(tmp_path, check_table):
    table = check_table(read_exports([tmp_path]))
    assert table.num_rows == 0


# --- layering ---------------------------------------------------------------------------------


def test_the_package_imports_no_dagster_and_pandas_only_lazily():
    for module in PACKAGE.glob("*.py"):
        tree = ast.parse(module.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import | ast.ImportFrom):
                names = (
                    [a.name for a in node.names]
                    if isinstance(node, ast.Import)
                    else [node.module or ""]
                )
                assert not any(n.split(".")[0] == "dagster" for n in names), module.name
        top_level = [n for n in tree.body if isinstance(n, ast.Import | ast.ImportFrom)]
        for node in top_level:
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
            )
            assert not any(n.split(".")[0] == "pandas" for n in names), module.name
