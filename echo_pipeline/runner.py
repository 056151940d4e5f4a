"""Run the whole pipeline from the shell, in the project's Dagster instance.

The runs land in ``.dagster/`` (unless ``DAGSTER_HOME`` says otherwise), so they show in the
web UI exactly as if they had been launched there. Steps run in process: a subprocess per step
costs 16-27 s here and buys nothing for a single-machine run.
"""

from __future__ import annotations

import os
import shutil
import socket
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from echo_pipeline.paths import PROJECT_ROOT

INSTANCE_TEMPLATE = Path(__file__).with_name("dagster.yaml")
# Who ran a run from the shell: lets the next runner tell a dead run from a live one.
RUNNER_PID_TAG = "echo/runner_pid"
RUNNER_HOST_TAG = "echo/runner_host"


def ensure_dagster_home() -> Path:
    """``DAGSTER_HOME`` if set, else the project-local ``.dagster/`` (created with our dagster.yaml)."""
    home = Path(os.environ.get("DAGSTER_HOME") or PROJECT_ROOT / ".dagster").resolve()
    home.mkdir(parents=True, exist_ok=True)
    config = home / "dagster.yaml"
    if not config.exists():
        text = INSTANCE_TEMPLATE.read_text(encoding="utf-8").replace(".dagster/storage", str(home / "storage"))
        config.write_text(text, encoding="utf-8")
    os.environ["DAGSTER_HOME"] = str(home)
    return home


def run_pipeline(
    templates: Sequence[str],
    experiments: Sequence[str],
    *,
    run_config: dict | None = None,
    echo: Callable[[str], None] = print,
) -> bool:
    """Materialise ingest, then per template its dataset and adapters (and evaluations)."""
    import dagster as dg

    from echo_pipeline.definitions import ALL_ASSETS, ALL_CHECKS, build_resources
    from echo_pipeline.defs.partitions import adapter_key

    ensure_dagster_home()
    instance = dg.DagsterInstance.get()
    for run_id in reclaim_abandoned_runs(instance):
        echo(f"run {run_id[:8]}: its echo-pipeline process is gone; marked failed, pool slot freed")
    for line in pool_holders(instance):
        echo(line)
    resources = build_resources()
    tags = {RUNNER_PID_TAG: str(os.getpid()), RUNNER_HOST_TAG: socket.gethostname()}
    # asset name -> the op that computes it (raw_chat_export and chat_messages share one)
    op_of = {key.to_user_string(): asset.op.name for asset in ALL_ASSETS for key in asset.keys}
    names = set(op_of)

    def step(selection: list[str], partition_key=None, label: str = "") -> bool:
        result = dg.materialize(
            [*ALL_ASSETS, *ALL_CHECKS],
            selection=[s for s in selection if s in names],
            instance=instance,
            resources=resources,
            partition_key=partition_key,
            tags=tags,
            run_config=_config_for(run_config or {}, {op_of[s] for s in selection if s in op_of}),
            raise_on_error=False,
        )
        evaluations = [e for e in result.get_asset_check_evaluations() if not e.passed]
        # WARN checks (the evaluation report's "beats the base") are news, not a failed run.
        failed = [e for e in evaluations if e.severity != dg.AssetCheckSeverity.WARN]
        status = "ok" if result.success and not failed else "FAILED"
        echo(f"{label:<40} {status}  (run {result.run_id[:8]})")
        for evaluation in evaluations:
            verdict = "failed" if evaluation in failed else "warns"
            echo(f"  check {evaluation.check_name} {verdict}: {dict(evaluation.metadata)}")
        if not result.success:
            for event in result.all_events:
                if event.is_failure and event.step_failure_data is not None:
                    echo(f"  {event.step_failure_data.error.message.strip().splitlines()[0]}")
        return result.success and not failed

    if not step(["raw_chat_export", "chat_messages", "conversation_pairs"], label="ingest"):
        return False
    ok = True
    for template in templates:
        ok &= step(["template_dataset"], template, label=f"template_dataset[{template}]")
        for experiment in experiments:
            key = adapter_key(template, experiment)
            ok &= step(["lora_adapter", "evaluation_report"], key, label=f"adapter+evaluation[{key}]")
    if "model_comparison" in names:
        ok &= step(["model_comparison"], label="model_comparison")
    return bool(ok)


_UNFINISHED = ("STARTING", "STARTED", "CANCELING")


def _unfinished_runs(instance: Any) -> list[Any]:
    import dagster as dg

    statuses = [dg.DagsterRunStatus[name] for name in _UNFINISHED]
    return list(instance.get_runs(filters=dg.RunsFilter(statuses=statuses)))


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def reclaim_abandoned_runs(instance: Any) -> list[str]:
    """Fail the runs a runner on this host started and never finished (its process was killed:
    SIGKILL, out of memory, a reboot), and free their concurrency slots.

    Such a run stays STARTED and keeps its ``gpu`` pool slot, so the next ``lora_adapter`` step
    would wait for that slot forever. A reused pid only keeps a dead run as it is (the safe side).
    """
    host = socket.gethostname()
    reclaimed = []
    for run in _unfinished_runs(instance):
        pid = run.tags.get(RUNNER_PID_TAG)
        if pid is None or run.tags.get(RUNNER_HOST_TAG) != host or _process_alive(int(pid)):
            continue
        instance.report_run_failed(
            run, f"the echo-pipeline process that ran it (pid {pid}) is gone; run abandoned"
        )
        instance.event_log_storage.free_concurrency_slots_for_run(run.run_id)
        reclaimed.append(run.run_id)
    return reclaimed


def pool_holders(instance: Any) -> list[str]:
    """A line per concurrency slot held by an unfinished run: a step waiting for that pool
    waits for it, which must not look like a hang."""
    unfinished = {run.run_id: run for run in _unfinished_runs(instance)}
    home = os.environ.get("DAGSTER_HOME", ".dagster")
    lines = []
    for key in sorted(instance.event_log_storage.get_concurrency_keys()):
        for slot in instance.event_log_storage.get_concurrency_info(key).claimed_slots:
            if slot.run_id in unfinished:
                lines.append(
                    f"note: pool {key!r} is held by run {slot.run_id[:8]} ({slot.step_key}, "
                    f"{unfinished[slot.run_id].status.value}); steps in that pool wait for it. "
                    f"If no Dagster process runs it any more: DAGSTER_HOME={home} "
                    f"dagster run delete --force {slot.run_id}"
                )
    return lines


QUIET_LOGGING = {"loggers": {"console": {"config": {"log_level": "INFO"}}}}


def _config_for(run_config: dict, op_names: set[str]) -> dict:
    ops = {k: v for k, v in run_config.get("ops", {}).items() if k in op_names}
    return {**QUIET_LOGGING, **({"ops": ops} if ops else {})}


def which(program: str) -> str:
    """The venv's own copy of a console script, else the one on PATH."""
    beside = Path(os.sys.executable).with_name(program)
    return str(beside) if beside.exists() else (shutil.which(program) or program)
