"""Out-of-process entry point for one adapter job (Dagster Pipes, or plain shell).

Under Dagster the ``lora_adapter`` asset launches this with ``PipesSubprocessClient``: the
Dagster process stays light (no torch in it), logs and metrics stream back through Pipes, and
the same command runs unchanged in a GPU pod under ``PipesK8sClient``. Without Dagster:
``python -m echo_pipeline.train_job job.json`` (a JSON of :class:`AdapterJob` fields).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from echo_pipeline.adapters import AdapterJob, AdapterOutcome, run_adapter_job


def outcome_metadata(outcome: AdapterOutcome) -> dict:
    """What the asset's materialisation shows, in Dagster metadata form."""
    metadata = {
        "adapter_path": {"raw_value": str(outcome.adapter_dir), "type": "path"},
        "mlflow_run_id": outcome.run_id,
        "mlflow_run": {"raw_value": outcome.run_url, "type": "url"},
        "dataset_digest": outcome.dataset_digest,
        "fingerprint": outcome.fingerprint,
        "resumed_from_step": outcome.resumed_from_step if outcome.resumed_from_step is not None else -1,
        **{k: float(v) for k, v in outcome.metrics.items()},
    }
    if outcome.model_uri:
        metadata["mlflow_model_uri"] = outcome.model_uri
    if outcome.interrupted_runs:
        metadata["resumes_interrupted_runs"] = ",".join(outcome.interrupted_runs)
    return metadata


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv:
        job = AdapterJob.from_dict(json.loads(Path(argv[0]).read_text(encoding="utf-8")))
        outcome = run_adapter_job(job, on_progress=lambda step, m: print(f"step {step}: {m}", flush=True))
        print(json.dumps(outcome_metadata(outcome), indent=2))
        return 0

    from dagster_pipes import open_dagster_pipes

    with open_dagster_pipes() as pipes:
        job = AdapterJob.from_dict(pipes.get_extra("job"))

        def progress(step: int, metrics: dict[str, float]) -> None:
            pipes.log.info(f"step {step}: " + "  ".join(f"{k} {v:.4g}" for k, v in metrics.items()))

        outcome = run_adapter_job(job, on_progress=progress)
        pipes.report_asset_materialization(
            metadata=outcome_metadata(outcome), data_version=outcome.fingerprint
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
