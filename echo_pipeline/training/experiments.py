"""Named training recipes: the ``experiment`` dimension of the adapter partitions.

A partition key like ``chatml|demo`` names a template and a recipe, so several configs per
template coexist in the UI and in MLflow. Run config can still override any field; the
overrides are logged and fingerprinted like the rest.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from echo_pipeline.training.config import TrainingConfig

EXPERIMENTS: dict[str, dict[str, Any]] = {
    # About a minute and a half per template on 2 idle CPU cores: enough to move the style on
    # the sample. Validation loss at the end only (a forward pass over the split costs several
    # training steps here), a checkpoint half way.
    "demo": {
        "max_steps": 32,
        "pack_tokens": 512,
        "learning_rate": 1e-3,
        "warmup_steps": 4,
        "eval_every": 0,
        "checkpoint_every": 16,
        "log_every": 2,
    },
    # What `echo-pipeline run --export` trains on a real export, sized for 2 CPU cores: two passes
    # over the train split, capped at 120 steps of 1,024 tokens (about 10 minutes at 200 tokens/s),
    # a peak rate low enough not to collapse a small base onto one reply, and the adapter with
    # the lowest validation loss kept. Tuned on the real exports (benchmarks/RESULTS.md).
    # Validation at steps 60 and 120 on at most 64 pairs: a pass over a long export's whole
    # split (135 pairs) cost as much as 13 training steps here, three of them a quarter of the
    # training's minutes; the best step was the last on every long export measured, and 64
    # pairs place the temperature within 0.02 (RESULTS sections 14-16). Two passes keep the
    # guard against over-fitting a short export.
    "echo": {
        "epochs": 2.0,
        "max_steps_cap": 120,
        "pack_tokens": 1024,
        "learning_rate": 5e-4,
        "warmup_ratio": 0.05,
        "min_lr_ratio": 0.1,
        "eval_every": 60,
        "eval_max_pairs": 64,
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


#: The demo's held-out splits (`echo-pipeline run --demo`): 4 % test and 2 % validation pairs
#: of the sample (45 and 23 pairs) instead of 10 % each. Training scores the test split before
#: and after, and the validation split; a reply-loss pass costs about 1.5 CPU seconds a pair
#: here (measured: 75 CPU s for 48 pairs), so at 10 % these passes cost more than the training.
#: A user's export keeps the defaults.
DEMO_PAIRS: dict[str, Any] = {"val_fraction": 0.02, "test_fraction": 0.04, "test_min_pairs": 40}

#: What `make demo` (`echo-pipeline run --demo`) evaluates with, so the whole demo fits in ten
#: minutes on 2 CPU cores: 24 held-out prompts, one sampled draw per prompt for each model (the
#: report says how many prompts and draws it used), 12 train prompts for the discriminator and
#: reply loss on 16 pairs where it has to score them itself (training's own, over the whole
#: test split, is taken when it recorded one). A run config
#: file's own evaluation settings win; a user's export (`--export`, the `echo` recipe) is
#: evaluated in full: 100 prompts, 2 adapter draws each.
DEMO_EVALUATION: dict[str, Any] = {
    "num_prompts": 24,
    "samples_per_prompt": 1,
    "base_samples_per_prompt": 1,
    "discriminator_prompts": 12,
    "max_loss_examples": 16,
}


def experiment_config(name: str, overrides: dict[str, Any] | None = None) -> TrainingConfig:
    """The recipe ``name`` with ``overrides`` (None values ignored) applied."""
    if name not in EXPERIMENTS:
        raise ValueError(f"unknown experiment {name!r}; known: {', '.join(EXPERIMENTS)}")
    config = replace(TrainingConfig(), **EXPERIMENTS[name])
    fields = {k: v for k, v in (overrides or {}).items() if v is not None}
    return replace(config, **fields) if fields else config
