"""Only what changed is re-made: honest code versions, automation that follows a new export
(ingest, then datasets, then the adapters made before with their reports), and a weekly
schedule that requests only stale adapter partitions.

No training here: a previous training is recorded as the instance would hold it (a
materialisation event with its provenance) with its files in place; the runner test trains.
"""

from __future__ import annotations

import datetime
import json
import shutil

import dagster as dg

from echo_pipeline.definitions import ALL_ASSETS, ALL_CHECKS, build_resources, defs
from echo_pipeline.defs.automation import export_folder_sensor, weekly_retraining_schedule
from echo_pipeline.defs.provenance import (
    CODE_VERSIONS,
    adapter_provenance,
    provenance_metadata,
    report_provenance,
)
from echo_pipeline.infra.layout import Layout
from echo_pipeline.infra.paths import sample_export_dir
from echo_pipeline.infra.provenance import function_code_version

ADAPTER = "demo|chatml"  # lora_adapter[template=chatml, experiment=demo], as Dagster prints it
# the ingest job: the reply memory is made with the pairs (INGEST[:3] where no dataset reads it)
INGEST = ["raw_chat_export", "chat_messages", "conversation_pairs", "reply_memory"]
SMALL_HELDOUT = {"val_fraction": 0.03, "test_fraction": 0.03, "test_min_pairs": 0}


def test_every_asset_carries_the_code_version_of_what_it_calls():
    versions = {
        key.to_user_string(): version
        for asset in ALL_ASSETS
        for key, version in asset.code_versions_by_key.items()
    }
    assert versions == {
        "raw_chat_export": CODE_VERSIONS["read_chat_exports"],
        "chat_messages": CODE_VERSIONS["read_chat_exports"],
        **{name: CODE_VERSIONS[name] for name in CODE_VERSIONS if name != "read_chat_exports"},
    }
    assert all(len(v) == 12 and v != "1" for v in versions.values())
    # ... and that version is the one of the function the asset runs, found from the asset
    for asset in ALL_ASSETS:
        function = asset.op.compute_fn.decorated_fn
        expected = function_code_version(function.__module__, function.__name__)
        assert set(asset.code_versions_by_key.values()) == {expected}, function.__name__


def _materialize(instance, selection, partition=None, run_config=None):
    result = dg.materialize(
        [*ALL_ASSETS, *ALL_CHECKS],
        selection=selection,
        partition_key=partition,
        instance=instance,
        resources=build_resources(),
        run_config=run_config or {},
    )
    assert result.success
    return result


def _ingest_config(path) -> dict:
    return {
        "ops": {
            "read_chat_exports": {"config": {"path": str(path)}},
            "conversation_pairs": {"config": SMALL_HELDOUT},
        }
    }


def _record(instance, asset: str, key: str, provenance) -> None:
    """A materialisation event of ``asset[key]`` as a finished run records it: its provenance
    and, as its data version, that provenance's digest."""
    instance.report_runless_asset_event(
        dg.AssetMaterialization(
            asset,
            partition=key,
            metadata=provenance_metadata(provenance),
            tags={"dagster/data_version": provenance.digest()},
        )
    )


def _record_training(instance, key: str, recipe_overrides: dict | None = None) -> None:
    """What a finished training leaves: the adapter's files and its materialisation event,
    with the provenance it was made from (the current dataset, base and recipe)."""
    from echo_pipeline.training.experiments import experiment_config

    experiment, template = key.split("|")
    recipe = experiment_config(experiment, recipe_overrides)
    fingerprint = build_resources()["base_model"].resolve().fingerprint
    folder = Layout.default().adapter_dir(template, experiment)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "echo_metadata.json").write_text("{}", encoding="utf-8")
    _record(
        instance, "lora_adapter", key, adapter_provenance(instance, template, recipe, fingerprint)
    )


def _record_evaluation(instance, key: str) -> None:
    from echo_pipeline.defs.evaluation import EvaluationReportConfig

    experiment, template = key.split("|")
    Layout.default().report_dir(template, experiment).mkdir(parents=True, exist_ok=True)
    _record(
        instance,
        "evaluation_report",
        key,
        report_provenance(instance, key, EvaluationReportConfig()),
    )


def _requested(tick) -> dict[str, set[str]]:
    requested: dict[str, set[str]] = {}
    for key in ("template_dataset", "lora_adapter", "evaluation_report", "model_comparison"):
        partitions = tick.get_requested_partitions(dg.AssetKey(key))
        if partitions:
            requested[key] = {str(p) for p in partitions}
    for key in INGEST:
        if tick.get_num_requested(dg.AssetKey(key)):
            requested[key] = {"-"}
    return requested


def _add_a_message(export_dir) -> None:
    """A new export file beside the old ones: the DM, one message longer (as a later export of
    the same channel is; overlapping messages merge)."""
    source = sorted(export_dir.glob("Direct Messages - sam *].json"))[0]
    data = json.loads(source.read_text(encoding="utf-8"))
    last = dict(data["messages"][-1])
    last.update(id=str(int(last["id"]) + 1), content="one more thing before I go")
    data["messages"].append(last)
    data["messageCount"] = len(data["messages"])
    (export_dir / "Direct Messages - sam (later).json").write_text(json.dumps(data), "utf-8")


