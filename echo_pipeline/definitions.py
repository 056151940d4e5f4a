"""The code location: every asset, check, resource, job, schedule and sensor of echo_pipeline.

Kept import-light (no torch, transformers or mlflow at module level) so `dagster dev` and the
web UI load it in about a second.
"""

from __future__ import annotations

import dagster as dg

from echo_pipeline.base_model import default_base_model
from echo_pipeline.defs.automation import automation_jobs, automation_schedules, automation_sensors
from echo_pipeline.defs.datasets import dataset_assets
from echo_pipeline.defs.evaluation import evaluation_assets
from echo_pipeline.defs.freshness import latest_materialization, stale_reasons
from echo_pipeline.defs.ingest import ingest_assets, ingest_checks
from echo_pipeline.defs.io_manager import ParquetIOManager
from echo_pipeline.defs.resources import BaseModelResource, MlflowResource
from echo_pipeline.defs.training import training_assets


def build_resources() -> dict:
    return {
        "io_manager": ParquetIOManager(),
        # read now, not at import: `echo-pipeline run --base-model` sets ECHO_BASE_MODEL
        "base_model": BaseModelResource(source=default_base_model()),
        "mlflow_tracking": MlflowResource(),
        "pipes_subprocess_client": dg.PipesSubprocessClient(),
    }


ALL_ASSETS = [*ingest_assets, *dataset_assets, *training_assets, *evaluation_assets]
ALL_CHECKS = [*ingest_checks]
__all__ = ["ALL_ASSETS", "ALL_CHECKS", "build_resources", "defs"]
__all__ += ["latest_materialization", "stale_reasons"]  # what the shell runner asks

defs = dg.Definitions(
    assets=ALL_ASSETS,
    asset_checks=ALL_CHECKS,
    jobs=automation_jobs,
    schedules=automation_schedules,
    sensors=automation_sensors,
    resources=build_resources(),
)
