"""Zip archives read where they lie: WhatsApp, DCE and folder zips, and hostile archives.

Archives are built here the way the apps write them (WhatsApp iOS: ``WhatsApp Chat - X.zip``
holding ``_chat.txt`` and media; Android: ``WhatsApp Chat with X.zip`` holding ``WhatsApp Chat
with X.txt`` and media). Hostile ones are built with zipfile and, where zipfile refuses to write
the trick (encryption flags, lying sizes, overlapping entries), by patching the few bytes of the
central directory that carry it.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import struct
import tempfile
import zipfile
from pathlib import Path

import pyarrow as pa
import pytest

from echo_pipeline.exports import (
    ExportError,
    detect_format,
    discover_export_files,
    inspect_export,
    read_export,
    read_exports,
    require_export_files,
)
from echo_pipeline.exports.archive import (
    DEFAULT_LIMITS,
    ArchiveLimits,
    ArchiveMember,
    export_size,
    open_archive,
    unsafe_name,
)
from echo_pipeline.infra.storage import file_sha256
from echo_pipeline.operations.cli import EXIT_BAD_INPUT, main

LRM = "\u200e"
NNBSP = "\u202f"

IOS_CHAT = (
    f"[12/01/2023, 10:00:00{NNBSP}PM] Bob: {LRM}Messages and calls are end-to-end encrypted.\n"
    f"[13/01/2023, 9:15:42{NNBSP}AM] Alice: Morning!\nHow are you?\n"
    f"{LRM}[13/01/2023, 9:16:03{NNBSP}AM] Bob: {LRM}<attached: 00000003-PHOTO-2023-01-13.jpg>\n"
    f"[13/01/2023, 9:17:10{NNBSP}AM] Bob: Fine thanks\n"
    f"{LRM}[13/01/2023, 9:19:00{NNBSP}AM] Alice: {LRM}<attached: 00000005-AUDIO-2023-01-13.opus>\n"
    f"[13/01/2023, 9:20:00{NNBSP}AM] Alice: see you\n"
)
IOS_MEDIA = {
    "00000003-PHOTO-2023-01-13.jpg": b"\xff\xd8\xff\xe0" + bytes(range(256)) * 8,
    "00000005-AUDIO-2023-01-13.opus": b"OggS" + bytes(range(256)) * 4,
}

ANDROID_CHAT = (
    "1/12/23, 10:00 PM - Messages and calls are end-to-end encrypted. Tap to learn more.\n"
    "1/13/23, 9:15 AM - Alice: Morning!\n"
    "1/13/23, 9:16 AM - Bob: IMG-20230113-WA0001.jpg (file attached)\n"
    "nice view\n"
    "1/13/23, 9:17 AM - Bob: PTT-20230113-WA0002.opus (file attached)\n"
    "1/13/23, 9:18 AM - Alice: ok\n"
)
ANDROID_MEDIA = {
    "IMG-20230113-WA0001.jpg": b"\xff\xd8\xff\xe0jpeg",
    "PTT-20230113-WA0002.opus": b"OggSopus",
}

WHATSAPP = {
    # archive name, the chat's member name, chat text, media
    "ios": ("WhatsApp Chat - Bob.zip", "_chat.txt", IOS_CHAT, IOS_MEDIA),
    "android": (
        "WhatsApp Chat with Bob.zip",
        "WhatsApp Chat with Bob.txt",
        ANDROID_CHAT,
        ANDROID_MEDIA,
    ),
}


def write_zip(path: Path, members: dict[str, str | bytes], **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", kwargs.pop("compression", zipfile.ZIP_DEFLATED)) as archive:
        for name, data in members.items():
            archive.writestr(name, data, **kwargs)
    return path


def without_source(table: pa.Table) -> pa.Table:
    return table.drop_columns(["source_file"])


def dce_export(channel_id: str, name: str, texts: list[str], dce_message) -> bytes:
    messages = [
        dce_message(f"{channel_id}{i}", text, timestamp=f"2023-01-06T14:0{i}:00+00:00")
        for i, text in enumerate(texts)
    ]
    document = {"guild": {"id": "1", "name": "G"}, "channel": {"id": channel_id, "name": name}}
    return json.dumps({**document, "messages": messages}).encode()


# --- exports read in place --------------------------------------------------------------------


@pytest.mark.parametrize("phone", sorted(WHATSAPP))
def test_whatsapp_zip_reads_like_its_extracted_folder(tmp_path, phone, check_file_table):
    name, chat_name, chat, media = WHATSAPP[phone]
    archive = write_zip(tmp_path / name, {chat_name: chat, **media})
    folder = tmp_path / "extracted" / name.removesuffix(".zip")
    with zipfile.ZipFile(archive) as opened:
        opened.extractall(folder)

    (member,) = require_export_files(archive)
    assert isinstance(member, zipfile.Path) and member.name == chat_name
    assert detect_format(member) == "whatsapp"
    from_zip = check_file_table(read_export(member))
    from_folder = read_exports(folder)

    assert from_zip.num_rows == {"ios": 6, "android": 5}[phone]
    assert without_source(from_zip).equals(without_source(from_folder))
    assert set(from_zip["channel_name"].to_pylist()) == {"Bob"}
    assert set(from_zip["source_file"].to_pylist()) == {f"{archive}/{chat_name}"}
    assert from_zip["has_attachments"].to_pylist().count(True) == 2
    assert inspect_export(member)["channel"] == "Bob"


def test_zip_of_dce_json_exports_skips_media_hidden_and_mac_entries(
    tmp_path, dce_message, check_table
):
    general = dce_export("900", "general", ["hi", "hello"], dce_message)
    random = dce_export("901", "random", ["yo"], dce_message)
    archive = write_zip(
        tmp_path / "discord.zip",
        {
            "exports/G - general [900].json": general,
            "exports/G - random [901].json": random,
            "exports/G - general [900].json_Files/cat.png": b"\x89PNG",
            "exports/G - general [900].json_Files/notes.txt": "not an export",
            "exports/.hidden.json": "{}",
            "__MACOSX/exports/._G - general [900].json": b"\x00\x05\x16\x07",
            ".DS_Store": b"\x00\x00\x00\x01Bud1",
            "exports/readme.md": "# exports",
            "exports/photo.jpg": b"\xff\xd8",
            "exports/empty/": b"",
        },
    )
    members = discover_export_files(archive)
    assert [m.at for m in members] == [
        "exports/G - general [900].json",
        "exports/G - random [901].json",
    ]
    assert all(isinstance(m, ArchiveMember) for m in members)

    table = check_table(read_exports(archive))
    folder = tmp_path / "plain"
    folder.mkdir()
    (folder / "G - general [900].json").write_bytes(general)
    (folder / "G - random [901].json").write_bytes(random)
    assert without_source(table).equals(without_source(read_exports(folder)))
    assert table["content"].to_pylist() == ["hi", "hello", "yo"]
    assert read_export(members[0])["source_file"][0].as_py() == (
        f"{archive}/exports/G - general [900].json"
    )


def test_folder_with_zips_and_plain_files_reads_them_all(tmp_path, dce_message):
    folder = tmp_path / "downloads"
    write_zip(folder / "WhatsApp Chat - Bob.zip", {"_chat.txt": IOS_CHAT, **IOS_MEDIA})
    # Meta and Slack split big downloads into several zips side by side: each is read.
    write_zip(
        folder / "part-1.zip",
        {"a/G - general [900].json": dce_export("900", "general", ["one"], dce_message)},
    )
    write_zip(
        folder / "part-2.zip",
        {"b/G - random [901].json": dce_export("901", "random", ["two"], dce_message)},
    )
    (folder / "G - plain [902].json").write_bytes(
        dce_export("902", "plain", ["three"], dce_message)
    )
    (folder / "holiday.jpg").write_bytes(b"\xff\xd8")
    write_zip(folder / "report.docx", {"word/document.xml": "<w/>"})  # a zip, but a document

    files = discover_export_files(folder)
    assert sorted(str(f).removeprefix(f"{folder}/") for f in files) == [
        "G - plain [902].json",
        "WhatsApp Chat - Bob.zip/_chat.txt",
        "part-1.zip/a/G - general [900].json",
        "part-2.zip/b/G - random [901].json",
    ]
    table = read_exports(folder)
    assert set(table["channel_name"].to_pylist()) == {"Bob", "general", "random", "plain"}
    # A member is named as archive/member, and that name finds it again (the ingest manifest).
    again = read_exports([str(f) for f in files])
    assert again.equals(table)


def test_a_zip_with_any_name_is_opened_and_a_zip_beside_its_folder_adds_nothing(tmp_path):
    renamed = write_zip(tmp_path / "chat-backup", {"_chat.txt": IOS_CHAT})
    (member,) = discover_export_files(renamed)
    assert str(member) == f"{renamed}/_chat.txt"
    # The archive and its extracted copy hold the same messages: read once.
    folder = tmp_path / "both"
    write_zip(folder / "WhatsApp Chat - Bob.zip", {"_chat.txt": IOS_CHAT})
    (folder / "WhatsApp Chat - Bob").mkdir()
    (folder / "WhatsApp Chat - Bob" / "_chat.txt").write_text(IOS_CHAT, encoding="utf-8")
    assert read_exports(folder).num_rows == 6


def test_a_member_named_that_is_not_there(tmp_path):
    archive = write_zip(tmp_path / "WhatsApp Chat - Bob.zip", {"_chat.txt": IOS_CHAT})
    with pytest.raises(ExportError, match="no such member in the archive") as error:
        discover_export_files(str(archive / "missing.txt"))
    assert str(archive) in str(error.value)


def test_nested_zips_are_read_one_level_only(tmp_path):
    inner = write_zip(tmp_path / "inner.zip", {"_chat.txt": IOS_CHAT}).read_bytes()
    beside = write_zip(
        tmp_path / "WhatsApp Chat - Bob.zip", {"_chat.txt": IOS_CHAT, "old/inner.zip": inner}
    )
    assert [m.at for m in discover_export_files(beside)] == ["_chat.txt"]
    only = write_zip(tmp_path / "outer.zip", {"inner.zip": inner})
    with pytest.raises(
        ExportError, match=r"holds only other zip archives \(inner.zip\).*one level"
    ):
        discover_export_files(only)


def test_member_hash_is_its_content_whatever_the_archive(tmp_path):
    first = write_zip(tmp_path / "a" / "chat.zip", {"_chat.txt": IOS_CHAT})
    second = write_zip(
        tmp_path / "b" / "chat.zip",
        {"media.jpg": b"\xff\xd8", "_chat.txt": IOS_CHAT},
        compression=zipfile.ZIP_STORED,
    )
    (one,) = discover_export_files(first)
    (two,) = discover_export_files(second)
    expected = hashlib.sha256(IOS_CHAT.encode()).hexdigest()
    assert file_sha256(one) == file_sha256(two) == expected
    assert export_size(one) == len(IOS_CHAT.encode())
    assert one.read_text() == two.read_bytes().decode() == IOS_CHAT


def test_reading_an_archive_writes_nothing_to_disk(tmp_path, monkeypatch, dce_message):
    scratch = tmp_path / "tmpdir"
    scratch.mkdir()
    monkeypatch.setenv("TMPDIR", str(scratch))
    monkeypatch.setattr(tempfile, "tempdir", None)  # so tempfile looks at TMPDIR again
    folder = tmp_path / "exports"
    write_zip(folder / "WhatsApp Chat - Bob.zip", {"_chat.txt": IOS_CHAT, **IOS_MEDIA})
    write_zip(
        folder / "d.zip", {"G - general [900].json": dce_export("900", "g", ["x"], dce_message)}
    )

    def listing() -> list[tuple[str, int]]:
        return sorted((str(p), p.stat().st_size) for p in tmp_path.rglob("*"))

    before = listing()
    assert read_exports(folder).num_rows == 7
    for member in discover_export_files(folder):
        inspect_export(member)
        file_sha256(member)
    assert listing() == before
    assert list(scratch.iterdir()) == []


# --- hostile archives -------------------------------------------------------------------------


def patch_central_directory(path: Path, member: str, **fields: int) -> None:
    """Rewrite fields of one member's central directory entry (and its local header)."""
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo(member)
    name = info.filename.encode()
    central = data.index(b"PK\x01\x02")
    while data[central + 46 : central + 46 + len(name)] != name:
        central = data.index(b"PK\x01\x02", central + 4)
    local = info.header_offset
    offsets = {  # field: (offset in the central entry, offset in the local header, format)
        "flag_bits": (8, 6, "<H"),
        "file_size": (24, 22, "<I"),
        "header_offset": (42, None, "<I"),
    }
    for field, value in fields.items():
        in_central, in_local, fmt = offsets[field]
        struct.pack_into(fmt, data, central + in_central, value)
        if in_local is not None:
            struct.pack_into(fmt, data, local + in_local, value)
    path.write_bytes(bytes(data))


