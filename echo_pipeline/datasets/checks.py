"""The invariants of a template's tokenised dataset, as plain functions: tokenised examples
and the tokenizer in, typed outcomes out."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from echo_pipeline.datasets.prompt import PromptSpec
from echo_pipeline.datasets.templates import auto_bos_token_id
from echo_pipeline.datasets.tokenization import (
    IGNORE_INDEX,
    TokenizedExample,
    stop_token_id,
)

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

from echo_pipeline.infra.checks import CheckOutcome, Outcomes

#: How many whole (untruncated) examples the template parity check re-tokenises.
PARITY_SAMPLE = 64


@dataclass(frozen=True)
class DatasetChecks(Outcomes):
    """The invariants of one template's tokenised dataset: what the model learns to see and stop on."""

    template_parity: CheckOutcome
    eos_labelled: CheckOutcome
    single_bos: CheckOutcome
    token_lengths: CheckOutcome


def example_lengths(examples: Sequence[TokenizedExample]) -> np.ndarray:
    """Tokens per example (``[0]`` for no examples, so statistics over it stay defined)."""
    import numpy as np

    return np.array([len(e.input_ids) for e in examples]) if examples else np.array([0])


def parity_sample(
    examples: Sequence[TokenizedExample], size: int = PARITY_SAMPLE, seed: int = 0
) -> list[int]:
    """Indices of up to ``size`` untruncated examples, drawn the same way on every run.

    Truncated rows are left out: their prompt was cut to fit a reply the inference side cannot
    know (and a cut reply deliberately has no EOS).
    """
    import numpy as np

    whole = np.flatnonzero([not e.truncated for e in examples])
    if not len(whole):
        return []
    rng = np.random.default_rng(seed)
    return [int(i) for i in rng.choice(whole, size=min(size, len(whole)), replace=False)]


def check_template_parity(
    examples: Sequence[TokenizedExample],
    inference_prompt: Callable[[int], Sequence[int]],
    sample: Sequence[int],
) -> CheckOutcome:
    """The ids generation is given for row ``i`` equal the training prompt of example ``i``."""
    mismatched = sum(
        1
        for i in sample
        if list(inference_prompt(i)) != list(examples[i].input_ids[: examples[i].prompt_len])
    )
    return CheckOutcome(
        "template_parity", mismatched == 0, {"sampled": len(sample), "mismatched": mismatched}
    )


def check_eos_labelled(examples: Sequence[TokenizedExample], eos_id: int) -> CheckOutcome:
    """Every whole example ends its labels with EOS, and no prompt token is labelled."""
    bad = sum(
        1
        for e in examples
        if not e.truncated
        and (
            not e.labels
            or e.labels[-1] != eos_id
            or any(label != IGNORE_INDEX for label in e.labels[: e.prompt_len])
        )
    )
    return CheckOutcome("eos_labelled", bad == 0, {"violations": bad, "eos_id": int(eos_id)})


def check_single_bos(examples: Sequence[TokenizedExample], bos_id: int | None) -> CheckOutcome:
    """No example opens with BOS twice (for tokenizers that prepend no BOS, nothing to check)."""
    double = sum(1 for e in examples if bos_id is not None and e.input_ids[:2] == [bos_id, bos_id])
    return CheckOutcome("single_bos", double == 0, {"double_bos": double})


def check_token_lengths(examples: Sequence[TokenizedExample], max_tokens: int) -> CheckOutcome:
    """Every example fits ``max_tokens``; also says how many had to be truncated to fit."""
    too_long = int((example_lengths(examples) > max_tokens).sum())
    truncated = sum(1 for e in examples if e.truncated)
    return CheckOutcome(
        "token_lengths",
        too_long == 0,
        {"max_tokens": max_tokens, "over_max": too_long, "truncated": truncated},
    )


def check_dataset(
    examples: Sequence[TokenizedExample],
    *,
    inference_prompt: Callable[[int], Sequence[int]],
    eos_id: int,
    bos_id: int | None,
    max_tokens: int,
    sample_size: int = PARITY_SAMPLE,
    seed: int = 0,
) -> DatasetChecks:
    """Every dataset invariant, from the examples and the ids that define them.

    ``inference_prompt(i)`` gives the ids chat and evaluation would feed the model for row ``i``
    (see :func:`inference_prompts`); ``eos_id`` is the template's stop id, ``bos_id`` the BOS the
    tokenizer prepends (None when it prepends none).
    """
    return DatasetChecks(
        template_parity=check_template_parity(
            examples, inference_prompt, parity_sample(examples, sample_size, seed)
        ),
        eos_labelled=check_eos_labelled(examples, eos_id),
        single_bos=check_single_bos(examples, bos_id),
        token_lengths=check_token_lengths(examples, max_tokens),
    )


def inference_prompts(
    spec: PromptSpec, tokenizer: Any, pairs: pd.DataFrame, memory: Any = None
) -> Callable[[int], list[int]]:
    """Row ``i`` of ``pairs`` -> the prompt ids inference builds for it (no reply known), by
    :meth:`PromptSpec.prompt_ids`, the builder evaluation, chat and the web page call.

    ``memory`` (a :class:`~echo_pipeline.pairs.memory.ReplyMemory`, or None) retrieves the row's
    examples the way evaluation and chat do: by its prompt, never from its own session."""

    def prompt_ids(i: int) -> list[int]:
        row = pairs.iloc[i]
        examples = (
            memory.examples_for([str(row["prompt"])], [str(row["session_id"])])[0]
            if memory is not None
            else ()
        )
        return spec.prompt_ids(
            tokenizer,
            row["context"],
            row["prompt"],
            prompt_author=row["prompt_author"],
            examples=examples,
        )

    return prompt_ids


def check_template_dataset(
    spec: PromptSpec,
    tokenizer: Any,
    pairs: pd.DataFrame,
    examples: Sequence[TokenizedExample],
    *,
    memory: Any = None,
) -> DatasetChecks:
    """:func:`check_dataset` with the ids taken from ``spec`` and the real ``tokenizer``
    (and, with reply memory on, the examples retrieved again at inference)."""
    return check_dataset(
        examples,
        inference_prompt=inference_prompts(spec, tokenizer, pairs, memory),
        eos_id=stop_token_id(spec.template, tokenizer),
        bos_id=auto_bos_token_id(tokenizer),
        max_tokens=spec.max_tokens,
    )
