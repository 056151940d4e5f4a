"""One config per stage: the launchpad configs are derived from the core dataclasses, so every
core setting can be set from the launchpad, with the core's default, bounds and description."""

import dataclasses

import dagster as dg
import pytest

from echo_pipeline.defs.evaluation import EvaluationReportConfig
from echo_pipeline.defs.pairs import PairsConfig
from echo_pipeline.defs.preference import PreferenceStageConfig
from echo_pipeline.defs.provenance import NOT_IN_PROVENANCE
from echo_pipeline.defs.training import LoraConfig
from echo_pipeline.evaluation.config import EvaluationConfig
from echo_pipeline.infra.settings import settings_of, speed_only
from echo_pipeline.pairs.pairing_config import PairingConfig
from echo_pipeline.preference.dpo import PreferenceConfig
from echo_pipeline.serving.generation import GenerationSettings
from echo_pipeline.training.config import TrainingConfig, fingerprint_run
from echo_pipeline.training.experiments import experiment_config

#: A value off the default for each TrainingConfig field, valid for the core.
CHANGED = {
    "lora_r": 8,
    "lora_alpha": 16,
    "lora_dropout": 0.1,
    "target_modules": ["q_proj", "v_proj"],
    "learning_rate": 3e-4,
    "warmup_ratio": 0.1,
    "warmup_steps": 3,
    "min_lr_ratio": 0.1,
    "max_steps": 7,
    "epochs": 2.0,
    "max_steps_cap": 50,
    "pack_tokens": 256,
    "grad_accum": 2,
    "max_grad_norm": 0.5,
    "weight_decay": 0.01,
    "eval_every": 5,
    "eval_max_pairs": 16,
    "early_stopping_patience": 2,
    "early_stopping_min_delta": 0.01,
    "restore_best": False,
    "checkpoint_every": 3,
    "keep_checkpoints": 1,
    "log_every": 1,
    "seed": 7,
    "quantization": "none",
    "dtype": "float32",
    "gradient_checkpointing": True,
    "adapter_dtype": "float32",
    "torch_threads": 1,
    "packed_attention": "model",
}


def test_every_training_setting_can_be_set_from_the_launchpad_and_reaches_the_recipe():
    names = {s.name for s in settings_of(TrainingConfig)}
    assert names == {f.name for f in dataclasses.fields(TrainingConfig)} == set(CHANGED)
    config = LoraConfig(**CHANGED)
    recipe = experiment_config("demo", config.overrides())
    assert {name: getattr(recipe, name) for name in CHANGED} == CHANGED
    assert LoraConfig().overrides() == {}  # unset: the recipe's own values
    # peft's keyword arrives as the string it is
    assert LoraConfig(target_modules=["all-linear"]).overrides() == {"target_modules": "all-linear"}


def test_the_launchpad_shows_the_core_description_default_and_bounds():
    field = LoraConfig.model_fields["lora_r"]
    assert field.description == "LoRA rank. (Default 16.)" and field.default is None
    with pytest.raises(Exception, match="greater than or equal to 1"):
        LoraConfig(lora_r=0)
    for name, setting in {s.name: s for s in settings_of(PairingConfig)}.items():
        if name != "me":
            assert PairsConfig.model_fields[name].default == setting.default, name
            assert PairsConfig.model_fields[name].description == setting.description, name
    with pytest.raises(Exception, match="less than 1"):
        PairsConfig(val_fraction=1.0)


def test_the_evaluation_config_of_the_launchpad_is_the_core_one_field_for_field():
    assert EvaluationReportConfig().evaluation_config() == EvaluationConfig()
    core = {s.name for s in (*settings_of(EvaluationConfig), *settings_of(GenerationSettings))}
    assert set(EvaluationReportConfig.model_fields) == core
    made = EvaluationReportConfig(
        num_prompts=10, baselines=["replay", "base+memory"], top_p=0.5, heldout_split="val"
    ).evaluation_config()
    assert (made.num_prompts, made.baselines, made.generation.top_p, made.heldout_split) == (
        10,
        ("replay", "base+memory"),
        0.5,
        "val",
    )
    assert set(PreferenceStageConfig.model_fields) == {
        *(s.name for s in settings_of(PreferenceConfig)),
        "human_pairs",
    }


def test_what_a_fingerprint_leaves_out_is_marked_once_on_the_core():
    assert (
        NOT_IN_PROVENANCE["lora_adapter"]
        == speed_only(TrainingConfig)
        == {
            "checkpoint_every",
            "keep_checkpoints",
            "log_every",
            "torch_threads",
            "packed_attention",
        }
    )
    base = TrainingConfig()
    for name in speed_only(TrainingConfig):
        changed = dataclasses.replace(base, **{name: CHANGED[name]})
        assert fingerprint_run(changed, [], []) == fingerprint_run(base, [], [])
    assert fingerprint_run(dataclasses.replace(base, seed=1), [], []) != (
        fingerprint_run(base, [], [])
    )
    assert NOT_IN_PROVENANCE["evaluation_report"] == {"torch_threads"}


def test_a_derived_config_runs_in_a_real_dagster_step():
    @dg.asset
    def recipe(config: LoraConfig) -> dict:
        return experiment_config("demo", config.overrides()).to_dict()

    result = dg.materialize(
        [recipe], run_config={"ops": {"recipe": {"config": {"lora_r": 4, "dtype": "float32"}}}}
    )
    made = result.output_for_node("recipe")
    assert (made["lora_r"], made["dtype"]) == (4, "float32")
