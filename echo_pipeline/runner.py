"""Run the whole pipeline from the shell, in the project's Dagster instance.

The runs land in ``.dagster/`` (unless ``DAGSTER_HOME`` says otherwise), so they show in the
web UI exactly as if they had been launched there. Steps run in process: a subprocess per step
costs 16-27 s here and buys nothing for a single-machine run.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

from echo_pipeline.paths import PROJECT_ROOT

INSTANCE_TEMPLATE = Path(__file__).with_name("dagster.yaml")


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
    resources = build_resources()
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


QUIET_LOGGING = {"loggers": {"console": {"config": {"log_level": "INFO"}}}}


def _config_for(run_config: dict, op_names: set[str]) -> dict:
    ops = {k: v for k, v in run_config.get("ops", {}).items() if k in op_names}
    return {**QUIET_LOGGING, **({"ops": ops} if ops else {})}


def which(program: str) -> str:
    """The venv's own copy of a console script, else the one on PATH."""
    beside = Path(os.sys.executable).with_name(program)
    return str(beside) if beside.exists() else (shutil.which(program) or program)