def assert_names_archive_and_member(error: ExportError, archive: Path, member: str) -> None:
    message = str(error)
    assert "\n" not in message and message.startswith(f"{archive}: ")
    assert member in message


@pytest.mark.parametrize(
    "name", ["../x.txt", "/etc/x.txt", "C:\\x.txt", "a/../../x.txt", "..\\..\\x.txt", "D:x.txt"]
)
def test_member_names_that_escape_are_refused(tmp_path, name):
    archive = write_zip(tmp_path / "evil.zip", {"_chat.txt": IOS_CHAT, name: "x"})
    with pytest.raises(ExportError, match="unsafe name") as error:
        discover_export_files(archive)
    assert_names_archive_and_member(error.value, archive, repr(name))


def test_unsafe_name_rules():
    assert unsafe_name("WhatsApp Chat - Bob/_chat.txt") is None
    assert unsafe_name("a..b/..c.txt") is None  # dots inside a name are fine
    assert unsafe_name("a/./b.txt") is None
    assert unsafe_name("\\\\server\\share\\x") == "absolute path"


def test_default_ratio_rule_refuses_a_zip_bomb(tmp_path):
    zeros = bytes(4 * DEFAULT_LIMITS.ratio_min_bytes)  # 4 MiB of zeros: ~4 KiB deflated
    archive = write_zip(tmp_path / "bomb.zip", {"_chat.txt": IOS_CHAT, "big.txt": zeros})
    with pytest.raises(ExportError, match=r"expands \d+x .*zip bomb") as error:
        discover_export_files(archive)
    assert_names_archive_and_member(error.value, archive, "'big.txt'")
    # The same ratio below ratio_min_bytes is a small, repetitive file: fine.
    small = write_zip(tmp_path / "small.zip", {"_chat.txt": IOS_CHAT, "x.txt": bytes(1000)})
    assert len(discover_export_files(small)) == 2


