"""``echo-pipeline run`` as a user meets it, through the console entry point in a subprocess:
broken inputs end with one line and the documented exit status (never a traceback), a real
export runs end to end (the others as far as their datasets), and a failed run leaves nothing
that blocks the next one."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest
import yaml
from real_exports import REAL_EXPORTS, REAL_ME, me_for
from run_configs import CLI_TINY

from echo_pipeline.operations.runner import EXIT_BAD_INPUT, EXIT_FAILED

SDR = next(p for p in REAL_EXPORTS if "SDRplusplus" in p.name)
TINY_CONFIG = CLI_TINY


def run_cli(env_root: Path, *args: str, timeout: float = 1800) -> subprocess.CompletedProcess:
    """``echo-pipeline run ARGS`` with the pipeline_env fixture's environment."""
    return subprocess.run(
        [sys.executable, "-m", "echo_pipeline.operations.cli", "run", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
        cwd=env_root,
        timeout=timeout,
    )


def one_error_line(proc: subprocess.CompletedProcess) -> str:
    assert "Traceback" not in proc.stderr + proc.stdout
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    return lines[0]


def dce(path: Path, rows: list[tuple[int, str, str]]) -> Path:
    """A DiscordChatExporter JSON of (seconds, author name, text); me is "alex" (id 1)."""
    ids = {"alex": "1", "sam": "2"}
    document = {
        "guild": {"id": "0", "name": "Direct Messages"},
        "channel": {"id": "500", "type": "DirectTextChat", "name": "dm"},
        "messages": [
            {
                "id": f"{1000 + i}",
                "type": "Default",
                "timestamp": f"2024-03-01T{12 + s // 3600:02d}:{s // 60 % 60:02d}:{s % 60:02d}+00:00",
                "content": text,
                "author": {"id": ids[who], "name": who, "isBot": False},
                "attachments": [],
            }
            for i, (s, who, text) in enumerate(rows)
        ],
    }
    path.write_text(json.dumps(document), encoding="utf-8")
    return path


def two_sessions(path: Path) -> Path:
    """Two conversations two hours apart, three pairs each: enough to hold one out."""
    rows = [
        (start + 60 * i, "sam" if i % 2 == 0 else "alex", f"message {start} {i}")
        for start in (0, 7200)
        for i in range(6)
    ]
    return dce(path, rows)


def test_help_documents_the_exit_statuses():
    proc = subprocess.run(
        [sys.executable, "-m", "echo_pipeline.operations.cli", "run", "--help"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0
    assert "exit status:" in proc.stdout and "2  bad input" in proc.stdout
    assert "1  a step failed" in proc.stdout


def test_truncated_export_one_line_exit_2_and_the_good_data_stays(pipeline_env):
    """A run on a cut export fails in ingest, prints one line, leaves the earlier pairs as they
    were and no run or pool slot behind; the fixed export then runs."""
    from echo_pipeline.infra.layout import Layout
    from echo_pipeline.operations.runner import run_pipeline

    pairs_path = Layout.default().pairs_path

    good = two_sessions(pipeline_env / "good.json")
    assert run_pipeline(
        [], [], run_config={"ops": {"read_chat_exports": {"config": {"path": str(good)}}}}
    ).ok
    instance = dg.DagsterInstance.get()
    before = instance.get_latest_materialization_event(dg.AssetKey("conversation_pairs"))
    pairs_bytes = pairs_path().read_bytes()

    cut = pipeline_env / "export.json"
    cut.write_bytes(SDR.read_bytes()[:200_000])
    proc = run_cli(
        pipeline_env, "--export", str(cut), "--me", REAL_ME["SDRplusplus"], "--template", "chatml"
    )

    assert proc.returncode == EXIT_BAD_INPUT, proc.stderr
    line = one_error_line(proc)
    assert line.startswith("ingest: read_chat_exports failed: ")
    assert str(cut) in line and "truncated" in line and "at byte 200000" in line
    assert "not run (ingest failed)" in proc.stdout and "full log: " in proc.stdout
    after = instance.get_latest_materialization_event(dg.AssetKey("conversation_pairs"))
    assert after.run_id == before.run_id and pairs_path().read_bytes() == pairs_bytes
    assert not instance.get_runs(filters=dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED]))
    assert not instance.event_log_storage.get_concurrency_info("gpu").claimed_slots

    cut.write_bytes(good.read_bytes())  # the user re-exports: same path, whole file
    assert run_pipeline(
        [], [], run_config={"ops": {"read_chat_exports": {"config": {"path": str(cut)}}}}
    ).ok


def test_too_few_pairs_for_a_heldout_split_fails_before_training(pipeline_env):
    """Three pairs in one conversation: nothing to hold out. The blocking check says so and
    what to do; no dataset is built and nothing trains."""
    one_session = dce(
        pipeline_env / "short.json",
        [(60 * i, "sam" if i % 2 == 0 else "alex", f"message {i}") for i in range(6)],
    )
    proc = run_cli(
        pipeline_env, "--export", str(one_session), "--me", "alex", "--template", "chatml"
    )

    assert proc.returncode == EXIT_BAD_INPUT, proc.stderr
    line = one_error_line(proc)
    assert line.startswith("ingest: check conversation_pairs.has_heldout_pairs failed: ")
    assert "3 pairs in 1 session(s)" in line and "at least 2 pairs in 2 sessions" in line
    assert "longer export" in line
    assert "template_dataset" not in proc.stdout  # stopped before the dataset, let alone training
    assert "not run (ingest failed)" in proc.stdout


def test_unknown_me_is_bad_input(pipeline_env):
    export = dce(pipeline_env / "x.json", [(0, "sam", "hi"), (5, "alex", "hey")])
    proc = run_cli(pipeline_env, "--export", str(export), "--me", "nobody", "--template", "chatml")
    assert proc.returncode == EXIT_BAD_INPUT
    line = one_error_line(proc)
    assert "conversation_pairs failed: no author matches me=['nobody']" in line
    assert "alex (id 1" in line


def broken_base_model(folder: Path, base_model) -> Path:
    """A model folder whose tokenizer loads (the dataset builds) but whose weights do not."""
    folder.mkdir()
    for source in Path(base_model.path).iterdir():
        if source.suffix != ".safetensors" and source.is_file():
            shutil.copy(source, folder / source.name)
    (folder / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00not json")
    return folder


@pytest.mark.slow
def test_a_failed_training_then_a_rerun_that_waits_for_the_pool_and_trains_a_real_export(
    pipeline_env, base_model
):
    """One real export through `echo-pipeline run`, twice, as a user meets it.

    First the Pipes child fails loading weights: one line naming the step and the child's cause,
    exit 1, the summary names the step, no slot or run left behind. Then the re-run, with no
    clean-up, queues behind another run's training: it says so and uses < 2 % of a core while
    it waits; once the pool is free it trains (one step) and evaluates (two pairs): exit 0,
    nothing on stderr, a progress line per phase (stdout is not a terminal: plain lines), and a
    summary row with the report."""
    from test_pool import claims, cpu_seconds, hold_pool, release, start_runner, wait_for_line

    bad = broken_base_model(pipeline_env / "bad_model", base_model)
    config = pipeline_env / "tiny.yaml"
    config.write_text(yaml.safe_dump(TINY_CONFIG), encoding="utf-8")
    me = me_for(SDR)
    quick = ["--max-steps", "1", "--eval-max-pairs", "2", "--config", str(config)]

    proc = run_cli(
        pipeline_env, "--export", str(SDR), "--me", me, "--template", "chatml", *quick,
        "--base-model", str(bad),
    )  # fmt: skip

    assert proc.returncode == EXIT_FAILED, proc.stderr
    line = one_error_line(proc)
    assert line.startswith(
        "adapter+evaluation[echo|chatml]: lora_adapter failed: training subprocess failed: "
    )
    assert "safetensors" in line.lower() or "header" in line.lower()
    assert "FAILED (lora_adapter)" in proc.stdout
    instance = dg.DagsterInstance.get()
    assert not instance.get_runs(filters=dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED]))
    assert not instance.event_log_storage.get_concurrency_info("gpu").claimed_slots

    holder = hold_pool(instance)
    proc, lines = start_runner(pipeline_env, *quick, export=SDR, me=me)
    wait_for_line(lines, "waiting for pool 'gpu'", proc)
    time.sleep(1.0)  # past the first short polls
    cpu0, wall0 = cpu_seconds(proc.pid), time.monotonic()
    time.sleep(6.0)
    cpu, wall = cpu_seconds(proc.pid) - cpu0, time.monotonic() - wall0
    assert cpu < 0.02 * wall, f"waiting runner used {cpu:.2f} s CPU in {wall:.1f} s"
    release(instance, holder)

    assert proc.wait(timeout=1800) == 0, (lines, proc.stderr.read())
    assert proc.stderr.read() == ""
    step = "adapter+evaluation[echo|chatml]"
    assert any(line.startswith(step) and " ok " in line for line in lines)
    assert f"  {step} training: step 1/1, loss " in "".join(lines)
    assert any(line.startswith(f"  {step} evaluating: replies 0/") for line in lines)
    assert any(re.match(rf"  {re.escape(step)} evaluating: replies (\d+)/\1\b", x) for x in lines)
    summary = "".join(lines).split("\nsummary\n", 1)[1].splitlines()
    assert summary[0].split()[:3] == ["template", "experiment", "status"]
    row = summary[1].split()
    assert row[:3] == ["chatml", "echo", "ok"]
    assert "->" in summary[1] and Path(row[-1]).is_file()  # reply loss base -> adapter, report
    assert claims(instance) == (set(), set())
    # `--export` with no --base-model: auto, scored on my replies; an English channel keeps SmolLM2
    from echo_pipeline.infra.layout import Layout
    from echo_pipeline.training.base_choice import CHOICE_FILE

    choice = json.loads((Layout.default().pairs_path().parent / CHOICE_FILE).read_text())
    assert choice["chosen"] == "smollm2-135m-instruct", choice
    assert set(choice["bits_per_char"]) >= {"smollm2-135m-instruct"}
    # ... and why goes to the training run in MLflow and to the report's lineage
    report = json.loads(Path(row[-1]).with_name("metrics.json").read_text())
    assert report["lineage"]["base_model_choice"] == choice["reason"]
    assert "base chosen by auto" in Path(row[-1]).read_text()
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=os.environ["MLFLOW_TRACKING_URI"])
    training = client.get_run(report["lineage"]["training_run_id"])
    assert training.data.tags["echo.base_model_choice.bits_per_char.smollm2-135m-instruct"] == (
        f"{choice['bits_per_char']['smollm2-135m-instruct']:.4f}"
    )


