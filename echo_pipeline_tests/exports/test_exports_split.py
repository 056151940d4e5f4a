"""Many files, one answer: an export split into overlapping parts pairs exactly like the whole.

For every format, a generated chat is written once whole and once as k = 1..5 parts (random cut
points, some parts overlapping the previous one, numbered out of time order), and
``echo-pipeline pairs`` must write the same table for both. The Dagster leg of the same
property is in ``defs/test_ingest_assets.py``.
"""

from __future__ import annotations

import random
import zipfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from split_exports import (
    MIXED,
    WRITERS,
    assert_same_pairs,
    cli_pairs,
    random_chat,
    write_export,
    write_split_export,
)

from echo_pipeline.exports import read_exports
from echo_pipeline.operations.cli import main


@pytest.mark.parametrize("fmt", sorted(WRITERS))
@settings(
    max_examples=5,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(seed=st.integers(0, 2**32 - 1), k=st.integers(1, 5), size=st.integers(10, 30))
def test_split_export_pairs_like_the_whole_through_the_cli(tmp_path_factory, fmt, seed, k, size):
    tmp = tmp_path_factory.mktemp(fmt)
    rng = random.Random(seed)
    chat = random_chat(rng, size)
    whole = cli_pairs(write_export(fmt, tmp / "whole", chat), tmp / "whole.parquet")
    split = cli_pairs(write_split_export(fmt, tmp / "split", chat, rng, k), tmp / "split.parquet")
    assert_same_pairs(whole, split)


@settings(
    max_examples=3,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(seed=st.integers(0, 2**32 - 1))
def test_a_mixed_folder_of_split_exports_pairs_like_the_whole_exports(tmp_path_factory, seed):
    """Discord JSON, WhatsApp, Telegram and Slack days side by side, each split its own way."""
    tmp = tmp_path_factory.mktemp("mixed")
    rng = random.Random(seed)
    for fmt in MIXED:
        chat = random_chat(rng, rng.randint(10, 20))
        write_export(fmt, tmp / "whole" / fmt, chat)
        write_split_export(fmt, tmp / "split" / fmt, chat, rng, rng.randint(1, 5))
    whole = cli_pairs(tmp / "whole", tmp / "whole.parquet")
    split = cli_pairs(tmp / "split", tmp / "split.parquet")
    assert_same_pairs(whole, split)
    assert len(set(split["channel_id"].to_pylist())) == len(MIXED)


# --- the reports that started it (issue 23) ----------------------------------------------------


def test_two_whatsapp_exports_in_one_folder(tmp_path, capsys):
    folder = tmp_path / "chats"
    folder.mkdir()
    (folder / "WhatsApp Chat with Bob.txt").write_text(
        "15/01/2024, 10:00 - Alice: hi\n15/01/2024, 10:01 - Bob: hey there\n"
    )
    (folder / "WhatsApp Chat with Cara.txt").write_text(
        "16/01/2024, 10:00 - Cara: morning\n16/01/2024, 10:01 - Alice: good morning\n"
    )
    pairs = cli_pairs(folder, tmp_path / "p.parquet", "Alice")
    assert pairs.column("reply").to_pylist() == ["good morning"]
    assert pairs.column("prompt").to_pylist() == ["morning"]


@pytest.mark.parametrize("as_zip", [False, True])
def test_a_slack_export_of_two_days(tmp_path, as_zip):
    chat = random_chat(random.Random(7), 12)
    root = tmp_path / "Acme Slack export"
    # Two daily files, the second starting where the first stops: no overlap.
    write_split_export("slack", root, chat, random.Random(1), 2)
    assert len(list((root / "general").glob("*.json"))) == 2
    given_path = root
    if as_zip:
        given_path = tmp_path / "Acme Slack export.zip"
        with zipfile.ZipFile(given_path, "w") as archive:
            for file in sorted(root.rglob("*.json")):
                archive.write(file, file.relative_to(root).as_posix())
    whole = cli_pairs(write_export("slack", tmp_path / "whole", chat), tmp_path / "w.parquet")
    pairs = cli_pairs(given_path, tmp_path / "p.parquet")
    assert_same_pairs(whole, pairs)


def test_numbered_csv_parts_read_as_one_channel_in_time_then_number_order(tmp_path, capsys):
    """Parts named 1.csv .. 12.csv (no channel in the name, DCE's old `;` dialect), two parts
    starting in each minute: one channel, ordered by time and then by part number as a number
    (a plain sort puts 10.csv before 9.csv), so a reply in the next part pairs."""
    header = "AuthorID;Author;Date;Content;Attachments;Reactions;\n"

    def row(author: str, minute: int, text: str) -> str:
        return f'"{100 + len(author)}";"{author}";"02-Jul-18 08:{minute:02d} PM";"{text}";"";"";\n'

    folder = tmp_path / "dev-general"
    folder.mkdir()
    for n in range(1, 13):
        minute = (n + 1) // 2
        rows = [("Bob", f"q{n}"), ("Alice", f"a{n}")] if n % 2 else [("Cara", f"c{n}")]
        rows = {9: [("Bob", "last word")], 10: [("Alice", "ok!")]}.get(n, rows)
        (folder / f"{n}.csv").write_text(header + "".join(row(a, minute, t) for a, t in rows))
    table = read_exports(folder)
    assert set(table["channel_name"].to_pylist()) == {"dev-general"}
    assert len(set(table["channel_id"].to_pylist())) == 1
    files = list(dict.fromkeys(Path(f).name for f in table["source_file"].to_pylist()))
    assert files == [f"{n}.csv" for n in range(1, 13)]
    capsys.readouterr()
    assert main(["inspect", str(folder)]) == 0
    shown = capsys.readouterr().out
    assert "a numbered part of channel 'dev-general'" in shown
    (channel_id,) = set(table["channel_id"].to_pylist())
    merged = f"one channel dev-general [{channel_id}]: 12 files read together, 17 messages"
    assert merged in shown
    pairs = cli_pairs(folder, tmp_path / "p.parquet", "Alice")
    assert ("last word", "ok!") in zip(
        pairs["prompt"].to_pylist(), pairs["reply"].to_pylist(), strict=True
    )


def test_the_same_words_twice_in_a_minute_across_parts_are_two_messages(tmp_path):
    """Numbered parts that touch (komodo-dev-general's 87.csv and 88.csv): ":/" ends part 1
    and, a few messages into part 2, is sent again in the same minute. Ids made of author,
    minute and text match, but two touching parts are no overlap: both messages stay. A part
    that does overlap (it starts with part 1's last messages) still loses its copies."""
    header = "AuthorID;Author;Date;Content;Attachments;Reactions;\n"

    def rows(*messages: tuple[str, str]) -> str:
        return header + "".join(
            f'"{len(a)}";"{a}";"16-Dec-18 03:15 PM";"{t}";"";"";\n' for a, t in messages
        )

    folder = tmp_path / "dev-general"
    folder.mkdir()
    (folder / "1.csv").write_text(rows(("Bob", "hm"), ("Dora", ":/")))
    (folder / "2.csv").write_text(rows(("Bob", "what"), ("Alice", "ok"), ("Dora", ":/")))
    assert read_exports(folder)["content"].to_pylist() == ["hm", ":/", "what", "ok", ":/"]
    (folder / "3.csv").write_text(rows(("Dora", ":/"), ("Bob", "what")))  # overlaps 1 and 2
    table = read_exports(folder)
    assert table["content"].to_pylist() == ["hm", ":/", "what", "ok", ":/"]
    assert len(set(table["message_id"].to_pylist())) == 5
