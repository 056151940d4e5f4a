"""Named training recipes: the ``experiment`` dimension of the adapter partitions.

A partition key like ``chatml|demo`` names a template and a recipe, so several configs per
template coexist in the UI and in MLflow. Run config can still override any field; the
overrides are logged and fingerprinted like the rest.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from echo_pipeline.training import TrainingConfig

EXPERIMENTS: dict[str, dict[str, Any]] = {
    # A few minutes per template on 2 CPU cores: enough to move the style on the sample.
    "demo": {
        "max_steps": 40,
        "pack_tokens": 512,
        "learning_rate": 1e-3,
        "warmup_steps": 4,
        "eval_every": 10,
        "checkpoint_every": 10,
        "log_every": 2,
    },
    # What `echo-pipeline run --export` trains on a real export, sized for 2 CPU cores: two passes
    # over the train split, capped at 120 steps of 1,024 tokens (about 10 minutes at 200 tokens/s),
    # a peak rate low enough not to collapse a small base onto one reply, and the adapter with
    # the lowest validation loss kept. Tuned on the real exports (benchmarks/RESULTS.md).
    "echo": {
        "epochs": 2.0,
        "max_steps_cap": 120,
        "pack_tokens": 1024,
        "learning_rate": 5e-4,
        "warmup_ratio": 0.05,
        "min_lr_ratio": 0.1,
        "eval_every": 20,
        "checkpoint_every": 20,
        "log_every": 5,
    },
    # The recipe for a real export on a GPU: two epochs of 2k-token packs.
    "standard": {"epochs": 2.0, "pack_tokens": 2048, "eval_every": 50, "checkpoint_every": 100},
    # More capacity for large exports.
    "wide": {
        "epochs": 2.0,
        "pack_tokens": 2048,
        "lora_r": 64,
        "lora_alpha": 128,
        "eval_every": 50,
        "checkpoint_every": 100,
    },
}


#: The preference stage's recipe per supervised recipe (PreferenceConfig fields): DPO on the
#: adapter of experiment ``name``, against its own sampled replies. Unlisted recipes get
#: PreferenceConfig's defaults.
PREFERENCE_RECIPES: dict[str, dict[str, Any]] = {
    # Minutes on 2 CPU cores: a few dozen train prompts, a handful of DPO steps.
    "demo": {"max_prompts": 32, "max_steps": 8, "pairs_per_step": 4, "checkpoint_every": 4},
    # A real export: every train prompt once, two samples each, one pass over the pairs.
    "echo": {"samples_per_prompt": 2, "epochs": 1.0, "pairs_per_step": 8, "max_steps": 0},
}


def preference_config(name: str, overrides: dict[str, Any] | None = None) -> Any:
    """The preference recipe for the adapter of experiment ``name``, with ``overrides`` (None
    values ignored) applied: a :class:`~echo_pipeline.preference.PreferenceConfig`."""
    from echo_pipeline.preference import PreferenceConfig

    if name not in EXPERIMENTS:
        raise ValueError(f"unknown experiment {name!r}; known: {', '.join(EXPERIMENTS)}")
    fields = PREFERENCE_RECIPES.get(name, {}) | {
        k: v for k, v in (overrides or {}).items() if v is not None
    }
    return PreferenceConfig(**fields)


def experiment_config(name: str, overrides: dict[str, Any] | None = None) -> TrainingConfig:
    """The recipe ``name`` with ``overrides`` (None values ignored) applied."""
    if name not in EXPERIMENTS:
        raise ValueError(f"unknown experiment {name!r}; known: {', '.join(EXPERIMENTS)}")
    config = replace(TrainingConfig(), **EXPERIMENTS[name])
    fields = {k: v for k, v in (overrides or {}).items() if v is not None}
    return replace(config, **fields) if fields else config