def test_configured_limits_refuse_large_members_and_archives(tmp_path):
    noise = os.urandom(300_000)  # does not compress: only the size rules can refuse it
    archive = write_zip(
        tmp_path / "big.zip", {"_chat.txt": IOS_CHAT, "a.mp4": noise, "b.mp4": noise}
    )
    assert len(discover_export_files(archive)) == 1
    with pytest.raises(ExportError, match=r"'a.mp4' declares 293.0 KiB uncompressed, more than"):
        discover_export_files(archive, limits=ArchiveLimits(max_member_bytes=200_000))
    with pytest.raises(ExportError, match=r"'b.mp4' brings the archive's declared size past"):
        require_export_files(archive, limits=ArchiveLimits(max_total_bytes=500_000))
    with pytest.raises(ExportError, match="holds 3 entries, more than the 2 allowed"):
        open_archive(archive, ArchiveLimits(max_members=2))
    strict = ArchiveLimits(max_ratio=2.0, ratio_min_bytes=1000)
    with pytest.raises(ExportError, match=r"'_chat.txt' expands"):
        discover_export_files(
            write_zip(tmp_path / "text.zip", {"_chat.txt": IOS_CHAT * 20}), limits=strict
        )


def test_a_member_that_lies_about_its_size_fails_at_its_declared_end(tmp_path):
    archive = write_zip(tmp_path / "liar.zip", {"_chat.txt": IOS_CHAT + "x" * 5_000_000})
    patch_central_directory(archive, "_chat.txt", file_size=len(IOS_CHAT))
    (member,) = discover_export_files(archive)  # the declared sizes pass every rule
    # zipfile stops the stream at the declared size, then the CRC of what it read is wrong.
    with pytest.raises(ExportError, match=r"damaged archive member \(Bad CRC-32") as error:
        member.read_bytes()
    assert_names_archive_and_member(error.value, archive / "_chat.txt", "Bad CRC-32")
    with pytest.raises(ExportError, match="CRC"):
        read_exports(archive)


