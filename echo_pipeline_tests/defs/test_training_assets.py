"""Datasets and adapters through Dagster, on the real base model and a real MLflow store.

The training run is budgeted by tokens (two 256-token steps) and the held-out split is made
small through the pairs config, so the whole module stays around a minute on 2 CPU cores.
"""

from __future__ import annotations

import json
import os

import dagster as dg
import mlflow
import pyarrow.parquet as pq
import pytest
from run_configs import SMALL_HELDOUT, TINY_TRAINING

from echo_pipeline.definitions import ALL_ASSETS, ALL_CHECKS, build_resources
from echo_pipeline.defs.partitions import adapter_key
from echo_pipeline.infra.layout import Layout


def materialize(
    selection: list[str], partition_key=None, ops: dict | None = None
) -> dg.ExecuteInProcessResult:
    return dg.materialize(
        [*ALL_ASSETS, *ALL_CHECKS],
        selection=selection,
        partition_key=partition_key,
        resources=build_resources(),
        run_config={"ops": {k: v for k, v in (ops or {}).items() if k in selection}},
    )


@pytest.fixture
def chatml_dataset(pipeline_env):
    assert materialize(
        ["raw_chat_export", "chat_messages", "conversation_pairs"], ops=SMALL_HELDOUT
    ).success
    result = materialize(["template_dataset"], "chatml")
    assert result.success
    return result


def test_template_dataset_partition_writes_parquet_jsonl_and_passes_checks(chatml_dataset):
    checks = {e.check_name: e.passed for e in chatml_dataset.get_asset_check_evaluations()}
    assert checks == {
        "template_parity": True,
        "eos_labelled": True,
        "single_bos": True,
        "token_lengths": True,
    }
    table = pq.read_table(Layout.default().dataset_path("chatml"))
    assert {
        "pair_id",
        "split",
        "prompt_text",
        "completion_text",
        "text",
        "input_ids",
        "labels",
    } <= set(table.column_names)
    jsonl = Layout.default().jsonl_dir("chatml")
    first = json.loads((jsonl / "train.jsonl").read_text().splitlines()[0])
    assert set(first) == {"inputs"} and first["inputs"].startswith("<|im_start|>system")
    assert first["inputs"].endswith("<|im_end|>")


@pytest.mark.slow
def test_lora_adapter_trains_tracks_lineage_and_beats_the_base(chatml_dataset, pipeline_env):
    key = adapter_key("chatml", "demo")
    result = materialize(["lora_adapter"], key, ops=TINY_TRAINING)
    assert result.success
    meta = {
        k: v.value
        for k, v in result.asset_materializations_for_node("lora_adapter")[0].metadata.items()
    }
    # The point of training: the adapter predicts my held-out replies better than the base.
    assert meta["adapter_test_reply_loss"] < meta["base_test_reply_loss"]

    out = Layout.default().adapter_dir("chatml", "demo")
    for name in (
        "adapter_model.safetensors",
        "adapter_config.json",
        "echo_metadata.json",
        "tokenizer.json",
    ):
        assert (out / name).exists(), name
    tokenizer_config = json.loads((out / "tokenizer_config.json").read_text())
    saved_template = (
        tokenizer_config.get("chat_template") or (out / "chat_template.jinja").read_text()
    )
    assert saved_template.startswith("{% for m in messages %}<|im_start|>")  # the training format
    lineage = json.loads((out / "echo_metadata.json").read_text())
    assert (
        lineage["template"] == "chatml" and lineage["dataset"]["digest"] == meta["dataset_digest"]
    )
    assert lineage["base_model"]["fingerprint"].startswith("sha256:")
    assert lineage["mlflow"]["run_id"] == meta["mlflow_run_id"]

    client = mlflow.MlflowClient(tracking_uri=os.environ["MLFLOW_TRACKING_URI"])
    run = client.get_run(meta["mlflow_run_id"])
    assert run.info.run_name == "chatml/demo" and run.info.status == "FINISHED"
    assert run.data.params["train.lora_r"] == "16" and run.data.params["train.max_steps"] == "2"
    assert run.data.params["template"] == "chatml"
    # dtype "auto", resolved on this machine (the suite pins fp32 with ECHO_CPU_BF16=0)
    assert run.data.params["train.resolved_dtype"] == "float32"
    assert lineage["training"]["dtype"] == "auto"
    assert lineage["training"]["resolved_dtype"] == "float32"
    assert run.data.tags["dagster.partition_key"] == str(key)
    assert run.data.tags["dagster.asset_key"] == "lora_adapter"
    assert run.data.tags["dagster.run_id"] == result.run_id
    assert "dagster.code_version" in run.data.tags and "mlflow.source.git.commit" in run.data.tags
    history = client.get_metric_history(run.info.run_id, "loss")
    assert history and max(m.step for m in history) == 2
    assert "tokens_per_s" in run.data.metrics and run.data.metrics["padding_waste"] <= 0.05
    # The temperature chat and the evaluation sample at, measured on the validation replies.
    temperature = lineage["results"]["calibrated_temperature"]
    assert 0.5 <= temperature <= 1.5 and run.data.metrics["calibrated_temperature"] == temperature
    inputs = {d.dataset.name: d for d in run.inputs.dataset_inputs}
    assert {"chatml-train", "chatml-val", "chatml-test"} <= set(inputs)
    assert all(d.dataset.digest for d in inputs.values())
    versions = client.search_model_versions("name='echo-chatml'")
    assert versions and versions[0].run_id == run.info.run_id

    from peft import PeftModel

    from echo_pipeline.training.base_model import load_causal_lm, resolve_base_model

    model = PeftModel.from_pretrained(load_causal_lm(resolve_base_model()), out)
    assert model.peft_config["default"].r == 16


def test_training_fails_fast_when_tracking_is_unreachable(chatml_dataset, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")  # discard port: nothing listens
    result = dg.materialize(
        [*ALL_ASSETS, *ALL_CHECKS],
        selection=["lora_adapter"],
        partition_key=adapter_key("chatml", "demo"),
        resources=build_resources(),
        raise_on_error=False,
    )
    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure)
    assert "unreachable" in failure.step_failure_data.error.message
    assert not Layout.default().adapter_dir("chatml", "demo").exists()


def test_a_failure_in_the_training_subprocess_names_its_cause(chatml_dataset, monkeypatch):
    """Pipes alone says "External execution process failed with code 1"; the step's failure
    carries the subprocess's own error instead (here: a hub model that is not cached, offline)."""
    from echo_pipeline.defs.resources import BaseModelResource

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    resources = build_resources() | {"base_model": BaseModelResource(source="nobody/not-cached")}
    result = dg.materialize(
        [*ALL_ASSETS, *ALL_CHECKS],
        selection=["lora_adapter"],
        partition_key=adapter_key("chatml", "demo"),
        resources=resources,
        run_config={"ops": TINY_TRAINING},
        raise_on_error=False,
    )

    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure)
    message = failure.step_failure_data.error.message
    assert "training subprocess failed" in message and "nobody/not-cached" in message
    assert not Layout.default().adapter_dir("chatml", "demo").exists()
