"""Hostile exports in a folder beside a good one: ``inspect`` and ``pairs`` exit 2 with one line
naming the bad file (or archive member) and its problem, and leave an earlier output untouched.

The cases of issue 23: dates past year 9999, JSON nested 100k levels deep in every JSON reader,
and files that detection used to misdiagnose (a Telegram chat in a list, a Slack day as an
object, an HTML error page saved as a Meta zip).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hostile_exports import CASES, telegram_in_a_list, write_text

from echo_pipeline.operations.cli import EXIT_BAD_INPUT, main


def _good_export(folder: Path) -> None:
    write_text(
        folder / "WhatsApp Chat with Bob.txt",
        "15/01/2024, 10:00 - Bob: hi\n15/01/2024, 10:01 - Alice: hello\n",
    )


@pytest.mark.parametrize("command", ["inspect", "pairs"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_a_hostile_file_beside_a_good_one_exits_2_naming_it(tmp_path, capsys, case, command):
    folder = tmp_path / "exports"
    _good_export(folder)
    write, problem = CASES[case]
    bad = write(folder / "bad")
    out = tmp_path / "pairs.parquet"
    out.write_bytes(b"an earlier run's pairs")
    argv = [command, str(folder)]
    if command == "pairs":
        argv += ["--me", "Alice", "--out", str(out)]
    capsys.readouterr()
    assert main(argv) == EXIT_BAD_INPUT
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith(f"echo-pipeline: {bad}: "), lines[0]
    assert problem in lines[0]
    assert out.read_bytes() == b"an earlier run's pairs"


def test_detection_says_which_formats_it_tried(tmp_path, capsys):
    bad = telegram_in_a_list(tmp_path)
    assert main(["inspect", str(bad)]) == EXIT_BAD_INPUT
    line = capsys.readouterr().err
    assert "a JSON array of objects with keys `date_unixtime`/`from`/`id`/" in line
    assert "formats tried: Telegram Desktop JSON, Messenger/Instagram JSON" in line
    assert "Slack daily file, DiscordChatExporter JSON" in line
