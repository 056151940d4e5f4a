"""The preference stage through Dagster on the bundled sample: sampled pairs, a human rating
file beside them, a DPO adapter tracked in MLflow, and its evaluation report.

Budgeted like the training assets' test: two supervised steps, four prompts with one short
sample each, two DPO steps, a two-prompt evaluation.
"""

from __future__ import annotations

import json
import os

import mlflow
import pyarrow.parquet as pq
import pytest
from run_configs import QUICK_EVALUATION, SMALL_HELDOUT, TINY_TRAINING_IN_STEP
from test_training_assets import materialize

from echo_pipeline.defs.partitions import adapter_key
from echo_pipeline.defs.preference import preference_paths
from echo_pipeline.evaluation.feedback import Rating, record_rating
from echo_pipeline.infra.layout import Layout
from echo_pipeline.infra.provenance import PROVENANCE_METADATA_KEY, Provenance, digest_of
from echo_pipeline.infra.schemas import PREFERENCE_PAIRS
from echo_pipeline.infra.storage import file_sha256

TINY_PREFERENCE = {
    "max_prompts": 4,
    "samples_per_prompt": 1,
    "max_new_tokens": 8,
    "max_steps": 2,
    "pairs_per_step": 2,
    "checkpoint_every": 0,
}


def _metadata(result, asset):
    return {
        k: v.value for k, v in result.asset_materializations_for_node(asset)[0].metadata.items()
    }


@pytest.mark.slow
def test_preference_chain_trains_on_sampled_and_rated_pairs(pipeline_env):
    assert materialize(
        ["raw_chat_export", "chat_messages", "conversation_pairs"], ops=SMALL_HELDOUT
    ).success
    assert materialize(["template_dataset"], "chatml").success
    key = adapter_key("chatml", "demo")
    assert materialize(["lora_adapter"], key, ops=TINY_TRAINING_IN_STEP).success

    pairs = materialize(
        ["preference_pairs"], key, ops={"preference_pairs": {"config": TINY_PREFERENCE}}
    )
    assert pairs.success
    layout = Layout.default()
    paths = preference_paths(layout, "chatml", "demo")
    sampled = pq.read_table(paths["preference_pairs"])
    assert sampled.schema == PREFERENCE_PAIRS and sampled.num_rows >= 1
    assert set(sampled.column("adapter").to_pylist()) == {"demo|chatml"}
    assert _metadata(pairs, "preference_pairs")["rows"] == sampled.num_rows

    # A rating file: one rating of a train prompt, one of a held-out prompt (skipped).
    dataset = pq.read_table(layout.dataset_path("chatml"), columns=["pair_id", "split"])
    splits = dict(
        zip(dataset.column("pair_id").to_pylist(), dataset.column("split").to_pylist(), strict=True)
    )
    train_id = next(p for p, s in splits.items() if s == "train")
    heldout_id = next(p for p, s in splits.items() if s != "train")
    ratings = pipeline_env / "ratings.jsonl"
    with ratings.open("w", encoding="utf-8") as out:
        for pair_id in (train_id, heldout_id):
            row = {
                "pair_id": pair_id,
                "context": [],
                "prompt_author": "sam",
                "prompt": "(shown on the page)",
                "chosen": "ya sounds good",
                "rejected": "I would be delighted to assist you with that.",
                "source": "human_rating",
                "adapter": "demo|chatml",
                "created_at": "2026-12-06T06:00:00Z",
            }
            out.write(json.dumps(row) + "\n")

    # And the chat page's own ratings of a message typed there (no pair of the dataset: its
    # prompt is rendered from its text): found without any setting.
    for reply, rating in (("ya lunch sounds good", "sounds_like_me"), ("Certainly!", "not_me")):
        record_rating(
            layout.root,
            Rating(str(key), "turn-1", [], "sam", "lunch?", reply, rating),
        )
    config = TINY_PREFERENCE | {"human_pairs": [str(ratings)]}
    adapter = materialize(
        ["preference_adapter"], key, ops={"preference_adapter": {"config": config}}
    )
    assert adapter.success
    meta = _metadata(adapter, "preference_adapter")
    assert meta["dpo_steps"] == 2
    out = paths["adapter"]
    lineage = json.loads((out / "echo_metadata.json").read_text())
    assert lineage["experiment"] == "demo+dpo"
    assert lineage["training"]["sft_adapter"] == str(layout.adapter_dir("chatml", "demo"))
    assert lineage["training"]["preference_pairs"]["human_rating"] == 2
    # its provenance holds what both rating files say (the page's found without a setting),
    # so a new rating on the page makes a new adapter
    recorded = Provenance.from_json(meta[PROVENANCE_METADATA_KEY])
    page = paths["work"] / "chat_page_ratings.parquet"
    assert recorded.inputs["human_pairs"] == digest_of(sorted(map(file_sha256, [ratings, page])))

    client = mlflow.MlflowClient(tracking_uri=os.environ["MLFLOW_TRACKING_URI"])
    run = client.get_run(meta["mlflow_run_id"])
    assert run.data.metrics["pairs_human_rating"] == 2
    assert run.data.metrics["pairs_self_sample"] == sampled.num_rows
    assert run.data.metrics["pairs_skipped_heldout_pair"] == 1
    assert run.data.metrics["pairs_used"] == sampled.num_rows + 2
    assert run.data.params["pref.beta"] == "0.1"
    assert run.data.tags["echo.sft_run_id"] == lineage["training"]["sft_run_id"]
    (pairs_input,) = [d for d in run.inputs.dataset_inputs if "preference" in d.dataset.name]
    assert pairs_input.dataset.digest
    assert (
        "sft_test_reply_loss" in run.data.metrics and "adapter_test_reply_loss" in run.data.metrics
    )

    # A second round samples from round 1's adapter; round 1 itself is reused, not retrained.
    again = materialize(
        ["preference_adapter"], key, ops={"preference_adapter": {"config": config | {"rounds": 2}}}
    )
    assert again.success
    second = client.get_run(_metadata(again, "preference_adapter")["mlflow_run_id"])
    assert second.data.metrics["rounds_reused"] == 1
    assert second.data.metrics["round2_dpo_steps"] == 2
    round_two = second.data.metrics["pairs_used"]
    assert sampled.num_rows + 2 < round_two <= 2 * sampled.num_rows + 2

    report = materialize(
        ["preference_report"], key, ops={"preference_report": QUICK_EVALUATION["evaluation_report"]}
    )
    assert report.success
    report_meta = _metadata(report, "preference_report")
    assert (paths["report"] / "report.html").is_file()
    evaluation = client.get_run(report_meta["mlflow_run_id"])
    # the report is a child of the latest DPO run, as evaluation_report is of the supervised run
    assert evaluation.data.tags["echo.training_run_id"] == second.info.run_id
    assert evaluation.data.tags["echo.experiment"] == "demo+dpo"
    assert "adapter_reply_loss" in report_meta
