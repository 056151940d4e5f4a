"""The preference stage's recipes: one per supervised recipe (``training.experiments``), since
the stage starts from that adapter and uses it as its DPO reference."""

from __future__ import annotations

from typing import Any

from echo_pipeline.preference.dpo import PreferenceConfig
from echo_pipeline.training.experiments import EXPERIMENTS

#: The preference stage's recipe per supervised recipe (PreferenceConfig fields): DPO on the
#: adapter of experiment ``name``, against its own sampled replies. Unlisted recipes get
#: PreferenceConfig's defaults.
PREFERENCE_RECIPES: dict[str, dict[str, Any]] = {
    # Minutes on 2 CPU cores: a few dozen train prompts, a handful of DPO steps.
    "demo": {"max_prompts": 32, "max_steps": 8, "pairs_per_step": 4, "checkpoint_every": 4},
    # A real export: every train prompt once, two samples each, one pass over the pairs.
    "echo": {"samples_per_prompt": 2, "epochs": 1.0, "pairs_per_step": 8, "max_steps": 0},
}


def preference_config(name: str, overrides: dict[str, Any] | None = None) -> PreferenceConfig:
    """The preference recipe for the adapter of experiment ``name``, with ``overrides`` (None
    values ignored) applied: a :class:`~echo_pipeline.preference.dpo.PreferenceConfig`."""
    if name not in EXPERIMENTS:
        raise ValueError(f"unknown experiment {name!r}; known: {', '.join(EXPERIMENTS)}")
    fields = PREFERENCE_RECIPES.get(name, {}) | {
        k: v for k, v in (overrides or {}).items() if v is not None
    }
    return PreferenceConfig(**fields)
