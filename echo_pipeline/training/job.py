"""Out-of-process entry point for one adapter job (Dagster Pipes, or plain shell).

Under Dagster the ``lora_adapter`` asset launches this with ``PipesSubprocessClient``: the
Dagster process stays light (no torch in it), logs and metrics stream back through Pipes, and
the same command runs unchanged in a GPU pod under ``PipesK8sClient``. Without Dagster:
``python -m echo_pipeline.training.job job.json`` (a JSON of :class:`AdapterJob` fields). On
several processes torchrun starts it once per rank (:func:`launch_command`).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

from echo_pipeline.infra.quiet import quiet_output
from echo_pipeline.training.adapters import (
    AdapterJob,
    AdapterOutcome,
    TrainingStopped,
    run_adapter_job,
)
from echo_pipeline.training.distributed import Ranks, launch_command, process_group, ranks_from_env

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
FAILURE_FILE = "failure.txt"  # in the job's work_dir: why the last subprocess failed
__all__ = ["launch_command", "main"]  # launch_command: the command that runs this module


def failure_file(work_dir: Path) -> Path:
    """Where a failed job leaves its error for the Dagster step: Pipes itself only reports
    "External execution process failed with code 1"."""
    return Path(work_dir) / FAILURE_FILE


def describe_error(error: BaseException) -> str:
    """The error on one line (type and message; long library messages are cut at 2000 chars)."""
    message = " ".join(str(error).split())
    text = f"{type(error).__name__}: {message}" if message else type(error).__name__
    return text if len(text) <= 2000 else text[:1999] + "…"


class StopRequest:
    """SIGINT/SIGTERM ask training to stop at the next step boundary, after a checkpoint.

    Dagster forwards a run's termination to the Pipes subprocess as SIGINT; schedulers and
    ``kill`` send SIGTERM. Either way the step in flight finishes, a checkpoint is written and
    the MLflow run ends KILLED, so the next materialisation resumes there rather than at the last
    periodic checkpoint. A second signal stops at once (as a SIGKILL would: still resumable).
    """

    def __init__(self) -> None:
        self.signum: int | None = None

    def __call__(self, signum: int, frame: object) -> None:
        if self.signum is not None:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        self.signum = signum
        print(
            f"{signal.Signals(signum).name}: stopping after this step", file=sys.stderr, flush=True
        )

    def should_stop(self, step: int) -> bool:
        return self.signum is not None

    @contextlib.contextmanager
    def installed(self) -> Iterator[StopRequest]:
        previous = {s: signal.signal(s, self) for s in STOP_SIGNALS}
        try:
            yield self
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)


def outcome_metadata(outcome: AdapterOutcome) -> dict:
    """What the asset's materialisation shows, in Dagster metadata form."""
    metadata = {
        "adapter_path": {"raw_value": str(outcome.adapter_dir), "type": "path"},
        "mlflow_run_id": outcome.run_id,
        "mlflow_run": {"raw_value": outcome.run_url, "type": "url"},
        "dataset_digest": outcome.dataset_digest,
        "fingerprint": outcome.fingerprint,
        "resumed_from_step": outcome.resumed_from_step
        if outcome.resumed_from_step is not None
        else -1,
        **{k: float(v) for k, v in outcome.metrics.items()},
    }
    if outcome.model_uri:
        metadata["mlflow_model_uri"] = outcome.model_uri
    if outcome.interrupted_runs:
        metadata["resumes_interrupted_runs"] = ",".join(outcome.interrupted_runs)
    return metadata


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    quiet_output()  # the parent's warning filters stay in the parent (ECHO_VERBOSE=1: all logs)
    ranks = ranks_from_env()  # torchrun's, when it launched this process
    with process_group(ranks):
        if argv:
            return _run_from_file(Path(argv[0]))
        if not ranks.is_main:
            return _run_worker_from_pipes(ranks)
        return _run_with_pipes(ranks)


def _run_from_file(job_file: Path) -> int:
    job = AdapterJob.from_dict(json.loads(job_file.read_text(encoding="utf-8")))
    with StopRequest().installed() as stop:
        try:
            outcome = run_adapter_job(
                job,
                on_progress=lambda step, m: print(f"step {step}: {m}", flush=True),
                should_stop=stop.should_stop,
            )
        except TrainingStopped as error:
            print(error, file=sys.stderr, flush=True)
            return 128 + (stop.signum or signal.SIGTERM)
    if outcome is not None:  # rank 0 prints what a worker rank does not have
        print(json.dumps(outcome_metadata(outcome), indent=2))
    return 0


def _run_with_pipes(ranks: Ranks) -> int:
    from dagster_pipes import open_dagster_pipes

    with open_dagster_pipes() as pipes, StopRequest().installed() as stop:
        job = AdapterJob.from_dict(pipes.get_extra("job"))

        def progress(step: int, metrics: dict[str, float]) -> None:
            pipes.log.info(f"step {step}: " + "  ".join(f"{k} {v:.4g}" for k, v in metrics.items()))

        with _failure_recorded(job, ranks):
            outcome = run_adapter_job(job, on_progress=progress, should_stop=stop.should_stop)
        assert outcome is not None  # rank 0
        pipes.report_asset_materialization(
            metadata=outcome_metadata(outcome), data_version=outcome.fingerprint
        )
    return 0


def _run_worker_from_pipes(ranks: Ranks) -> int:
    """A rank other than 0 under Dagster: it reads the job from the Pipes context, but only
    rank 0 opens the message channel (one writer of logs and the materialisation)."""
    from dagster_pipes import PipesDefaultContextLoader, PipesEnvVarParamsLoader

    params = PipesEnvVarParamsLoader().load_context_params()
    with PipesDefaultContextLoader().load_context(params) as context:
        job = AdapterJob.from_dict(context["extras"]["job"])
    with StopRequest().installed() as stop, _failure_recorded(job, ranks):
        run_adapter_job(job, should_stop=stop.should_stop)
    return 0


@contextlib.contextmanager
def _failure_recorded(job: AdapterJob, ranks: Ranks) -> Iterator[None]:
    """Leave the error for the Dagster step. The first failing rank's error is kept: when one
    rank dies, the others fail next with a lost connection, which says nothing of why."""
    try:
        yield
    except TrainingStopped:
        raise
    except Exception as error:
        failure = failure_file(job.work_dir)
        failure.parent.mkdir(parents=True, exist_ok=True)
        text = describe_error(error)
        if ranks.is_distributed:
            lost = any(sign in str(error) for sign in _LOST_PEER)
            cause = _PEER_DIED if lost else ""
            text = f"rank {ranks.rank} of {ranks.world_size}: {cause}{text}"
        with contextlib.suppress(FileExistsError), failure.open("x", encoding="utf-8") as out:
            out.write(text + "\n")
        raise


#: What gloo and NCCL say when the rank at the other end of a collective has gone.
_LOST_PEER = ("closed by peer", "reset by peer", "Broken pipe", "remote process exited")
_PEER_DIED = (
    "another rank stopped without a Python error of its own (killed, or out of memory; "
    "torchrun's summary in the step's output names it): "
)


if __name__ == "__main__":
    sys.exit(main())