@pytest.mark.parametrize(
    "export", [p for p in REAL_EXPORTS if p != SDR], ids=lambda p: p.name.split("__")[-1][:20]
)
def test_every_other_real_export_reads_pairs_and_renders_a_dataset(pipeline_env, export):
    """The other real channel exports as far as the data goes: read, paired, split with a
    held-out part (the blocking checks pass) and rendered; training is the same code on any
    export (the test above), so they do not train."""
    from echo_pipeline.operations.runner import run_pipeline

    lines: list[str] = []
    run_config = {
        "ops": {
            "read_chat_exports": {"config": {"path": str(export)}},
            "conversation_pairs": {"config": {"me": [me_for(export)]}},
        }
    }
    outcome = run_pipeline(["chatml"], [], run_config=run_config, echo=lines.append)

    assert outcome.ok, lines
    assert [line.split()[:2] for line in lines if not line.startswith("  ")][:2] == [
        ["ingest", "ok"],
        ["template_dataset[chatml]", "ok"],
    ]
    # A channel: every prompt names who wrote it, even a pair with one other person in it
    # (and the parity check, blocking, passed with the same naming at inference).
    import pyarrow.parquet as pq

    from echo_pipeline.infra.layout import Layout
    from echo_pipeline.infra.records import DatasetManifest

    layout = Layout.default()
    assert DatasetManifest.load(layout.dataset_manifest_path("chatml")).group_chat
    pairs = pq.read_table(layout.pairs_path(), columns=["pair_id", "prompt_author"]).to_pandas()
    dataset = pq.read_table(layout.dataset_path("chatml"), columns=["pair_id", "prompt_text"])
    rows = dataset.to_pandas().merge(pairs, on="pair_id")
    authors, texts = rows["prompt_author"], rows["prompt_text"]
    assert all(f"{a}: " in text for a, text in zip(authors, texts, strict=True))
