"""The export sensor and the weekly schedule, evaluated against a real ephemeral instance."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime

import dagster as dg

from echo_pipeline.definitions import defs
from echo_pipeline.defs.automation import export_folder_sensor, weekly_retraining_schedule
from echo_pipeline.defs.partitions import adapter_key
from echo_pipeline.infra.paths import sample_export_dir

SUNDAY = datetime(2026, 11, 29, 3, 0, tzinfo=UTC)


def test_export_sensor_fires_once_per_content_and_again_on_change(tmp_path, monkeypatch):
    folder = tmp_path / "exports"
    folder.mkdir()
    first = sorted(sample_export_dir().glob("*.json"))[0]
    shutil.copy(first, folder / first.name)
    monkeypatch.setenv("ECHO_EXPORT_DIR", str(folder))
    instance = dg.DagsterInstance.ephemeral()

    context = dg.build_sensor_context(instance=instance, definitions=defs)
    request = export_folder_sensor(context)
    assert isinstance(request, dg.RunRequest)
    assert request.run_config["ops"]["read_chat_exports"]["config"]["path"] == str(folder)

    again = export_folder_sensor(
        dg.build_sensor_context(instance=instance, cursor=context.cursor, definitions=defs)
    )
    assert isinstance(again, dg.SkipReason)

    second = sorted(sample_export_dir().glob("*.json"))[1]
    shutil.copy(second, folder / second.name)
    changed_ctx = dg.build_sensor_context(
        instance=instance, cursor=context.cursor, definitions=defs
    )
    changed = export_folder_sensor(changed_ctx)
    assert isinstance(changed, dg.RunRequest) and changed.run_key != request.run_key


def test_export_sensor_skips_a_missing_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("ECHO_EXPORT_DIR", str(tmp_path / "nowhere"))
    result = export_folder_sensor(
        dg.build_sensor_context(instance=dg.DagsterInstance.ephemeral(), definitions=defs)
    )
    assert isinstance(result, dg.SkipReason) and "does not exist" in str(result.skip_message)


def test_weekly_schedule_is_off_by_default_and_trains_nothing_new():
    """A freshness check: with no adapter made yet there is nothing to keep fresh (it used to
    train the demo recipe for every template; issue #18 made it request only stale adapters)."""
    assert weekly_retraining_schedule.default_status == dg.DefaultScheduleStatus.STOPPED
    with dg.instance_for_test() as instance:
        result = weekly_retraining_schedule(
            dg.build_schedule_context(instance=instance, scheduled_execution_time=SUNDAY)
        )
    assert isinstance(result, dg.SkipReason) and "no adapter" in str(result.skip_message)


def test_weekly_schedule_retrains_what_was_materialised():
    key = str(adapter_key("chatml", "wide"))
    with dg.instance_for_test() as instance:
        instance.report_runless_asset_event(dg.AssetMaterialization("lora_adapter", partition=key))
        requests = list(
            weekly_retraining_schedule(
                dg.build_schedule_context(instance=instance, scheduled_execution_time=SUNDAY)
            )
        )
    assert [r.partition_key for r in requests] == [key]
