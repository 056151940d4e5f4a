"""Batched generation for evaluation: the adapter and the base model on the same prompts.

Prompts are the training template's inference prompts (``ChatSession.generate`` left-pads a
batch and stops at the template's EOS). They are batched shortest first, so a batch wastes
little on padding, and the replies come back in the caller's order. The base model is the
same loaded model with the adapter switched off, so only one copy of the weights is in memory.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from echo_pipeline.infra.settings import setting
from echo_pipeline.training.threads import torch_threads  # noqa: F401 (re-exported for the evaluation)

#: Which tokens a repetition penalty may fall on (GenerationSettings.penalty_scope).
PENALTY_SCOPES = ("prompt", "reply")

#: The sampling temperature where an adapter has none of its own: trained without a validation
#: split (an export of under about 200 pairs gives its held-out pairs to the test split), or
#: before training measured one. 1.0 is what the measurement gave on every adapter measured
#: (0.98-1.06, on real channels and the sample), and a fixed 0.7 sampled those clones colder
#: than that: a reader told them from me more easily (benchmarks/RESULTS.md section 15).
DEFAULT_TEMPERATURE = 1.0


@dataclass(frozen=True)
class GenerationSettings:
    """How replies are decoded: sampled, as people chat, with a fixed seed per draw.

    Greedy decoding makes a small clone collapse onto its most likely reply ("Ha" to every
    prompt, on a real chat). The defaults: the adapter's own temperature (the one that best
    predicts my validation replies, measured by training: ``temperature=None``; else
    ``DEFAULT_TEMPERATURE``), nucleus 0.9, and a mild repetition penalty on the reply's own
    tokens (on the whole prompt, as transformers has it, it kept a trained clone from stopping
    and from naming the people it answers). ``do_sample=False`` gives greedy decoding, for a
    deterministic look at the single most likely reply.
    """

    max_new_tokens: int = setting(
        48, "Bound on reply length; a reply that hits it did not stop.", ge=1
    )
    batch_size: int = setting(32, "Prompts generated together (left-padded).", ge=1)
    do_sample: bool = setting(
        True, "Sample, as people chat (off: greedy, one most-likely reply per prompt)."
    )
    temperature: float | None = setting(
        None,
        "Sampling temperature (only with do_sample). Unset: the adapter's own, the one that "
        "best predicted my validation replies in training (1.0 where it has none).",
        gt=0,
    )
    top_p: float = setting(0.9, "Nucleus sampling mass (only with do_sample).", gt=0, le=1)
    repetition_penalty: float = setting(1.1, "Penalty on tokens already written (1: off).", ge=1)
    # "prompt", as transformers' ``repetition_penalty`` does, also penalises the template's stop
    # token (``<|im_end|>`` closes every prompt turn) and the conversation's own names and words.
    # "reply": only the tokens the reply has written so far, the loop guard it is meant to be.
    penalty_scope: Literal["prompt", "reply"] = setting(
        "reply",
        "Tokens the repetition penalty falls on: 'prompt' (the prompt's and the reply's, as "
        "transformers does: the stop token and the conversation's names too) or 'reply' (only "
        "the reply's own).",
    )
    seed: int = setting(0, "Seeds the choice of prompts and the sampling.")

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1 or self.batch_size < 1:
            raise ValueError("max_new_tokens and batch_size must be at least 1")
        if self.do_sample and (self.sampling_temperature <= 0 or not 0 < self.top_p <= 1):
            raise ValueError("sampling needs temperature > 0 and 0 < top_p <= 1")
        if self.repetition_penalty < 1:
            raise ValueError("repetition_penalty must be >= 1 (1: off)")
        if self.penalty_scope not in PENALTY_SCOPES:
            raise ValueError(f"penalty_scope is 'prompt' or 'reply', not {self.penalty_scope!r}")

    @property
    def sampling_temperature(self) -> float:
        return DEFAULT_TEMPERATURE if self.temperature is None else self.temperature

    def for_adapter(self, calibrated: float | None) -> GenerationSettings:
        """These settings with the adapter's ``calibrated`` temperature where none was set."""
        if self.temperature is not None or calibrated is None:
            return self
        return dataclasses.replace(self, temperature=calibrated)

    def generate_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "max_new_tokens": self.max_new_tokens,
            "do_sample": self.do_sample,
        }
        if self.do_sample:
            kwargs |= {"temperature": self.sampling_temperature, "top_p": self.top_p}
        if self.repetition_penalty != 1:
            key = (
                "reply_repetition_penalty"
                if self.penalty_scope == "reply"
                else "repetition_penalty"
            )
            kwargs[key] = self.repetition_penalty
        return kwargs

    def describe(self) -> str:
        """How the replies were decoded, in words for a report."""
        penalty = f"repetition penalty {self.repetition_penalty}"
        if self.repetition_penalty != 1 and self.penalty_scope == "reply":
            penalty += " on the reply's own tokens"
        if not self.do_sample:
            return f"greedy, {penalty}"
        return f"sampled: temperature {self.sampling_temperature}, top-p {self.top_p}, {penalty}"


