"""evaluation_report and model_comparison through Dagster, on the real base model and MLflow.

No training here: the adapter is a freshly initialised LoRA (it computes exactly what the base
computes), registered in MLflow as a training run with curves and a LoggedModel, the way
``lora_adapter`` leaves things. So the report must find the adapter no better than the base,
and the beats_base check must warn without failing the run.
"""

from __future__ import annotations

import json
from html.parser import HTMLParser
from pathlib import Path

import dagster as dg
import mlflow
import pytest
from run_configs import QUICK_EVALUATION, SMALL_HELDOUT

from echo_pipeline.definitions import ALL_ASSETS, ALL_CHECKS, build_resources
from echo_pipeline.defs.evaluation import evaluation_assets
from echo_pipeline.defs.partitions import adapter_key
from echo_pipeline.evaluation.feedback import Judgement, record_judgement
from echo_pipeline.infra.layout import Layout

ASSETS = [*ALL_ASSETS, *[a for a in evaluation_assets if a not in ALL_ASSETS], *ALL_CHECKS]


def materialize(selection, partition_key=None, ops=None) -> dg.ExecuteInProcessResult:
    return dg.materialize(
        ASSETS,
        selection=selection,
        partition_key=partition_key,
        resources=build_resources(),
        run_config={"ops": {k: v for k, v in (ops or {}).items() if k in selection}},
    )


REAL_SDR = (
    Path(__file__).parents[1]
    / "fixtures"
    / "real"
    / (
        "Hosam-Aldeeb__LLM-Based-Extraction-of-Hardware-Security-Knowledge-from-Unstructured-"
        "Community-Discussions__SDRplusplus_dsp_Jan2025_export.json"
    )
)
SDR_ME = "274976585650536449"  # ryzerth, the SDR++ author


@pytest.fixture
def untrained_chatml_adapter(pipeline_env, base_model):
    """chatml/demo on the sample: data, an untrained adapter, and its 'training run' in MLflow."""
    return _untrained_chatml_adapter(base_model, SMALL_HELDOUT)


def _untrained_chatml_adapter(base_model, pairs_ops):
    """chatml/demo: data materialised, an untrained adapter, and its 'training run' in MLflow."""
    import pyarrow.parquet as pq
    from untrained import write_untrained_adapter

    from echo_pipeline.datasets.render import dataset_digest
    from echo_pipeline.infra.records import DatasetManifest
    from echo_pipeline.infra.tracking import default_tracking_uri, ensure_experiment

    assert materialize(
        ["raw_chat_export", "chat_messages", "conversation_pairs"], ops=pairs_ops
    ).success
    assert materialize(["template_dataset"], "chatml").success
    uri = default_tracking_uri()
    experiment_id = ensure_experiment(uri)
    client = mlflow.MlflowClient(uri)
    run = client.create_run(
        experiment_id,
        run_name="chatml/demo",
        tags={"echo.template": "chatml", "echo.experiment": "demo"},
    )
    for step, loss in enumerate([3.1, 2.7, 2.4], start=1):
        client.log_metric(run.info.run_id, "loss", loss, step=step)
    client.log_metric(run.info.run_id, "eval_loss", 2.6, step=3)
    client.set_terminated(run.info.run_id)
    mlflow.set_tracking_uri(uri)
    model = mlflow.create_external_model(
        name="adapter", source_run_id=run.info.run_id, experiment_id=experiment_id
    )
    layout = Layout.default()
    path = layout.dataset_path("chatml")
    digest = dataset_digest(pq.read_table(path).to_pandas())
    write_untrained_adapter(
        base_model,
        layout.adapter_dir("chatml", "demo"),
        template="chatml",
        experiment="demo",
        system_prompt=DatasetManifest.load(layout.dataset_manifest_path("chatml")).system_prompt,
        dataset={"path": str(path), "digest": digest, "rows": {}},
        mlflow={"tracking_uri": uri, "experiment_id": experiment_id, "run_id": run.info.run_id},
        results={"calibrated_temperature": 0.93},
    )
    return run.info.run_id, model.model_id


