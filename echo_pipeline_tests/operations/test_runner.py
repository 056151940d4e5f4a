"""The shell runner (what ``echo-pipeline run`` / ``make demo`` call): every stage of one
template, in the project's Dagster instance, with per-op run config reaching its op."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import dagster as dg
from run_configs import QUICK_EVALUATION, SMALL_HELDOUT, TINY_TRAINING_IN_STEP

from echo_pipeline.infra.layout import Layout
from echo_pipeline.infra.paths import data_dir, sample_export_dir
from echo_pipeline.infra.records import AdapterMetadata
from echo_pipeline.operations.runner import run_pipeline

# Training inside the step and no MiniLM: this is about the runner; the Pipes child and the
# relevance scores have their own tests.
NO_MINILM = {"config": {**QUICK_EVALUATION["evaluation_report"]["config"], "similarity": False}}
TINY_RUN = {"ops": {**SMALL_HELDOUT, **TINY_TRAINING_IN_STEP, "evaluation_report": NO_MINILM}}


def test_the_runner_takes_one_template_through_every_stage(pipeline_env):
    export = shutil.copytree(sample_export_dir(), pipeline_env / "my_export")
    run_config = {
        "ops": {**TINY_RUN["ops"], "read_chat_exports": {"config": {"path": str(export)}}}
    }
    lines: list[str] = []

    outcome = run_pipeline(
        ["chatml", "model_default"], ["demo"], run_config=run_config, echo=lines.append
    )
    assert outcome.ok and outcome.exit_status == 0, lines

    progress = lines[: lines.index("summary") - 1]  # then a blank line and the summary table
    steps = [line for line in progress if not line.startswith("  ")]  # indented: check news
    assert [line.split()[0] for line in steps] == [
        "ingest",
        "template_dataset[chatml]",
        "adapter+evaluation[demo|chatml]",  # the multi-partition key: dimensions by name
        "template_dataset[model_default]",
        "adapter+evaluation[model_default]",  # SmolLM2's own template is ChatML: not trained
        "model_comparison",
    ]
    twin = steps[4]
    assert " not trained: its dataset is chatml's token for token" in twin
    assert all(" ok " in line for line in steps if line != twin)
    # two steps of training may or may not beat the base: a WARN check says so, not a failure
    assert all(" warns: " in line for line in lines if line.startswith("  check"))
    header, row, twin_row = lines[lines.index("summary") + 1 :]
    assert header.split()[:4] == ["template", "experiment", "status", "verdict"]
    assert row.split()[:3] == ["chatml", "demo", "ok"] and "->" in row
    assert twin_row.split()[:2] == ["model_default", "demo"]
    assert "same tokens as chatml" in twin_row
    assert not Layout.default().adapter_dir("model_default", "demo").exists()
    assert row.split()[-1].endswith("report.html") and os.path.isfile(row.split()[-1])
    adapter_dir = Layout.default().adapter_dir("chatml", "demo")
    assert (adapter_dir / "adapter_model.safetensors").exists()
    assert (data_dir() / "evaluation_report").is_dir()
    # the report took the held-out losses training measured, not a second pass over the split
    report = json.loads(Path(row.split()[-1]).with_name("metrics.json").read_text("utf-8"))
    split, measured = report["lineage"]["heldout_split"], AdapterMetadata.load(adapter_dir).results
    assert report["lineage"]["reply_loss_measured_by"] == "training"
    for side in ("base", "adapter"):
        assert report["metrics"][f"{side}_reply_loss"] == measured[f"{side}_{split}_reply_loss"]
    instance = dg.DagsterInstance.get()  # the runner's instance: DAGSTER_HOME of pipeline_env
    manifest = instance.get_latest_materialization_event(dg.AssetKey("raw_chat_export"))
    assert manifest.asset_materialization.metadata["location"].value == str(export)

    _a_rerun_does_only_what_changed(instance, export, run_config)


def _steps_run(lines: list[str]) -> dict[str, str]:
    """{step label: "ok" / "up to date" / "FAILED"} from the runner's progress lines."""
    progress = lines[: lines.index("summary") - 1] if "summary" in lines else lines
    steps = [line for line in progress if line and not line.startswith("  ")]
    return {
        line.split()[0]: "up to date" if "up to date" in line else line.split()[1] for line in steps
    }


def _adapter_materializations(instance) -> int:
    return len(instance.fetch_materializations(dg.AssetKey("lora_adapter"), limit=100).records)


