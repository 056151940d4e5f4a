"""The shell runner (what ``echo-pipeline run`` / ``make demo`` call): every stage of one
template, in the project's Dagster instance, with per-op run config reaching its op."""

from __future__ import annotations

import shutil

import dagster as dg

from echo_pipeline.defs.training import adapter_dir
from echo_pipeline.paths import data_dir, sample_export_dir
from echo_pipeline.runner import run_pipeline

TINY_RUN = {
    "ops": {
        "conversation_pairs": {"config": {"val_fraction": 0.03, "test_fraction": 0.03}},
        "lora_adapter": {
            "config": {
                "max_steps": 2,
                "pack_tokens": 256,
                "eval_every": 0,
                "checkpoint_every": 0,
                "torch_threads": 1,
            }
        },
        "evaluation_report": {
            "config": {
                "num_prompts": 2,
                "batch_size": 2,
                "max_new_tokens": 8,
                "max_loss_examples": 4,
                "torch_threads": 1,
            }
        },
    }
}


def test_the_runner_takes_one_template_through_every_stage(pipeline_env):
    export = shutil.copytree(sample_export_dir(), pipeline_env / "my_export")
    run_config = {
        "ops": {**TINY_RUN["ops"], "read_chat_exports": {"config": {"path": str(export)}}}
    }
    lines: list[str] = []

    assert run_pipeline(["chatml"], ["demo"], run_config=run_config, echo=lines.append), lines

    steps = [line for line in lines if not line.startswith("  ")]  # indented: check news
    assert [line.split()[0] for line in steps] == [
        "ingest",
        "template_dataset[chatml]",
        "adapter+evaluation[demo|chatml]",  # the multi-partition key: dimensions by name
        "model_comparison",
    ]
    assert all(" ok " in line for line in steps)
    # two steps of training may or may not beat the base: a WARN check says so, not a failure
    assert all(" warns: " in line for line in lines if line.startswith("  check"))
    assert (adapter_dir("chatml", "demo") / "adapter_model.safetensors").exists()
    assert (data_dir() / "evaluation_report").is_dir()
    instance = dg.DagsterInstance.get()  # the runner's instance: DAGSTER_HOME of pipeline_env
    manifest = instance.get_latest_materialization_event(dg.AssetKey("raw_chat_export"))
    assert manifest.asset_materialization.metadata["location"].value == str(export)
