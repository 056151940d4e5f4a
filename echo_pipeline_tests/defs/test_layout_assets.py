"""One layout through Dagster: the IO manager's base_dir moves every artefact, and the dataset's
manifest carries the system prompt (naming me, even without context turns) to the adapter."""

from __future__ import annotations

import dagster as dg
import pytest

from echo_pipeline.definitions import ALL_ASSETS, ALL_CHECKS, build_resources
from echo_pipeline.defs.io_manager import ParquetIOManager
from echo_pipeline.defs.partitions import adapter_key
from echo_pipeline.defs.resources import MlflowResource
from echo_pipeline.infra.layout import Layout
from echo_pipeline.infra.records import DatasetManifest


class UntrackedMlflow(MlflowResource):
    """No store to create: these tests stop before anything is tracked."""

    def ensure_experiment(self) -> str:
        return "0"


class StopBeforeTraining(Exception):
    pass


@pytest.fixture
def elsewhere(pipeline_env):
    """Data under a custom base_dir, not under ECHO_DATA_DIR; pairs without context turns."""
    root = pipeline_env / "elsewhere"
    resources = build_resources() | {
        "io_manager": ParquetIOManager(base_dir=str(root)),
        "mlflow_tracking": UntrackedMlflow(),
    }

    def materialize(selection, partition_key=None, ops=None, **kwargs):
        return dg.materialize(
            [*ALL_ASSETS, *ALL_CHECKS],
            selection=selection,
            partition_key=partition_key,
            resources=resources,
            run_config={"ops": ops or {}},
            **kwargs,
        )

    pairs = {"conversation_pairs": {"config": {"context_turns": 0, "test_min_pairs": 0}}}
    assert materialize(
        ["raw_chat_export", "chat_messages", "conversation_pairs"], ops=pairs
    ).success
    assert materialize(["template_dataset"], "chatml").success
    return Layout(root), materialize


def test_the_dataset_and_its_manifest_land_under_the_io_managers_base_dir(elsewhere):
    layout, _ = elsewhere
    assert layout.dataset_path("chatml").exists() and layout.jsonl_dir("chatml").is_dir()
    assert not Layout.default().dataset_path("chatml").exists()
    manifest = DatasetManifest.load(layout.dataset_manifest_path("chatml"))
    # No context turn names me (context_turns=0): the name comes from the pairs, not "me".
    assert manifest.me_names == ("alex",) and manifest.me_ids
    assert manifest.system_prompt.startswith("You are alex.")
    assert manifest.template == "chatml" and manifest.max_tokens == 512


def test_lora_adapter_reads_the_dataset_where_the_io_manager_wrote_it(elsewhere, monkeypatch):
    from echo_pipeline.training import adapters

    layout, materialize = elsewhere
    jobs = []

    def capture(job, on_progress=None):
        jobs.append(job)
        raise StopBeforeTraining

    monkeypatch.setattr(adapters, "run_adapter_job", capture)
    ops = {"lora_adapter": {"config": {"out_of_process": False}}}
    result = materialize(["lora_adapter"], adapter_key("chatml", "demo"), ops, raise_on_error=False)
    assert not result.success and len(jobs) == 1
    [job] = jobs
    assert job.dataset_path == layout.dataset_path("chatml")
    assert job.adapter_dir == layout.adapter_dir("chatml", "demo")
    assert job.work_dir == layout.training_work_dir("chatml", "demo")
    manifest = DatasetManifest.load(layout.dataset_manifest_path("chatml"))
    assert job.system_prompt == manifest.system_prompt and job.me_names == ["alex"]


def test_lora_adapter_without_a_manifest_says_to_rematerialise_the_dataset(elsewhere):
    layout, materialize = elsewhere
    layout.dataset_manifest_path("chatml").unlink()
    ops = {"lora_adapter": {"config": {"out_of_process": False}}}
    result = materialize(["lora_adapter"], adapter_key("chatml", "demo"), ops, raise_on_error=False)
    failure = next(e for e in result.all_events if e.is_step_failure)
    assert "re-materialise template_dataset" in failure.step_failure_data.error.message