def model_generate_kwargs(decoding: dict[str, Any], prompt_width: int) -> dict[str, Any]:
    """``decoding`` (from :meth:`GenerationSettings.generate_kwargs`) as ``model.generate``
    takes it, for a batch of prompts left-padded to ``prompt_width`` tokens: a penalty on the
    reply's tokens only becomes transformers' processor told to skip the prompt."""
    kwargs = dict(decoding)
    penalty = kwargs.pop("reply_repetition_penalty", None)
    if penalty is not None:
        from transformers import LogitsProcessorList, RepetitionPenaltyLogitsProcessor

        processor = RepetitionPenaltyLogitsProcessor(penalty, prompt_ignore_length=prompt_width)
        kwargs["logits_processor"] = LogitsProcessorList([processor])
    return kwargs


@dataclass(frozen=True)
class GenerationRun:
    """Replies in prompt order, whether each ended at EOS within the bound, and the wall time."""

    texts: list[str]
    stopped: list[bool]
    seconds: float
    batch_size: int

    @property
    def generations_per_s(self) -> float:
        return len(self.texts) / self.seconds if self.seconds > 0 else 0.0


def generate_replies(
    session: Any, prompt_ids: Sequence[list[int]], settings: GenerationSettings
) -> GenerationRun:
    """Generate a reply per prompt with ``session`` (a :class:`~echo_pipeline.serving.chat.ChatSession`)."""
    import torch

    order = sorted(range(len(prompt_ids)), key=lambda i: len(prompt_ids[i]))
    texts: list[str | None] = [None] * len(prompt_ids)
    stopped: list[bool] = [False] * len(prompt_ids)
    torch.manual_seed(settings.seed)
    started = time.perf_counter()
    for start in range(0, len(order), settings.batch_size):
        batch = order[start : start + settings.batch_size]
        replies = session.generate(
            [list(prompt_ids[i]) for i in batch], **settings.generate_kwargs()
        )
        for i, (text, ended) in zip(batch, replies, strict=True):
            texts[i], stopped[i] = text, bool(ended)
    seconds = time.perf_counter() - started
    return GenerationRun([t or "" for t in texts], stopped, seconds, settings.batch_size)


@contextlib.contextmanager
def adapter_disabled(model: Any) -> Iterator[Any]:
    """The base model inside the block: the PEFT model with its adapter switched off."""
    if not hasattr(model, "disable_adapter"):
        raise TypeError(
            f"{type(model).__name__} is not a PEFT model; there is no adapter to switch off"
        )
    with model.disable_adapter():
        yield model


def stop_rate(stopped: Sequence[bool]) -> float:
    """Share of generations that ended with EOS before the max-new-tokens bound."""
    return sum(map(bool, stopped)) / len(stopped) if len(stopped) else 0.0