def _a_rerun_does_only_what_changed(instance, export, run_config):
    """Continues the run above (sharing its training): what a re-run re-makes, and why."""
    from echo_pipeline.training.experiments import EXPERIMENTS

    adapter = "adapter+evaluation[demo|chatml]"
    runs, trained = len(instance.get_runs()), _adapter_materializations(instance)

    lines: list[str] = []  # nothing changed: nothing runs, not even a Dagster run
    assert run_pipeline(["chatml"], ["demo"], run_config=run_config, echo=lines.append).ok
    assert set(_steps_run(lines).values()) == {"up to date"}, lines
    assert len(instance.get_runs()) == runs and _adapter_materializations(instance) == trained
    row = lines[lines.index("summary") + 2]
    assert row.split()[2:5] == ["up", "to", "date"] and row.split()[-1].endswith("report.html")

    lines = []  # a recipe field: that adapter and its report, then the leaderboard
    old_rate = EXPERIMENTS["demo"].get("learning_rate")
    EXPERIMENTS["demo"]["learning_rate"] = 3e-4
    try:
        assert run_pipeline(["chatml"], ["demo"], run_config=run_config, echo=lines.append).ok
    finally:
        if old_rate is None:
            del EXPERIMENTS["demo"]["learning_rate"]
        else:
            EXPERIMENTS["demo"]["learning_rate"] = old_rate
    assert _steps_run(lines) == {
        "ingest": "up to date",
        "template_dataset[chatml]": "up to date",
        adapter: "ok",
        "model_comparison": "ok",
    }, lines
    assert any("lora_adapter: config changed: learning_rate" in line for line in lines), lines
    assert _adapter_materializations(instance) == trained + 1

    lines = []  # one template's max tokens: that template's dataset, and so its adapter
    shorter = {"ops": {**run_config["ops"], "template_dataset": {"config": {"max_tokens": 384}}}}
    assert run_pipeline(["chatml"], [], run_config=shorter, echo=lines.append).ok
    assert _steps_run(lines) == {"ingest": "up to date", "template_dataset[chatml]": "ok"}, lines
    assert any("config changed: max_tokens 512 -> 384" in line for line in lines), lines
    from echo_pipeline.definitions import build_resources, stale_reasons

    why = stale_reasons(instance, "lora_adapter", "demo|chatml", {}, build_resources())
    assert any(r.startswith("data changed: template_dataset") for r in why), why  # it retrains
    lines = []  # ...and the other template's dataset is not touched by it
    assert run_pipeline(["llama2_chat"], [], run_config=run_config, echo=lines.append).ok
    assert _steps_run(lines) == {"ingest": "up to date", "template_dataset[llama2_chat]": "ok"}
    lines = []
    assert run_pipeline(["llama2_chat", "chatml"], [], run_config=shorter, echo=lines.append).ok
    assert _steps_run(lines)["template_dataset[chatml]"] == "up to date", lines
    assert _steps_run(lines)["template_dataset[llama2_chat]"] == "ok", lines  # 512 -> 384 for it

    lines = []  # new messages in the export: everything downstream of it
    first = sorted(p for p in export.rglob("*") if p.is_file())[0]
    _append_a_message(first)
    assert run_pipeline(["chatml"], [], run_config=shorter, echo=lines.append).ok
    assert _steps_run(lines) == {"ingest": "ok", "template_dataset[chatml]": "ok"}, lines
    why = stale_reasons(instance, "lora_adapter", "demo|chatml", {}, build_resources())
    assert any(reason.startswith("data changed: template_dataset") for reason in why), why

    lines = []  # --force: every step runs, current or not
    runs = len(instance.get_runs())
    assert run_pipeline(["chatml"], [], run_config=shorter, echo=lines.append, force=True).ok
    assert _steps_run(lines) == {"ingest": "ok", "template_dataset[chatml]": "ok"}, lines
    assert len(instance.get_runs()) == runs + 2


def _append_a_message(path) -> None:
    """One more message at the end of an export file, in its own format."""
    import json

    if path.suffix == ".json":
        data = json.loads(path.read_text(encoding="utf-8"))
        last = dict(data["messages"][-1])
        last["id"] = str(int(last["id"]) + 1)
        last["content"] = "one more thing before I go"
        data["messages"].append(last)
        data["messageCount"] = len(data["messages"])
        path.write_text(json.dumps(data), encoding="utf-8")
    else:
        raise AssertionError(f"{path}: the sample is DiscordChatExporter JSON")


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

    from echo_pipeline.operations.runner import (
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


def test_a_deleted_output_is_made_again_with_the_rest_of_its_op(pipeline_env):
    """chat_messages gone, the manifest still there: the one op that writes both runs whole
    (a multi-asset cannot run half), and the step after it is current again."""
    lines: list[str] = []
    assert run_pipeline([], [], echo=lines.append).ok and _steps_run(lines) == {"ingest": "ok"}
    (data_dir() / "chat_messages.parquet").unlink()

    lines = []
    assert run_pipeline([], [], echo=lines.append).ok, lines
    assert "  chat_messages: output missing on disk" in lines
    assert _steps_run(lines) == {"ingest": "ok"} and (data_dir() / "chat_messages.parquet").exists()
    lines = []
    assert run_pipeline([], [], echo=lines.append).ok
    assert _steps_run(lines) == {"ingest": "up to date"}


def test_an_interrupt_is_seen_behind_the_error_raised_while_handling_it():
    """Ctrl-C while the training child finishes its step: Pipes waits 20 s for it, then raises
    TimeoutExpired while handling Dagster's interruption. The runner must stop (an interrupt),
    not report a failed step and go on with the next template."""
    from dagster._utils.error import SerializableErrorInfo  # how a step failure arrives

    from echo_pipeline.operations.runner import _has_error

    def step_error(timeout_context):
        timeout = SerializableErrorInfo(
            "timed out after 20 seconds", [], "TimeoutExpired", context=timeout_context
        )
        return SerializableErrorInfo("op failed", [], "DagsterExecutionStepExecutionError", timeout)

    interrupted = SerializableErrorInfo("", [], "DagsterExecutionInterruptedError")
    assert _has_error(step_error(interrupted), "DagsterExecutionInterruptedError")
    assert not _has_error(step_error(None), "DagsterExecutionInterruptedError")
