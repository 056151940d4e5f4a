"""The reply_memory asset and a dataset with memory on, through real Dagster on the sample."""

from __future__ import annotations

import dagster as dg
import pyarrow.parquet as pq

from echo_pipeline.definitions import ALL_ASSETS, ALL_CHECKS, build_resources
from echo_pipeline.defs.staleness import stale_reasons
from echo_pipeline.infra.layout import Layout
from echo_pipeline.infra.records import DatasetManifest
from echo_pipeline.pairs.memory import MemoryIndex


def test_memory_is_its_own_asset_and_k_shapes_the_dataset(pipeline_env):
    instance = dg.DagsterInstance.get()
    resources = build_resources()

    def materialize(selection, partition=None, config=None):
        result = dg.materialize(
            [*ALL_ASSETS, *ALL_CHECKS],
            selection=selection,
            partition_key=partition,
            instance=instance,
            resources=resources,
            run_config={"ops": {"template_dataset": {"config": config}}} if config else {},
        )
        assert result.success
        return result

    def stale(asset, partition=None, config=None):
        return stale_reasons(instance, asset, partition, config, resources)

    materialize(["raw_chat_export", "chat_messages", "conversation_pairs", "reply_memory"])
    layout = Layout.default()
    pairs = pq.read_table(layout.pairs_path()).to_pandas()
    index = MemoryIndex.load(layout.asset_path(["reply_memory"]))
    train = set(pairs.loc[pairs["split"] == "train", "pair_id"])
    assert len(index) and set(index.pair_ids) <= train  # never a held-out pair
    assert stale("reply_memory") == []

    result = materialize(["template_dataset"], "chatml", {"memory_k": 2})
    checks = {c.check_name: c for c in result.get_asset_check_evaluations()}
    assert checks["template_parity"].passed  # re-retrieved alone, prompt for prompt
    assert checks["template_parity"].metadata["sampled"].value > 0
    manifest = DatasetManifest.load(layout.dataset_manifest_path("chatml"))
    assert manifest.memory_k == 2 and manifest.memory_digest == index.digest()
    materialization = result.asset_materializations_for_node("template_dataset")[0]
    assert materialization.metadata["memory_examples_mean"].value == 2.0  # every row got two
    dataset = pq.read_table(layout.dataset_path("chatml")).to_pandas()
    assert sum(reply.strip() in dataset["prompt_text"][0] for reply in index.replies) >= 2

    # k is part of what the dataset is made from: another k re-renders it (and so re-trains)
    assert stale("template_dataset", "chatml", {"memory_k": 2}) == []
    assert any("memory_k" in r for r in stale("template_dataset", "chatml", {"memory_k": 3}))
    assert any("memory_k" in r for r in stale("template_dataset", "chatml", {}))
