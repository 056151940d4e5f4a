"""read_exports over folders: partitions merge, overlapping exports dedupe; inspect_export."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow.compute as pc

from echo_pipeline.exports import discover_export_files, inspect_export, read_export, read_exports

DISCORD = Path(__file__).resolve().parent.parent / "fixtures" / "discord"
GENERAL = DISCORD / (
    "slatinsky__DiscordChatExporter-frontend__Example guild - Text Channels - general "
    "[1012224565567721552].json"
)
KOMODO = DISCORD / "gcharang__discord-archive-komodo__talk-general-414.csv"
BASE = "Example guild - Text Channels - general [1012224565567721552]"


def split_json(source: Path, folder: Path, ranges: list[tuple[int, int]], names: list[str]) -> None:
    """Write slices of a real export as stand-alone documents, each with its own preamble."""
    document = json.loads(source.read_text(encoding="utf-8"))
    folder.mkdir(parents=True, exist_ok=True)
    for (start, stop), name in zip(ranges, names, strict=True):
        part = dict(document, messages=document["messages"][start:stop])
        part["messageCount"] = stop - start
        (folder / name).write_text(json.dumps(part, indent=2), encoding="utf-8")


def split_csv(source: Path, folder: Path, ranges: list[tuple[int, int]], names: list[str]) -> None:
    """Slices of a real CSV (header repeated), cut between records, never inside one."""
    text = source.read_text(encoding="utf-8")
    header, body = text.split("\n", 1)
    records = body.split(';\n"')  # every record ends with `;` and the next opens with `"`
    records = [records[0]] + ['"' + r for r in records[1:]]
    assert len(records) == 100
    folder.mkdir(parents=True, exist_ok=True)
    for (start, stop), name in zip(ranges, names, strict=True):
        chunk = ";\n".join(records[start:stop]).removesuffix(";\n")
        (folder / name).write_text(f"{header}\n{chunk};\n", encoding="utf-8")


def test_json_partitions_merge_back_into_the_whole_channel(tmp_path, check_table):
    names = [f"{BASE}.json", f"{BASE} [part 2].json", f"{BASE} [part 3].json"]
    split_json(GENERAL, tmp_path, [(0, 10), (10, 20), (20, 35)], names)
    merged = check_table(read_exports([tmp_path]))
    whole = read_export(GENERAL)
    assert merged.num_rows == 35
    assert merged["message_id"].to_pylist() == whole["message_id"].to_pylist()
    assert merged["timestamp"].equals(whole["timestamp"])
    assert set(merged["channel_id"].to_pylist()) == {"1012224565567721552"}
    assert merged["seq"].to_pylist()[10] == 0  # seq stays the position within its own file


def test_overlapping_json_exports_dedupe_on_message_id(tmp_path, check_table):
    split_json(
        GENERAL,
        tmp_path,
        [(0, 25), (15, 35), (5, 8)],
        [f"{BASE} (before 2023-01-07).json", f"{BASE} (after 2023-01-06).json", "copy.json"],
    )
    merged = check_table(read_exports([tmp_path]))
    assert merged.num_rows == 35
    assert merged["message_id"].to_pylist() == read_export(GENERAL)["message_id"].to_pylist()


def test_overlapping_csv_exports_dedupe_on_synthetic_ids(tmp_path, check_table):
    split_csv(KOMODO, tmp_path, [(0, 60), (40, 100)], ["talk-general.csv", "talk-general (1).csv"])
    merged = check_table(read_exports([tmp_path]))
    (tmp_path / "whole").mkdir()
    whole = read_export(shutil.copy(KOMODO, tmp_path / "whole" / "talk-general.csv"))
    assert merged.num_rows == 100
    assert merged["message_id"].to_pylist() == whole["message_id"].to_pylist()
    assert merged["content"].to_pylist() == whole["content"].to_pylist()


def test_legacy_csv_partitions_keep_minute_ties_in_file_order(tmp_path, check_table):
    whole = read_export(KOMODO)
    stamps = whole["timestamp"].to_pylist()
    # Cut where two messages share a minute: seq restarts at 0 in part 2, file order must win.
    cut = next(i for i in range(40, 100) if stamps[i] == stamps[i - 1])
    names = ["talk-general [1 of 2].csv", "talk-general [2 of 2].csv"]
    split_csv(KOMODO, tmp_path, [(0, cut), (cut, 100)], names)
    merged = check_table(read_exports([tmp_path / names[1], tmp_path / names[0]]))
    assert merged["content"].to_pylist() == whole["content"].to_pylist()
    assert len(set(merged["channel_id"].to_pylist())) == 1


def test_whole_fixture_folder_reads_sorted_by_channel_and_time(tmp_path, check_table):
    shutil.copytree(DISCORD, tmp_path / "exports")
    merged = check_table(read_exports([tmp_path / "exports"]))
    assert merged.num_rows == 35 + 6 + 5 + 3 + 6 + 100
    # Two mlomb files reuse message ids 530805779645595660 and 100, in different channels.
    assert pc.sum(pc.equal(merged["message_id"], "100")).as_py() == 2
    keys = list(zip(merged["channel_id"].to_pylist(), merged["timestamp"].to_pylist(), strict=True))
    assert keys == sorted(keys)


def test_inspect_real_export():
    summary = inspect_export(GENERAL)
    assert summary["path"] == str(GENERAL)
    assert summary["format"] == "discord_json"
    assert (summary["channel"], summary["channel_id"]) == ("general", "1012224565567721552")
    assert (summary["messages"], summary["system"], summary["bots"], summary["blank"]) == (
        35,
        4,
        0,
        1,
    )
    assert summary["first"] == "2023-01-06T14:03:03.853000+00:00"
    assert summary["last"] == "2023-01-06T16:05:35.860000+00:00"
    assert summary["authors"][0] == {"id": "521486476985155645", "name": "Adam", "messages": 19}
    assert [a["messages"] for a in summary["authors"]] == [19, 9, 6, 1]
    assert summary["content_access_suspect"] is False
    json.dumps(summary)  # the CLI prints it as JSON


def test_inspect_flags_exports_without_message_content(write_json, dce_message):
    blank = [dce_message(str(i), "", author=(str(i % 3), f"user{i % 3}")) for i in range(1, 10)]
    said = [dce_message("20", "one real message")]
    system = [
        dce_message(str(30 + i), "Joined the server.", type="GuildMemberJoin") for i in range(20)
    ]
    summary = inspect_export(write_json(blank + said + system))
    assert summary["content_access_suspect"] is True
    assert (summary["blank"], summary["system"]) == (9, 20)


def test_inspect_empty_export(write_json):
    summary = inspect_export(write_json([]))
    assert summary["messages"] == 0
    assert (summary["first"], summary["last"], summary["authors"]) == (None, None, [])
    assert summary["content_access_suspect"] is False


def test_whatsapp_reexport_of_one_chat_dedupes(write_text, check_table):
    first = "12/01/2023, 22:15 - Alice: hi\n12/01/2023, 22:15 - Alice: hi\n12/01/2023, 22:16 - Bob: yo\n"
    later = first + "13/01/2023, 08:00 - Bob: morning\n"
    older = write_text("old/WhatsApp Chat with Alice.txt", first)
    write_text("new/WhatsApp Chat with Alice (1).txt", later)
    merged = check_table(read_exports([older.parent.parent]))
    # The repeated "hi" is two messages (occurrence index), the overlap is one copy.
    assert merged["content"].to_pylist() == ["hi", "hi", "yo", "morning"]
    assert len(set(merged["channel_id"].to_pylist())) == 1


def test_bundled_sample_folder_reads_without_its_readme():
    from echo_pipeline.exports import read_exports
    from echo_pipeline.infra.paths import sample_export_dir

    files = discover_export_files([sample_export_dir()])
    assert files and all(f.suffix == ".json" for f in files)
    table = read_exports([sample_export_dir()])
    assert table.num_rows == 4300