def test_report_and_leaderboard_for_an_untrained_adapter(untrained_chatml_adapter):
    training_run_id, model_id = untrained_chatml_adapter
    key = adapter_key("chatml", "demo")
    # Three rounds of "which one is me?" played on the chat page before the report: one fooled.
    for real_side, choice in (("left", "left"), ("right", "left"), ("left", "left")):
        record_judgement(Layout.default().root, Judgement(str(key), "p1", real_side, choice))
    result = materialize(["evaluation_report"], key, ops=QUICK_EVALUATION)
    assert result.success

    [check] = result.get_asset_check_evaluations()
    assert check.check_name == "beats_base" and not check.passed
    assert check.severity == dg.AssetCheckSeverity.WARN
    meta = {
        k: v.value
        for k, v in result.asset_materializations_for_node("evaluation_report")[0].metadata.items()
    }
    assert meta["adapter_reply_loss"] == pytest.approx(meta["base_reply_loss"], rel=1e-4)
    assert meta["dataset_matches_adapter"] is True and meta["mlflow_model_id"] == model_id
    assert "| Attributed to me (higher is better) |" in meta["summary"]
    assert 0.5 < meta["attribution_heldout_balanced_accuracy"] <= 1.0

    out = Layout.default().report_dir("chatml", "demo")
    assert meta["report_path"] == str(out / "report.html")
    page = (out / "report.html").read_text(encoding="utf-8")
    HTMLParser().feed(page)
    assert page.count('src="data:image/png;base64,') == 5  # training curves found in MLflow
    payload = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    assert len(payload["samples"]) == 2 and payload["lineage"]["training_run_id"] == training_run_id
    # Sampled at the temperature training measured for this adapter, and the report says so.
    assert payload["config"]["generation"]["temperature"] == 0.93
    # this adapter recorded no held-out losses, so the evaluation scored them itself
    assert payload["lineage"]["reply_loss_measured_by"] == "evaluation"
    # Replay (my nearest train reply, verbatim) is a side of its own, judged like the models.
    assert payload["sides"] == ["real", "base", "adapter", "replay"]
    replay = payload["verdicts"]["replay"]
    assert meta["replay_verdict"] == replay["label"] != "sounds like you"
    assert any(reason.startswith("memorised: ") for reason in replay["reasons"])
    assert meta["replay_memorised_share"] == 1.0
    assert "| replay (my nearest train reply) |" in meta["summary"].splitlines()[0]
    assert "replay (my nearest train reply)" in page and "memorised_share" in page
    assert "fooled a human reader: 1 of 3 (33 %" in page
    assert payload["lineage"]["human_reader"]["fooled"] == 1

    client = mlflow.MlflowClient()
    evaluation = client.get_run(meta["mlflow_run_id"])
    assert evaluation.data.tags["mlflow.parentRunId"] == training_run_id
    assert evaluation.data.tags["echo.run_kind"] == "evaluation"
    assert evaluation.data.tags["dagster.partition_key"] == str(key)
    assert evaluation.data.metrics["adapter_stop_rate"] == meta["adapter_stop_rate"]
    assert evaluation.data.metrics["human_fooled"] == 1
    assert evaluation.data.metrics["human_judgements"] == 3
    assert evaluation.data.tags["echo.replay_verdict"] == meta["replay_verdict"]
    assert {"replay_in_context", "adapter_known_bigram_rate", "real_memorised_share"} <= set(
        evaluation.data.metrics
    )
    assert {a.path for a in client.list_artifacts(evaluation.info.run_id)} >= {
        "report.html",
        "metrics.json",
        "samples.json",
    }
    linked = {m.key for m in client.get_logged_model(model_id).metrics or []}
    assert {"adapter_reply_loss", "adapter_attributed_share"} <= linked

    board = materialize(["model_comparison"])
    assert board.success
    board_meta = board.asset_materializations_for_node("model_comparison")[0].metadata
    assert board_meta["best"].value == "chatml/demo" and board_meta["adapters"].value == 1
    assert "| 1 | chatml | demo |" in board_meta["leaderboard"].value
    board_dir = Layout.default().comparison_dir()
    assert (board_dir / "leaderboard.html").exists()
    assert (board_dir / "leaderboard.csv").read_text().count("\n") == 2


def test_evaluation_fails_clearly_without_an_adapter(pipeline_env):
    result = dg.materialize(
        ASSETS,
        selection=["evaluation_report"],
        partition_key=adapter_key("chatml", "demo"),
        resources=build_resources(),
        raise_on_error=False,
    )
    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure)
    assert "lora_adapter" in failure.step_failure_data.error.message
    assert "materialise it first" in failure.step_failure_data.error.message


@pytest.mark.slow
def test_on_a_real_chat_an_untrained_adapter_does_not_sound_like_you(
    pipeline_env, base_model, monkeypatch
):
    """The base model's replies on a real channel: fluent, but not this person, and the report
    must say so (an untrained LoRA computes exactly what the base computes)."""
    monkeypatch.setenv("ECHO_EXPORT_DIR", str(REAL_SDR))
    _untrained_chatml_adapter(base_model, {"conversation_pairs": {"config": {"me": [SDR_ME]}}})
    quick_but_sampled = {
        "num_prompts": 10,
        "samples_per_prompt": 1,
        "discriminator_prompts": 10,
        "max_new_tokens": 32,
        "max_loss_examples": 16,
    }
    result = materialize(
        ["evaluation_report"],
        adapter_key("chatml", "demo"),
        ops={"evaluation_report": {"config": quick_but_sampled}},
    )
    assert result.success
    meta = {
        k: v.value
        for k, v in result.asset_materializations_for_node("evaluation_report")[0].metadata.items()
    }
    assert meta["verdict"] != "sounds like you", meta["verdict_reasons"]
    # The base rambles past the bound: the verdict sees the stop rate, not only the texts.
    assert meta["adapter_stop_rate"] < 0.9 and "stop_rate" in meta["verdict_reasons"]
    assert meta["base_verdict"] != "sounds like you"
    [check] = result.get_asset_check_evaluations()
    assert not check.passed and meta["verdict"] in check.description
    report = Layout.default().report_dir("chatml", "demo")
    payload = json.loads((report / "metrics.json").read_text("utf-8"))
    assert payload["verdicts"]["adapter"]["reasons"]
    assert payload["config"]["generation"]["do_sample"] is True
    page = (report / "report.html").read_text(encoding="utf-8")
    assert meta["verdict"] in page