def test_a_new_export_leads_to_ingest_then_datasets_then_adapters(pipeline_env, monkeypatch):
    export = shutil.copytree(sample_export_dir(), pipeline_env / "exports")
    monkeypatch.setenv("ECHO_EXPORT_DIR", str(export))
    instance = dg.DagsterInstance.ephemeral()

    # Before: the export ingested, chatml rendered, trained with the demo recipe and evaluated.
    sensor = dg.build_sensor_context(instance=instance)
    assert isinstance(export_folder_sensor(sensor), dg.RunRequest)  # the export, first seen
    _materialize(instance, INGEST, run_config=_ingest_config(export))
    _materialize(instance, ["template_dataset"], partition="chatml")
    _record_training(instance, ADAPTER)
    _record_evaluation(instance, ADAPTER)
    baseline = dg.evaluate_automation_conditions(defs=defs, instance=instance)
    assert _requested(baseline) == {}  # nothing is stale: nothing to do

    sensor = dg.build_sensor_context(instance=instance, cursor=sensor.cursor)
    assert isinstance(export_folder_sensor(sensor), dg.SkipReason)  # nothing new yet
    _add_a_message(export)
    request = export_folder_sensor(sensor)
    assert isinstance(request, dg.RunRequest)
    config = _ingest_config(export)
    assert request.run_config["ops"]["read_chat_exports"] == config["ops"]["read_chat_exports"]
    _materialize(instance, INGEST, run_config=config)  # what the sensor's ingest_job runs

    tick = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=baseline.cursor)
    templates = set(defs.resolve_assets_def("template_dataset").partitions_def.get_partition_keys())
    assert _requested(tick) == {"template_dataset": templates}  # every template, nothing else

    _materialize(instance, ["template_dataset"], partition="chatml")
    tick = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=tick.cursor)
    # the adapter made before (no recipe nobody asked for), with its report in the same run
    assert _requested(tick) == {"lora_adapter": {ADAPTER}, "evaluation_report": {ADAPTER}}

    _record_training(instance, ADAPTER)  # that run trains, then evaluates
    _record_evaluation(instance, ADAPTER)
    tick = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=tick.cursor)
    assert _requested(tick) == {}  # and then all is current: nothing more


def test_the_weekly_schedule_requests_only_what_is_stale(pipeline_env, monkeypatch):
    from echo_pipeline.training.experiments import EXPERIMENTS

    instance = dg.DagsterInstance.get()  # pipeline_env's DAGSTER_HOME: schedules need a real one
    _materialize(instance, INGEST[:3], run_config=_ingest_config(sample_export_dir()))
    _materialize(instance, ["template_dataset"], partition="chatml")
    for key in (ADAPTER, "echo|chatml"):
        _record_training(instance, key)
        _record_evaluation(instance, key)
    when = datetime.datetime(2026, 12, 6, 3, tzinfo=datetime.UTC)

    def tick():
        context = dg.build_schedule_context(instance=instance, scheduled_execution_time=when)
        return weekly_retraining_schedule(context)

    assert isinstance(tick(), dg.SkipReason)  # every adapter current: no run at all

    original = EXPERIMENTS["echo"]["learning_rate"]
    monkeypatch.setitem(EXPERIMENTS["echo"], "learning_rate", original / 5)  # a recipe edited
    (request,) = tick()
    assert request.partition_key == "echo|chatml"
    assert set(request.asset_selection) == {
        dg.AssetKey("lora_adapter"),
        dg.AssetKey("evaluation_report"),
    }
    assert "config changed: learning_rate" in request.tags["echo/stale"]
    monkeypatch.setitem(EXPERIMENTS["echo"], "learning_rate", original)  # ...and put back
    assert isinstance(tick(), dg.SkipReason)

    from echo_pipeline.defs.evaluation import EvaluationReportConfig

    stale_report = report_provenance(instance, ADAPTER, EvaluationReportConfig(num_prompts=7))
    instance.report_runless_asset_event(  # a report made with another config than the default
        dg.AssetMaterialization(
            "evaluation_report", partition=ADAPTER, metadata=provenance_metadata(stale_report)
        )
    )
    (request,) = tick()
    assert request.partition_key == ADAPTER
    assert list(request.asset_selection) == [dg.AssetKey("evaluation_report")]


def test_the_process_count_is_part_of_what_an_adapter_is_made_from(pipeline_env):
    """N processes train N x grad_accum rows a step: another adapter. Threads are not."""
    from echo_pipeline.defs.staleness import stale_reasons

    instance = dg.DagsterInstance.get()
    _record_training(instance, ADAPTER)  # made by one process, before the setting existed
    resources = build_resources()

    def reasons(config: dict) -> list[str]:
        return stale_reasons(instance, "lora_adapter", ADAPTER, config, resources)

    assert reasons({}) == []
    assert reasons({"processes": 1, "torch_threads": 1}) == []
    assert reasons({"processes": 2}) == ["config changed: world_size null -> 2"]
    assert reasons({"nnodes": 2, "rdzv_endpoint": "head:29400"}) == [
        "config changed: world_size null -> 2"
    ]
