"""The code location: whatever ``echo_pipeline/defs/`` defines, found the way ``[tool.dg]`` in
pyproject.toml says, with the project-wide policy applied once, here.

Kept import-light (no torch, transformers or mlflow at module level) so `dagster dev` and the
web UI load it in about a second.
"""

from __future__ import annotations

import warnings

import dagster as dg

from echo_pipeline.defs.evaluation import EvaluationReportConfig
from echo_pipeline.defs.partitions import adapter_key
from echo_pipeline.defs.preference import preference_paths
from echo_pipeline.defs.provenance import CODE_VERSIONS, latest_materialization
from echo_pipeline.defs.resources import BaseModelResource, build_resources
from echo_pipeline.defs.staleness import stale_reasons
from echo_pipeline.defs.training import LoraConfig
from echo_pipeline.infra.paths import PROJECT_ROOT

OWNERS = ["team:echo-pipeline"]


def _with_policy(found: dg.Definitions) -> dg.Definitions:
    with warnings.catch_warnings():  # "preview" since 1.9, and the one way to set policy once
        warnings.simplefilter("ignore", dg.PreviewWarning)
        return found.map_asset_specs(func=lambda spec: spec.replace_attributes(owners=OWNERS))


def _load() -> tuple[dg.Definitions, list[dg.AssetsDefinition], list]:
    """The code location, and the assets and checks as their modules define them (the runner
    and tests build their own Definitions from those, with their own resources). One
    Definitions object at module scope: Dagster refuses a module with two."""
    found = dg.load_from_defs_folder(path_within_project=PROJECT_ROOT)
    assets = [a for a in found.assets or [] if isinstance(a, dg.AssetsDefinition)]
    return _with_policy(found), assets, list(found.asset_checks or [])


defs, ALL_ASSETS, ALL_CHECKS = _load()

__all__ = ["ALL_ASSETS", "ALL_CHECKS", "build_resources", "defs"]
# what the shell runner asks of the Dagster layer
__all__ += ["BaseModelResource", "EvaluationReportConfig", "adapter_key"]
__all__ += ["latest_materialization", "stale_reasons"]
__all__ += ["CODE_VERSIONS", "LoraConfig", "preference_paths"]