def test_symlink_member_is_refused(tmp_path):
    archive = tmp_path / "links.zip"
    with zipfile.ZipFile(archive, "w") as opened:
        opened.writestr("_chat.txt", IOS_CHAT)
        link = zipfile.ZipInfo("passwd.txt")
        link.create_system = 3
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        opened.writestr(link, "/etc/passwd")
    with pytest.raises(ExportError, match=r"'passwd.txt' is a symbolic link"):
        discover_export_files(archive)


def test_encrypted_member_is_refused(tmp_path):
    archive = write_zip(tmp_path / "locked.zip", {"_chat.txt": IOS_CHAT})
    patch_central_directory(archive, "_chat.txt", flag_bits=0x1)
    with pytest.raises(ExportError, match=r"'_chat.txt' is encrypted; unzip the archive with its"):
        discover_export_files(archive)


def test_duplicate_overlapping_and_bzip2_members_are_refused(tmp_path):
    twice = tmp_path / "twice.zip"
    with pytest.warns(UserWarning, match="Duplicate name"), zipfile.ZipFile(twice, "w") as opened:
        opened.writestr("_chat.txt", IOS_CHAT)
        opened.writestr("_chat.txt", "1/1/23, 1:00 AM - Eve: replaced")
    with pytest.raises(ExportError, match=r"'_chat.txt' appears twice"):
        discover_export_files(twice)

    overlap = write_zip(tmp_path / "overlap.zip", {"a.txt": IOS_CHAT, "b.txt": IOS_CHAT})
    patch_central_directory(overlap, "b.txt", header_offset=0)
    with pytest.raises(ExportError, match=r"'b.txt' overlaps the data of 'a.txt'"):
        discover_export_files(overlap)

    bzip = write_zip(tmp_path / "bz.zip", {"_chat.txt": IOS_CHAT}, compression=zipfile.ZIP_BZIP2)
    with pytest.raises(ExportError, match=r"compression method 12 .*only stored and deflate"):
        discover_export_files(bzip)


