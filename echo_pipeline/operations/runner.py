"""Run the whole pipeline from the shell, in the project's Dagster instance.

The runs land in ``.dagster/`` (unless ``DAGSTER_HOME`` says otherwise), so they show in the
web UI exactly as if they had been launched there. Steps run in process: a subprocess per step
costs 16-27 s here and buys nothing for a single-machine run.

A failed step never ends the runner: it prints one line (the step, the error's own first line,
and for the training subprocess the cause the child reported), goes on with the templates that
do not depend on the failure, prints a summary table and exits with :data:`EXIT_FAILED` or, when
the input itself is wrong, :data:`EXIT_BAD_INPUT`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import socket
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from echo_pipeline.infra.paths import PROJECT_ROOT
from echo_pipeline.infra.processes import pid_alive
from echo_pipeline.infra.progress import StepProgress

INSTANCE_TEMPLATE = Path(__file__).with_name("dagster.yaml")
# Who ran a run from the shell: lets the next runner tell a dead run from a live one.
RUNNER_PID_TAG = "echo/runner_pid"
RUNNER_HOST_TAG = "echo/runner_host"

EPHEMERAL_JOB = "__ephemeral_asset_job__"  # the job name dg.materialize gives its runs

EXIT_OK = 0
EXIT_FAILED = 1  # a step failed for another reason (training, evaluation, tracking, a bug)
EXIT_BAD_INPUT = 2  # the export or "me" is wrong: unreadable export, unknown me, no/too few pairs
EXIT_INTERRUPTED = 130

# Failures of these ops (raised as dagster Failure) and of conversation_pairs' blocking checks
# are about the user's input, not about the pipeline.
INPUT_OPS = frozenset({"read_chat_exports", "conversation_pairs"})
INPUT_CHECK_ASSETS = frozenset({"conversation_pairs"})


def ensure_dagster_home() -> Path:
    """``DAGSTER_HOME`` if set, else the project-local ``.dagster/`` (created with our dagster.yaml)."""
    home = Path(os.environ.get("DAGSTER_HOME") or PROJECT_ROOT / ".dagster").resolve()
    home.mkdir(parents=True, exist_ok=True)
    config = home / "dagster.yaml"
    if not config.exists():
        text = INSTANCE_TEMPLATE.read_text(encoding="utf-8").replace(
            ".dagster/storage", str(home / "storage")
        )
        config.write_text(text, encoding="utf-8")
        os.environ["DAGSTER_HOME"] = str(home)
        _create_gpu_pool()
    os.environ["DAGSTER_HOME"] = str(home)
    return home


def _create_gpu_pool() -> None:
    """The ``gpu`` pool of a new instance, at the default limit. The daemon of `dagster dev`
    (dagster 1.13.27) launches every queued run of a pool it has never seen in its first pass
    over it, so two trainings queued from the UI on a fresh instance would start together."""
    import dagster as dg

    from echo_pipeline.operations.pool import ensure_pool

    ensure_pool(dg.DagsterInstance.get())


@dataclass
class StepResult:
    """One materialisation the runner made (ingest, a dataset, an adapter and its report)."""

    label: str
    ok: bool
    run_id: str = ""
    problems: list[str] = field(default_factory=list)  # one line each
    bad_input: bool = False
    interrupted: bool = False  # Ctrl-C / SIGTERM reached the step (Dagster stops it)
    report: dict[str, Any] = field(default_factory=dict)  # evaluation_report metadata values
    up_to_date: bool = False  # nothing in it was stale: nothing ran
    seconds: float = 0.0  # wall time of the step's run (pool wait included)


@dataclass
class SummaryRow:
    template: str
    experiment: str
    status: str
    verdict: str = "-"
    reply_loss: str = "-"
    report: str = "-"


@dataclass
class RunOutcome:
    """What ``echo-pipeline run`` reports: a row per template x experiment and the exit status."""

    exit_status: int
    rows: list[SummaryRow] = field(default_factory=list)
    steps: list[StepResult] = field(default_factory=list)
    log_file: Path | None = None

    @property
    def ok(self) -> bool:
        return self.exit_status == EXIT_OK

    def __bool__(self) -> bool:
        return self.ok


def run_pipeline(
    templates: Sequence[str],
    experiments: Sequence[str],
    *,
    run_config: dict | None = None,
    echo: Callable[[str], None] | None = None,
    error: Callable[[str], None] | None = None,
    base_model: str | None = None,
    log_file: Path | None = None,
    verbose: bool = False,
    force: bool = False,
    progress: TextIO | None = None,
) -> RunOutcome:
    """Materialise ingest, then per template its dataset and adapters (and evaluations).

    Only what is stale runs: a step whose assets' code, inputs and config are unchanged since
    their last materialisation prints "up to date" and is skipped, unless ``force``.

    ``echo`` gets the progress lines and the summary (stdout by default), ``error`` the one line
    per failure (stderr by default). With ``log_file``, everything else written to stderr (Dagster's log, library
    warnings, the training subprocess' output) goes to that file instead of the terminal.
    ``progress`` gets the live line of each training and evaluation step (stdout when ``echo``
    is the default; none when the caller takes the lines itself).
    """
    from echo_pipeline.operations.pool import PoolWaitInterrupted

    if echo is None:  # flushed line by line: a "waiting for pool" line must show at once

        def echo(line: str) -> None:
            print(line, flush=True)

        progress = progress or sys.stdout

    with _stderr_to(log_file) as terminal_stderr:
        err = error or (lambda line: print(line, file=terminal_stderr, flush=True))
        try:
            outcome = _run(
                templates,
                experiments,
                run_config or {},
                echo,
                err,
                base_model,
                verbose,
                force,
                progress,
            )
        except PoolWaitInterrupted as stop:
            err(f"{stop}: stopped while waiting for the gpu pool; nothing claimed, nothing trained")
            outcome = RunOutcome(128 + stop.signum)
    outcome.log_file = log_file
    if outcome.exit_status != EXIT_OK and log_file is not None:
        echo(f"full log: {log_file}")
    return outcome


def _run(
    templates: Sequence[str],
    experiments: Sequence[str],
    run_config: dict,
    echo: Callable[[str], None],
    err: Callable[[str], None],
    base_model: str | None,
    verbose: bool,
    force: bool = False,
    progress: TextIO | None = None,
) -> RunOutcome:
    import dagster as dg

    from echo_pipeline.definitions import (
        ALL_ASSETS,
        ALL_CHECKS,
        BaseModelResource,
        adapter_key,
        build_resources,
        stale_reasons,
    )
    from echo_pipeline.operations.pool import (
        POOL,
        PoolWaitInterrupted,
        free_dead_runner_claims,
        pool_slot,
        run_granularity,
    )

    ensure_dagster_home()
    instance = dg.DagsterInstance.get()
    for run_id in reclaim_abandoned_runs(instance):
        echo(f"run {run_id[:8]}: its echo-pipeline process is gone; marked failed, pool slot freed")
    for run_id in free_dead_runner_claims(instance):
        echo(
            f"pool slot of run {run_id[:8]} freed: the echo-pipeline process that claimed it is gone"
        )
    gate = run_granularity(instance)
    if not gate:
        echo(
            f"note: {instance.root_directory}/dagster.yaml enforces pools per op: a step waiting "
            "for the gpu pool spins a core (dagster 1.13 bug); add `granularity: run` under "
            "concurrency > pools (see echo_pipeline/operations/dagster.yaml)"
        )
    for line in pool_holders(instance):
        echo(line)
    resources = build_resources()
    if base_model:
        resources["base_model"] = BaseModelResource(source=base_model)
    tags = {RUNNER_PID_TAG: str(os.getpid()), RUNNER_HOST_TAG: socket.gethostname()}
    # asset name -> the op that computes it (raw_chat_export and chat_messages share one)
    op_of = {key.to_user_string(): asset.op.name for asset in ALL_ASSETS for key in asset.keys}
    names = set(op_of)

    pooled = {key.to_user_string() for a in ALL_ASSETS if a.op.pool == POOL for key in a.keys}

    def stale(selection: list[str], partition_key) -> dict[str, list[str]]:
        """The assets of ``selection`` (a chain, upstream first) that must run, with why."""
        reasons: dict[str, list[str]] = {}
        for asset in selection:
            if force:
                reasons[asset] = ["--force"]
            elif reasons:  # an asset upstream in this step runs: so does everything after it
                reasons[asset] = [f"{next(iter(reasons))} runs first"]
            else:
                op_config = (run_config.get("ops", {}).get(op_of[asset]) or {}).get("config")
                why = stale_reasons(instance, asset, partition_key, op_config, resources)
                if why:
                    reasons[asset] = why
        return reasons

    def step(selection: list[str], partition_key=None, label: str = "") -> StepResult:
        selected = [s for s in selection if s in names]
        why = stale(selected, None if partition_key is None else str(partition_key))
        if not why:
            outcome = StepResult(label, ok=True, up_to_date=True)
            if "evaluation_report" in selected:
                outcome.report = _latest_report(instance, partition_key)
            echo(f"{label:<40} up to date")
            steps.append(outcome)
            return outcome
        quiet = ([f"{next(iter(why))} runs first"], ["--force"], ["never materialised"])
        for asset, reasons in why.items():
            if reasons not in quiet:
                echo(f"  {asset}: {'; '.join(reasons)}")
        stale_ops = {op_of[s] for s in why}  # an op's assets run together (one multi-asset)
        selected = [s for s in selected if op_of[s] in stale_ops]
        run_id = str(uuid.uuid4())
        in_pool = gate and bool(pooled & set(selected))
        live = _step_progress(label, progress, run_config, partition_key, selected)
        started = time.perf_counter()
        try:
            with (
                pool_slot(instance, run_id, echo=echo) if in_pool else contextlib.nullcontext(),
                _replies_counted(live),
            ):
                if live is not None:
                    live.start()
                result = _materialize(
                    dg,
                    [*ALL_ASSETS, *ALL_CHECKS],
                    selected,
                    run_id=run_id,
                    instance=instance,
                    resources=resources,
                    partition_key=partition_key,
                    tags=tags,
                    run_config=_config_for(run_config, {op_of[s] for s in selected}, live),
                    progress=live,
                )
        except PoolWaitInterrupted:
            raise
        except Exception as exc:  # invalid run config and the like: raised before any run
            outcome = StepResult(label, ok=False, problems=[f"{label}: {_exception_line(exc)}"])
        else:
            outcome = _step_result(dg, result, label, verbose)
        finally:
            if live is not None:
                live.close()
        outcome.seconds = time.perf_counter() - started
        status = "ok" if outcome.ok else "FAILED"
        run = f"  (run {outcome.run_id[:8]})" if outcome.run_id else ""
        echo(f"{label:<40} {status}{run}")
        for note in _check_notes(dg, result) if outcome.run_id else []:
            echo(note)
        for line in outcome.problems:
            err(line)
        steps.append(outcome)
        if outcome.interrupted:
            raise _Interrupted
        return outcome

    steps: list[StepResult] = []
    rows: list[SummaryRow] = []
    try:
        memory = _memory_k(run_config) > 0
        _steps(templates, experiments, step, rows, names, adapter_key, echo, memory)
    except _Interrupted:
        return RunOutcome(EXIT_INTERRUPTED, rows, steps)
    for line in summary_table(rows):
        echo(line)
    failed = [s for s in steps if not s.ok]
    if not failed:
        status = EXIT_OK
    elif any(s.bad_input for s in failed):
        status = EXIT_BAD_INPUT
    else:
        status = EXIT_FAILED
    return RunOutcome(status, rows, steps)


class _Interrupted(Exception):
    """A step was interrupted: the runner stops, without a summary of what did not run."""


def _memory_k(run_config: dict) -> int:
    """The datasets' ``memory_k`` in ``run_config`` (0 when unset)."""
    op = (run_config.get("ops") or {}).get("template_dataset") or {}
    return int((op.get("config") or {}).get("memory_k") or 0)


def _steps(templates, experiments, step, rows, names, adapter_key, echo, memory=False) -> None:
    """Ingest (with the index of my past replies when the datasets put them in the prompt),
    then per template its dataset and adapters, then the comparison.

    A template whose dataset is token for token another's in this run (``model_default`` on a
    base whose own chat template is ChatML) trains nothing: its adapter would be the other's,
    digit for digit. Its dataset is still made; run it alone to train it anyway."""
    ingest_assets = ["raw_chat_export", "chat_messages", "conversation_pairs"]
    ingest = step(ingest_assets + (["reply_memory"] if memory else []), label="ingest")
    trained_on: dict[str, str] = {}  # dataset digest -> the first template of the run with it
    for template in templates:
        dataset = None
        twin = None
        if ingest.ok:
            dataset = step(["template_dataset"], template, label=f"template_dataset[{template}]")
            if dataset.ok and experiments:
                digest = dataset_tokens_digest(template)
                twin = trained_on.setdefault(digest, template) if digest else None
                twin = None if twin == template else twin
        if twin is not None:
            echo(
                f"{'adapter+evaluation[' + template + ']':<40} not trained: its dataset is "
                f"{twin}'s token for token, so its adapter and report would be {twin}'s "
                f"(`--template {template}` alone trains it)"
            )
        for experiment in experiments:
            if not ingest.ok:
                rows.append(SummaryRow(template, experiment, "not run (ingest failed)"))
                continue
            if dataset is not None and not dataset.ok:
                rows.append(SummaryRow(template, experiment, "not run (dataset failed)"))
                continue
            if twin is not None:
                rows.append(SummaryRow(template, experiment, f"same tokens as {twin}"))
                continue
            key = adapter_key(template, experiment)
            trained = step(
                ["lora_adapter", "evaluation_report"], key, label=f"adapter+evaluation[{key}]"
            )
            rows.append(_summary_row(template, experiment, trained))
    if "model_comparison" in names and any(row.status in ("ok", "up to date") for row in rows):
        step(["model_comparison"], label="model_comparison")


def dataset_tokens_digest(template: str) -> str | None:
    """The digest of a materialised template_dataset's tokens, labels and splits (what an
    adapter trains on; the one training records), with its system prompt and EOS; None if
    unreadable."""
    import hashlib

    import pyarrow.parquet as pq

    from echo_pipeline.datasets.render import dataset_digest
    from echo_pipeline.infra.layout import Layout
    from echo_pipeline.infra.records import DatasetManifest
    from echo_pipeline.infra.schemas import TOKEN_COLUMNS

    layout = Layout.default()
    try:
        manifest = DatasetManifest.load(layout.dataset_manifest_path(template))
        columns = ["pair_id", "split", *TOKEN_COLUMNS]
        frame = pq.read_table(layout.dataset_path(template), columns=columns).to_pandas()
    except (OSError, ValueError, KeyError):
        return None
    rendered = f"{manifest.system_prompt}|{manifest.eos_id}|{manifest.base_model_fingerprint}"
    return hashlib.sha256(f"{dataset_digest(frame)}|{rendered}".encode()).hexdigest()[:16]


def _latest_report(instance: Any, partition_key: Any) -> dict[str, Any]:
    """The metadata of the last evaluation_report of a partition, for the summary table."""
    from echo_pipeline.definitions import latest_materialization

    materialization = latest_materialization(instance, "evaluation_report", str(partition_key))
    if materialization is None:
        return {}
    return {k: getattr(v, "value", v) for k, v in materialization.metadata.items()}


def _materialize(
    dg: Any,
    assets: list,
    selection: list[str],
    *,
    run_id: str,
    progress: StepProgress | None = None,
    **kwargs: Any,
) -> Any:
    """``dg.materialize`` (in process, never raising on a failed step) under a run id chosen
    beforehand, so the gpu pool slot can be claimed for that run before it starts. With
    ``progress``, a second Dagster logger beside the console one hands it every log line."""
    loggers = {**dg.default_loggers(), PROGRESS_LOGGER: _progress_logger(dg, progress)}
    defs = dg.Definitions(
        jobs=[dg.define_asset_job(EPHEMERAL_JOB, selection=selection)],
        assets=assets,
        resources=kwargs.pop("resources"),
        loggers=loggers if progress is not None else None,
    )
    job = defs.resolve_job_def(EPHEMERAL_JOB)
    return job.execute_in_process(run_id=run_id, raise_on_error=False, **kwargs)


def _step_result(dg: Any, result: Any, label: str, verbose: bool) -> StepResult:
    """Failures of one run, as lines: failed steps first, then failed blocking checks."""
    outcome = StepResult(label, ok=False, run_id=result.run_id)
    for event in result.get_step_failure_events():  # STEP_FAILURE only: RUN_FAILURE has no data
        data = event.step_failure_data
        op = event.step_key or "?"
        if data is not None and data.error is not None and _is_check_failure(data.error):
            continue  # a blocking check failed: its own line below says which and why
        if data is not None and _has_error(data.error, "DagsterExecutionInterruptedError"):
            outcome.interrupted = True
            outcome.problems.append(f"{label}: {op} interrupted (Ctrl-C or SIGTERM)")
            continue
        line = _failure_line(data) if data is not None else (event.message or "failed")
        outcome.problems.append(f"{label}: {op} failed: {line}")
        if verbose and data is not None and data.error is not None:
            outcome.problems.append(data.error.to_string().rstrip())
        if op in INPUT_OPS and data is not None and data.user_failure_data is not None:
            outcome.bad_input = True
    for evaluation in result.get_asset_check_evaluations():
        if evaluation.passed or evaluation.severity == dg.AssetCheckSeverity.WARN:
            continue
        asset = evaluation.asset_key.to_user_string()
        why = evaluation.description or f"{dict(evaluation.metadata)}"
        outcome.problems.append(f"{label}: check {asset}.{evaluation.check_name} failed: {why}")
        if asset in INPUT_CHECK_ASSETS:
            outcome.bad_input = True
    if not result.success and not outcome.problems:  # a run failure that names no step
        message = next((e.message for e in result.all_events if e.is_run_failure), None)
        outcome.problems.append(f"{label}: run failed: {_first_line(message or 'unknown error')}")
    outcome.ok = result.success and not outcome.problems
    for materialization in result.asset_materializations_for_node("evaluation_report"):
        outcome.report = {k: getattr(v, "value", v) for k, v in materialization.metadata.items()}
    return outcome


def _has_error(error: Any, cls_name: str) -> bool:
    """Whether ``cls_name`` is the error, one of its causes or an error it was raised while
    handling: Ctrl-C during training ends as Pipes' ``TimeoutExpired`` (the child finishes its
    step first) raised while handling Dagster's interruption."""
    pending = [error]
    while pending:
        error = pending.pop()
        if error is None:
            continue
        if error.cls_name == cls_name:
            return True
        pending += [error.cause, getattr(error, "context", None)]
    return False


def _is_check_failure(error: Any) -> bool:
    return _has_error(error, "DagsterAssetCheckFailedError")


def _check_notes(dg: Any, result: Any) -> list[str]:
    """WARN checks that did not pass (the report's "beats the base"): news, not failures."""
    return [
        f"  check {e.check_name} warns: {e.description or dict(e.metadata)}"
        for e in result.get_asset_check_evaluations()
        if not e.passed and e.severity == dg.AssetCheckSeverity.WARN
    ]


def _first_line(text: str) -> str:
    lines = [line.strip() for line in str(text).strip().splitlines() if line.strip()]
    return lines[0] if lines else ""


def _failure_line(data: Any) -> str:
    """The error's own first line: a Failure's description, else ``Class: message`` of the
    innermost user error (Dagster wraps user code errors in its own)."""
    user = data.user_failure_data
    if user is not None and user.description:
        return _first_line(user.description)
    error = data.error
    while (
        error is not None
        and error.cause is not None
        and (
            (error.cls_name or "").startswith("Dagster") or "dagster" in error.message.split(":")[0]
        )
    ):
        error = error.cause
    if error is None:
        return "unknown error"
    message = _first_line(error.message)
    head, _, rest = message.partition(": ")
    if rest and "." in head and " " not in head:  # "module.Class: text" -> "Class: text"
        message = f"{head.rsplit('.', 1)[-1]}: {rest}"
    return message


def _exception_line(exc: BaseException) -> str:
    text = _first_line(str(exc))
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _summary_row(template: str, experiment: str, step: StepResult) -> SummaryRow:
    status = "up to date" if step.up_to_date else "ok" if step.ok else "FAILED"
    row = SummaryRow(template, experiment, status)
    if not step.ok:
        failed_ops = [p.split(": ", 2)[1] for p in step.problems if p.count(": ") >= 2]
        if failed_ops:
            row.status = f"FAILED ({failed_ops[0].removesuffix(' failed')})"
    report = step.report
    if report:
        row.verdict = str(report.get("verdict") or "-")
        base, adapter = report.get("base_reply_loss"), report.get("adapter_reply_loss")
        if base is not None and adapter is not None:
            row.reply_loss = f"{float(base):.3f} -> {float(adapter):.3f}"
        row.report = str(report.get("report_path") or "-")
    return row


def summary_table(rows: Sequence[SummaryRow]) -> list[str]:
    """The end-of-run table: per template x experiment, status, verdict, reply loss, report."""
    header = ("template", "experiment", "status", "verdict", "reply loss base -> adapter", "report")
    cells = [header] + [
        (r.template, r.experiment, r.status, r.verdict, r.reply_loss, r.report) for r in rows
    ]
    widths = [max(len(c[i]) for c in cells) for i in range(len(header) - 1)]
    lines = ["", "summary"]
    for c in cells:
        lines.append(
            "  ".join(v.ljust(w) for v, w in zip(c[:-1], widths, strict=True)) + "  " + c[-1]
        )
    return lines


@contextlib.contextmanager
def _stderr_to(log_file: Path | None) -> Iterator[TextIO]:
    """Send file descriptor 2 (Dagster's console log, warnings, the Pipes child's output) to
    ``log_file``; yield a stream on the terminal's stderr for the lines meant for the user."""
    if log_file is None:
        yield sys.stderr
        return
    log_file.parent.mkdir(parents=True, exist_ok=True)
    sys.stderr.flush()
    saved = os.dup(2)
    with open(log_file, "ab") as log:
        os.dup2(log.fileno(), 2)
    terminal = os.fdopen(os.dup(saved), "w", buffering=1, encoding="utf-8", errors="replace")
    try:
        yield terminal
    finally:
        with contextlib.suppress(Exception):
            sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        terminal.close()


def default_log_file() -> Path:
    from echo_pipeline.infra.layout import Layout

    return Layout.default().logs_dir() / f"run-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"


_UNFINISHED = ("STARTING", "STARTED", "CANCELING")


def _unfinished_runs(instance: Any) -> list[Any]:
    import dagster as dg

    statuses = [dg.DagsterRunStatus[name] for name in _UNFINISHED]
    return list(instance.get_runs(filters=dg.RunsFilter(statuses=statuses)))


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
        if pid is None or run.tags.get(RUNNER_HOST_TAG) != host or pid_alive(int(pid)):
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


# Fields of evaluation_report's config that bound how many held-out pairs it looks at; whichever
# the config class has (the evaluation's config evolves) are set by --eval-max-pairs.
EVAL_PAIR_BOUNDS = ("num_prompts", "max_loss_examples", "max_pairs", "max_eval_pairs")


def quick_run_config(
    run_config: dict, *, max_steps: int | None = None, eval_max_pairs: int | None = None
) -> dict:
    """``run_config`` with the CLI's quick-trial bounds added (they win over the file's)."""
    ops = {name: dict(op) for name, op in (run_config.get("ops") or {}).items()}

    def set_config(op: str, values: dict) -> None:
        op_config = dict(ops.get(op, {}).get("config") or {})
        op_config.update(values)
        ops[op] = {**ops.get(op, {}), "config": op_config}

    if max_steps is not None:
        set_config("lora_adapter", {"max_steps": max_steps})
    if eval_max_pairs is not None:
        from echo_pipeline.definitions import EvaluationReportConfig

        fields = EvaluationReportConfig.model_fields
        set_config(
            "evaluation_report",
            {name: eval_max_pairs for name in EVAL_PAIR_BOUNDS if name in fields},
        )
    return {**run_config, "ops": ops} if ops else dict(run_config)


QUIET_LOGGING = {"loggers": {"console": {"config": {"log_level": "INFO"}}}}
PROGRESS_LOGGER = "echo_progress"  # the Dagster logger that feeds a step's live line


def _config_for(run_config: dict, op_names: set[str], progress: Any = None) -> dict:
    ops = {k: v for k, v in run_config.get("ops", {}).items() if k in op_names}
    loggers = QUIET_LOGGING
    if progress is not None:
        loggers = {"loggers": {**QUIET_LOGGING["loggers"], PROGRESS_LOGGER: {}}}
    return {**loggers, **({"ops": ops} if ops else {})}


def _step_progress(
    label: str,
    stream: TextIO | None,
    run_config: dict,
    partition_key: Any,
    selected: Sequence[str],
) -> StepProgress | None:
    """The live line of a step that trains or evaluates (none for the quick ones, or when the
    caller takes the lines itself)."""
    if stream is None or not {"lora_adapter", "evaluation_report"} & set(selected):
        return None
    recipe = None
    if "lora_adapter" in selected:
        recipe = _recipe(run_config, partition_key)
    return StepProgress(label, stream, recipe=recipe)


def _recipe(run_config: dict, partition_key: Any) -> Any:
    """The TrainingConfig the step's lora_adapter will train with (None if the config is wrong:
    the run itself then says why)."""
    from echo_pipeline.definitions import LoraConfig
    from echo_pipeline.training.experiments import experiment_config

    op_config = (run_config.get("ops", {}).get("lora_adapter") or {}).get("config") or {}
    try:
        overrides = LoraConfig(**op_config).overrides()
        return experiment_config(partition_key.keys_by_dimension["experiment"], overrides)
    except Exception:
        return None


def _progress_logger(dg: Any, progress: StepProgress | None) -> Any:
    """A Dagster logger whose handler gives each user log line (not Dagster's own events) to
    ``progress``: the Pipes child's training steps arrive this way, as does the evaluation's plan."""

    class ToProgress(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            meta = getattr(record, "dagster_meta", None) or {}
            if progress is None or meta.get("dagster_event") is not None:
                return
            with contextlib.suppress(Exception):  # a progress line never fails a step
                progress.on_log(str(meta.get("orig_message") or record.getMessage()))

    @dg.logger
    def echo_progress(init_context: Any) -> logging.Logger:
        log = logging.getLogger(f"echo_pipeline.infra.progress.{init_context.run_id}")
        log.propagate = False
        log.setLevel(logging.INFO)
        log.handlers = [ToProgress()]
        return log

    return echo_progress


@contextlib.contextmanager
def _replies_counted(progress: StepProgress | None) -> Iterator[None]:
    """The evaluation's generated replies counted on the step's live line."""
    if progress is None:
        yield
        return
    from echo_pipeline.serving.chat import replies_counted

    with replies_counted(progress.on_replies):
        yield


def which(program: str) -> str:
    """The venv's own copy of a console script, else the one on PATH."""
    beside = Path(os.sys.executable).with_name(program)
    return str(beside) if beside.exists() else (shutil.which(program) or program)
