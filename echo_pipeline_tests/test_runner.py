"""The shell runner (what ``echo-pipeline run`` / ``make demo`` call): every stage of one
template, in the project's Dagster instance, with per-op run config reaching its op."""

from __future__ import annotations

import os
import shutil

import dagster as dg
from run_configs import QUICK_EVALUATION, SMALL_HELDOUT, TINY_TRAINING

from echo_pipeline.layout import Layout
from echo_pipeline.paths import data_dir, sample_export_dir
from echo_pipeline.runner import run_pipeline

TINY_RUN = {"ops": {**SMALL_HELDOUT, **TINY_TRAINING, **QUICK_EVALUATION}}


def test_the_runner_takes_one_template_through_every_stage(pipeline_env):
    export = shutil.copytree(sample_export_dir(), pipeline_env / "my_export")
    run_config = {
        "ops": {**TINY_RUN["ops"], "read_chat_exports": {"config": {"path": str(export)}}}
    }
    lines: list[str] = []

    outcome = run_pipeline(["chatml"], ["demo"], run_config=run_config, echo=lines.append)
    assert outcome.ok and outcome.exit_status == 0, lines

    progress = lines[: lines.index("summary") - 1]  # then a blank line and the summary table
    steps = [line for line in progress if not line.startswith("  ")]  # indented: check news
    assert [line.split()[0] for line in steps] == [
        "ingest",
        "template_dataset[chatml]",
        "adapter+evaluation[demo|chatml]",  # the multi-partition key: dimensions by name
        "model_comparison",
    ]
    assert all(" ok " in line for line in steps)
    # two steps of training may or may not beat the base: a WARN check says so, not a failure
    assert all(" warns: " in line for line in lines if line.startswith("  check"))
    header, row = lines[lines.index("summary") + 1 :]
    assert header.split()[:4] == ["template", "experiment", "status", "verdict"]
    assert row.split()[:3] == ["chatml", "demo", "ok"] and "->" in row
    assert row.split()[-1].endswith("report.html") and os.path.isfile(row.split()[-1])
    assert (Layout.default().adapter_dir("chatml", "demo") / "adapter_model.safetensors").exists()
    assert (data_dir() / "evaluation_report").is_dir()
    instance = dg.DagsterInstance.get()  # the runner's instance: DAGSTER_HOME of pipeline_env
    manifest = instance.get_latest_materialization_event(dg.AssetKey("raw_chat_export"))
    assert manifest.asset_materialization.metadata["location"].value == str(export)


def _stuck_run(instance, tags: dict) -> str:
    """A run left STARTED holding the gpu pool slot, as a SIGKILLed runner leaves it."""
    from dagster._core.storage.dagster_run import DagsterRun  # no public constructor for this

    run = DagsterRun(
        job_name="__ephemeral_asset_job__", status=dg.DagsterRunStatus.STARTED, tags=tags
    )
    instance.add_run(run)
    claim = instance.event_log_storage.claim_concurrency_slot("gpu", run.run_id, "lora_adapter")
    assert claim.is_claimed
    return run.run_id


def test_a_killed_runners_run_is_failed_and_its_pool_slot_freed(pipeline_env):
    import socket
    import subprocess
    import sys

    from echo_pipeline.runner import (
        RUNNER_HOST_TAG,
        RUNNER_PID_TAG,
        pool_holders,
        reclaim_abandoned_runs,
    )

    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    dead_pid = gone.stdout.strip()  # that process has exited
    host = socket.gethostname()
    instance = dg.DagsterInstance.get()
    instance.event_log_storage.set_concurrency_slots("gpu", 3)  # room for the three runs below
    dead = _stuck_run(instance, {RUNNER_PID_TAG: dead_pid, RUNNER_HOST_TAG: host})
    live = _stuck_run(instance, {RUNNER_PID_TAG: str(os.getpid()), RUNNER_HOST_TAG: host})
    foreign = _stuck_run(instance, {})  # not started by the runner: only explained

    assert reclaim_abandoned_runs(instance) == [dead]

    assert instance.get_run_by_id(dead).status == dg.DagsterRunStatus.FAILURE
    assert instance.get_run_by_id(live).status == dg.DagsterRunStatus.STARTED
    holders = {
        slot.run_id for slot in instance.event_log_storage.get_concurrency_info("gpu").claimed_slots
    }
    assert dead not in holders and {live, foreign} <= holders
    notes = pool_holders(instance)
    assert len(notes) == 2 and any(f"dagster run delete --force {foreign}" in n for n in notes)