def test_truncated_archive(tmp_path):
    whole = write_zip(tmp_path / "whole.zip", {"_chat.txt": IOS_CHAT, **IOS_MEDIA}).read_bytes()
    cut = tmp_path / "WhatsApp Chat - Bob.zip"
    cut.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(ExportError, match=r"not a readable zip archive .*truncated or damaged"):
        discover_export_files(tmp_path)
    with pytest.raises(ExportError) as error:
        discover_export_files(cut)
    assert str(error.value).startswith(f"{cut}: ")


def test_damaged_member_data_is_an_export_error(tmp_path):
    archive = write_zip(tmp_path / "chat.zip", {"_chat.txt": IOS_CHAT * 50})
    data = bytearray(archive.read_bytes())
    start = 30 + len("_chat.txt")  # the first member's data follows its local header
    data[start + 20 : start + 60] = bytes(40)
    archive.write_bytes(bytes(data))
    with pytest.raises(ExportError) as error:
        read_exports(archive)
    assert_names_archive_and_member(error.value, archive / "_chat.txt", "damaged archive member")


# --- the CLI ----------------------------------------------------------------------------------


@pytest.mark.parametrize("command", [["inspect"], ["pairs", "--me", "Bob"]])
def test_cli_exits_2_with_one_line_naming_archive_and_member(tmp_path, capsys, command):
    archive = write_zip(tmp_path / "evil.zip", {"_chat.txt": IOS_CHAT, "../../x.txt": "x"})
    assert main([command[0], str(archive), *command[1:]]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(archive) in err[0] and "'../../x.txt'" in err[0]


def test_cli_inspects_and_pairs_a_whatsapp_zip(tmp_path, capsys):
    archive = write_zip(
        tmp_path / "WhatsApp Chat with Bob.zip",
        {"WhatsApp Chat with Bob.txt": ANDROID_CHAT, **ANDROID_MEDIA},
    )
    assert main(["inspect", str(archive), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out.splitlines()[0])
    assert summary["path"] == f"{archive}/WhatsApp Chat with Bob.txt"
    assert summary["format"] == "whatsapp" and summary["channel"] == "Bob"
    assert main(["pairs", str(archive), "--me", "Bob"]) == 0
    assert "pairs    1" in capsys.readouterr().out


def test_partitions_inside_an_archive_keep_part_order(tmp_path, dce_message):
    parts = {
        f"G - general [900] [part {n}].json": dce_export("900", "general", [f"p{n}"], dce_message)
        for n in (10, 2, 1)
    }
    members = discover_export_files(write_zip(tmp_path / "parts.zip", parts))
    assert [m.name for m in members] == [
        "G - general [900] [part 1].json",
        "G - general [900] [part 2].json",
        "G - general [900] [part 10].json",
    ]


def test_telegram_and_meta_downloads_read_from_their_zips(tmp_path):
    telegram = {
        "name": "Bob",
        "type": "personal_chat",
        "id": 42,
        "messages": [
            {
                "id": 1,
                "type": "message",
                "date": "2023-01-02T10:00:00",
                "date_unixtime": "1672653600",
                "from": "Bob",
                "from_id": "user42",
                "text": "hi",
            },
            {
                "id": 2,
                "type": "message",
                "date": "2023-01-02T10:01:00",
                "date_unixtime": "1672653660",
                "from": "Zoe",
                "from_id": "user1",
                "text": "hello",
                "reply_to_message_id": 1,
            },
        ],
    }
    meta = {
        "participants": [{"name": "Bob"}, {"name": "Zoe"}],
        "messages": [  # newest first, as Meta writes them
            {"sender_name": "Zoe", "timestamp_ms": 1672653660000, "content": "hello"},
            {"sender_name": "Bob", "timestamp_ms": 1672653600000, "content": "hi"},
        ],
        "title": "Bob",
        "thread_path": "inbox/bob_1",
    }
    folder = tmp_path / "downloads"
    write_zip(
        folder / "Telegram Desktop.zip",
        {
            "ChatExport_2023-01-02/result.json": json.dumps(telegram),
            "ChatExport_2023-01-02/photos/photo_1.jpg": b"\xff\xd8",
        },
    )
    inbox = "your_activity_across_facebook/messages/inbox/bob_1"
    write_zip(
        folder / "facebook-zoe-2023-01-03-part1.zip",
        {f"{inbox}/message_1.json": json.dumps(meta), f"{inbox}/photos/1.jpg": b"\xff\xd8"},
    )
    files = discover_export_files(folder)
    assert sorted(detect_format(f) for f in files) == ["meta_legacy", "telegram"]
    table = read_exports(folder)
    assert table.num_rows == 4
    assert {c.split(":")[0] for c in table["channel_id"].to_pylist()} == {"meta", "telegram"}
