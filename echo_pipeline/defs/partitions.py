"""Partitions: one dataset per template; one adapter per template and experiment."""

from __future__ import annotations

import warnings

import dagster as dg

from echo_pipeline.datasets.templates import TEMPLATE_NAMES
from echo_pipeline.training.experiments import EXPERIMENTS

EXPERIMENT_NAMES = tuple(EXPERIMENTS)

template_partitions = dg.StaticPartitionsDefinition(list(TEMPLATE_NAMES))
experiment_partitions = dg.StaticPartitionsDefinition(list(EXPERIMENT_NAMES))
adapter_partitions = dg.MultiPartitionsDefinition(
    {"template": template_partitions, "experiment": experiment_partitions}
)
with warnings.catch_warnings():  # beta since 1.6 and stable in practice; keep the CLI output clean
    warnings.simplefilter("ignore", dg.BetaWarning)
    dataset_for_adapter = dg.MultiToSingleDimensionPartitionMapping(
        partition_dimension_name="template"
    )


def adapter_key(template: str, experiment: str) -> dg.MultiPartitionKey:
    return dg.MultiPartitionKey({"template": template, "experiment": experiment})
