"""The code location: every asset, check, resource, schedule and sensor of echo_pipeline.

Kept import-light (no torch, transformers or mlflow at module level) so `dagster dev` and the
web UI load it in about a second.
"""

from __future__ import annotations

import dagster as dg

from echo_pipeline.defs.io_manager import ParquetIOManager
from echo_pipeline.defs.ingest import ingest_assets, ingest_checks
from echo_pipeline.defs.resources import BaseModelResource

defs = dg.Definitions(
    assets=[*ingest_assets],
    asset_checks=[*ingest_checks],
    resources={
        "io_manager": ParquetIOManager(),
        "base_model": BaseModelResource(),
    },
)
