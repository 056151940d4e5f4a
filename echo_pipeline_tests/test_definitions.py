"""The code location is what the defs folder holds, with the project-wide policy set once."""

from __future__ import annotations

import dagster as dg

from echo_pipeline.definitions import ALL_ASSETS, ALL_CHECKS, OWNERS, defs
from echo_pipeline.infra.paths import PROJECT_ROOT

ASSET_NAMES = {
    "raw_chat_export",
    "chat_messages",
    "conversation_pairs",
    "reply_memory",
    "template_dataset",
    "lora_adapter",
    "evaluation_report",
    "model_comparison",
    "human_judgements",
    "preference_pairs",
    "preference_adapter",
    "preference_report",
}


def test_everything_in_the_defs_folder_is_found():
    graph = defs.resolve_asset_graph()
    assert {k.to_user_string() for k in graph.get_all_asset_keys()} == ASSET_NAMES
    assert {s.name for s in defs.sensors} == {"export_folder_sensor", "echo_automation"}
    assert {s.name for s in defs.schedules} == {"weekly_retraining_schedule"}
    assert {j.name for j in defs.jobs} == {"ingest_job", "training_job"}
    assert set(defs.resources) >= {"io_manager", "base_model", "mlflow_tracking"}
    assert len(ALL_ASSETS) == 11 and len(ALL_CHECKS) == 1


def test_owners_are_set_once_for_every_asset():
    specs = [spec for asset in defs.assets for spec in asset.specs]
    assert specs and all(spec.owners == OWNERS for spec in specs)
    defs_folder = PROJECT_ROOT / "echo_pipeline" / "defs"
    assert not [p.name for p in defs_folder.glob("*.py") if "OWNERS" in p.read_text("utf-8")]


def test_automation_is_off_until_turned_on():
    assert all(s.default_status == dg.DefaultSensorStatus.STOPPED for s in defs.sensors)
    assert all(s.default_status == dg.DefaultScheduleStatus.STOPPED for s in defs.schedules)


def test_dagster_loads_the_module_as_workspace_yaml_names_it():
    """Dagster's own loader (what `dagster dev` runs): one Definitions object at module scope."""
    import subprocess
    import sys
    from pathlib import Path

    dagster = Path(sys.executable).with_name("dagster")
    listed = subprocess.run(
        [str(dagster), "asset", "list", "-m", "echo_pipeline.definitions"],
        capture_output=True,
        text=True,
        cwd=PROJECT_ROOT,
        timeout=120,
    )
    assert listed.returncode == 0, listed.stderr[-2000:]
    assert set(listed.stdout.split()) == ASSET_NAMES
