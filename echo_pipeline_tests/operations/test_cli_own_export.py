"""The README's "Your own export" path, on a real export, through the CLI's own entry point.

The commands are read from the README itself, so the instructions and the CLI cannot drift
apart: ``~/exports/`` becomes a real DiscordChatExporter export (SDR++ #dsp, 638 messages,
where "me" is the project's author, Ryzerth) and the example id becomes his.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from echo_pipeline.infra.paths import PROJECT_ROOT
from echo_pipeline.operations.cli import EXIT_BAD_INPUT, main, most_active_person

REAL = Path(__file__).parents[1] / "fixtures" / "real"
SDR_EXPORT = next(REAL.glob("*SDRplusplus_dsp_*.json"))
RYZERTH = "274976585650536449"
DELETED_USER = "456226577798135808"
README_EXAMPLE_ID = "123456789012345678"


def readme_commands() -> list[list[str]]:
    """The echo-pipeline commands in the README's "Your own export" section, as argv lists."""
    readme = (PROJECT_ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Your own export", 1)[1].split("\n## ", 1)[0]
    lines = re.findall(r"^\s*\.venv/bin/echo-pipeline (.+?)(?:\s+#.*)?$", section, re.M)
    return [shlex.split(line) for line in lines]


def as_here(argv: list[str], export: Path, pairs: Path) -> list[str]:
    replaced = {"~/exports/": str(export), README_EXAMPLE_ID: RYZERTH, "pairs.parquet": str(pairs)}
    return [replaced.get(arg, arg) for arg in argv]


def cli(*args: str) -> subprocess.CompletedProcess:
    """The CLI in a fresh process, as a user runs it: stdout, stderr and the exit status."""
    return subprocess.run(
        [sys.executable, "-m", "echo_pipeline.operations.cli", *args],
        capture_output=True,
        text=True,
    )


def test_the_readme_lists_the_own_export_commands():
    commands = [argv[0] for argv in readme_commands()]
    assert commands == ["inspect", "pairs", "show-labels", "run"]


def test_the_readme_own_export_commands_work_on_a_real_export(tmp_path, capsys, base_model):
    exports = tmp_path / "exports"  # a folder of its own, as the README's ~/exports/
    exports.mkdir()
    shutil.copy(SDR_EXPORT, exports)
    pairs = tmp_path / "pairs.parquet"
    commands = {argv[0]: as_here(argv, exports, pairs) for argv in readme_commands()}

    assert main(commands["inspect"]) == 0
    out = capsys.readouterr().out
    assert "discord_json" in out and "638" in out
    # It ends with the next command, with the most active person (not "Deleted User") as --me.
    assert out.rstrip().splitlines()[-1].split()[1:] == [
        "pairs",
        str(exports),
        "--me",
        RYZERTH,
    ]

    assert main(commands["pairs"]) == 0
    assert "pairs" in capsys.readouterr().out
    table = pq.read_table(pairs)
    assert table.num_rows > 50
    assert set(table["reply_author_id"].to_pylist()) == {RYZERTH}

    assert main(commands["show-labels"]) == 0
    labels = capsys.readouterr().out
    assert "-100" in labels and "<|im_end|>" in labels

    # `run` trains: its end-to-end test lives with the runner. Here: it accepts the arguments.
    from echo_pipeline.operations.cli import build_parser

    run = build_parser().parse_args(commands["run"])
    assert (run.export, run.me, run.template) == (str(exports), [RYZERTH], ["chatml"])


def test_inspect_writes_nothing_to_stderr_and_ends_with_the_next_command():
    proc = cli("inspect", str(SDR_EXPORT))
    assert proc.returncode == 0
    assert proc.stderr == ""
    last = proc.stdout.rstrip().splitlines()[-1]
    assert last.split()[1:] == ["pairs", str(SDR_EXPORT), "--me", RYZERTH]


def test_the_suggested_me_skips_bots_and_deleted_accounts():
    summaries = [
        {
            "human_authors": [
                {"id": DELETED_USER, "name": "Deleted User", "messages": 500},
                {"id": "2", "name": "sam", "messages": 40},
            ]
        },
        {
            "human_authors": [
                {"id": "3", "name": "kim", "messages": 30},
                {"id": "2", "name": "sam", "messages": 5},
            ]
        },
    ]
    assert most_active_person(summaries)["id"] == "2"
    assert most_active_person([{"human_authors": []}]) is None


@pytest.mark.parametrize("command", ["inspect", "pairs"])
@pytest.mark.parametrize("layout", ["empty", "unrelated_files", "symlink_loop"])
def test_a_folder_without_exports_exits_2_with_one_line(tmp_path, command, layout):
    folder = tmp_path / "exports"
    folder.mkdir()
    if layout == "unrelated_files":
        (folder / "notes.md").write_text("my notes\n")
        (folder / "photo.jpg").write_bytes(b"\xff\xd8\xff")
        (folder / ".hidden.json").write_text("{}")
    elif layout == "symlink_loop":
        (folder / "a.json").symlink_to(folder / "b.json")
        (folder / "b.json").symlink_to(folder / "a.json")
        (folder / "again").symlink_to(folder, target_is_directory=True)
    args = [command, str(folder)] + (["--me", "alex"] if command == "pairs" else [])
    proc = cli(*args)
    assert proc.returncode == EXIT_BAD_INPUT
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert f"no export files found under {folder}" in lines[0]
    assert "DiscordChatExporter JSON" in lines[0] and "WhatsApp" in lines[0]
    assert proc.stdout == ""


def test_pairs_on_a_one_author_export_warns_naming_the_file_and_what_to_check(tmp_path):
    one_author = Path(__file__).parents[1] / "fixtures" / "hostile" / "one_author.json"
    proc = cli("pairs", str(one_author), "--me", "alex")
    assert proc.returncode == 0
    warnings = proc.stderr.splitlines()
    assert any(str(one_author) in w and "only one author" in w for w in warnings), warnings
    assert any(w.startswith("warning: no pairs") and "--me" in w for w in warnings), warnings
