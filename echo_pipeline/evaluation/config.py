"""What an evaluation measures and how it generates: its one config, light to import (the
Dagster code location derives the report's launchpad config from it)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

from echo_pipeline.evaluation.echo_quality import VerdictThresholds
from echo_pipeline.infra.settings import setting
from echo_pipeline.serving.generation import GenerationSettings


@dataclass(frozen=True)
class EvaluationConfig:
    """What is evaluated and how replies are generated."""

    num_prompts: int = setting(
        100, "Cap on held-out prompts answered; all of them when the split is smaller.", ge=2
    )
    samples_per_prompt: int = setting(
        2, "Sampled adapter replies per prompt (draw k uses seed + k).", ge=1
    )
    # the base rambles to the bound: one draw costs enough
    base_samples_per_prompt: int = setting(1, "Sampled base-model replies per prompt.", ge=1)
    discriminator_prompts: int = setting(
        48,
        "Train prompts each model answers to fit the real-vs-generated discriminator "
        "(0: no discriminator).",
        ge=0,
    )
    generation: GenerationSettings = field(default_factory=GenerationSettings)
    thresholds: VerdictThresholds = field(default_factory=VerdictThresholds)
    # training's own reply loss, over the whole split, is taken where it recorded one
    # (recorded_reply_losses)
    max_loss_examples: int = setting(
        256,
        "Held-out pairs scored for reply loss where the evaluation scores it (0: all).",
        ge=0,
    )
    heldout_split: Literal["test", "val"] = setting(
        "test", "The held-out split answered ('val' is used when the test split is empty)."
    )
    similarity: bool = setting(
        True, "Score relevance with all-MiniLM-L6-v2 (loaded offline from its package)."
    )
    baselines: tuple[str, ...] = setting(
        ("replay",),
        "Sides no training made, scored and judged beside base and adapter ('replay': my real "
        "reply to the most similar train prompt, verbatim).",
    )
    attribution_l2: float = setting(
        1e-3, "L2 penalty of the attribution model (who wrote a reply).", gt=0
    )
    torch_threads: int | None = setting(
        None,
        "CPU threads for the models (unset: the cores idle when the evaluation starts, at most "
        "torch's default, so a busy machine does not collapse it).",
        ge=1,
        speed_only=True,
    )

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
