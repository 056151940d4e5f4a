"""Every dataset check can fail: each is fed a real input that passes, then one broken the way it
guards against, with no Dagster and no model weights."""

from __future__ import annotations

import dataclasses

import pytest

from echo_pipeline.datasets import checks
from echo_pipeline.datasets.checks import (
    check_dataset,
    check_template_dataset,
    parity_sample,
)
from echo_pipeline.datasets.prompt import PromptSpec
from echo_pipeline.datasets.tokenization import (
    IGNORE_INDEX,
    TokenizedExample,
    build_template_dataset,
)
from echo_pipeline_tests.pairs.test_pair_checks import outcomes

DATASET_CHECKS = ["template_parity", "eos_labelled", "single_bos", "token_lengths"]


BOS, EOS = 1, 2


def example(prompt: list[int], reply: list[int], *, eos: bool = True, truncated=False):
    ids = [*prompt, *reply, *([EOS] if eos else [])]
    labels = [IGNORE_INDEX] * len(prompt) + ids[len(prompt) :]
    return TokenizedExample(ids, labels, len(prompt), truncated)


def good_examples() -> list[TokenizedExample]:
    return [
        example([BOS, 10, 11, 12], [20, 21]),
        example([BOS, 13, 14], [22]),
        example([BOS, 15], [23, 24, 25]),
    ]


def run_dataset_checks(examples, prompts=None, *, bos_id=BOS, max_tokens=8):
    """The checks with the inference prompts of ``prompts`` (default: each example's own)."""
    prompts = prompts or [e.input_ids[: e.prompt_len] for e in examples]
    return check_dataset(
        examples,
        inference_prompt=lambda i: prompts[i],
        eos_id=EOS,
        bos_id=bos_id,
        max_tokens=max_tokens,
    )


def test_good_examples_pass_every_dataset_check_in_spec_order():
    result = run_dataset_checks(good_examples())
    assert [o.name for o in result] == DATASET_CHECKS
    assert result.passed
    got = outcomes(result)
    assert got["template_parity"].metadata == {"sampled": 3, "mismatched": 0}
    assert got["eos_labelled"].metadata == {"violations": 0, "eos_id": EOS}
    assert got["single_bos"].metadata == {"double_bos": 0}
    assert got["token_lengths"].metadata == {"max_tokens": 8, "over_max": 0, "truncated": 0}


def test_an_inference_prompt_that_differs_from_the_training_prompt_fails_template_parity():
    examples = good_examples()
    prompts = [e.input_ids[: e.prompt_len] for e in examples]
    prompts[1] = [BOS, 13, 99]  # e.g. a template rendering the speaker differently at inference
    result = run_dataset_checks(examples, prompts)
    assert result.failed == ["template_parity"]
    assert result.template_parity.metadata == {"sampled": 3, "mismatched": 1}


def test_a_prompt_one_token_short_fails_template_parity():
    examples = good_examples()
    prompts = [e.input_ids[: e.prompt_len] for e in examples]
    prompts[0] = prompts[0][:-1]
    assert run_dataset_checks(examples, prompts).failed == ["template_parity"]


@pytest.mark.parametrize(
    "broken",
    [
        example([BOS, 10, 11], [20, 21], eos=False),  # the reply never learns to stop
        TokenizedExample([BOS, 10, 20, EOS], [IGNORE_INDEX, 10, 20, EOS], 2),  # prompt labelled
        TokenizedExample([BOS, 10, 20, EOS], [IGNORE_INDEX] * 4, 2),  # EOS masked
        TokenizedExample([BOS, 10], [], 2),  # no labels at all
    ],
    ids=["missing-eos", "labelled-prompt-token", "eos-masked", "no-labels"],
)
def test_a_missing_eos_or_a_labelled_prompt_token_fails_eos_labelled(broken):
    examples = [*good_examples(), broken]
    result = run_dataset_checks(examples)
    assert result.failed == ["eos_labelled"]
    assert result.eos_labelled.metadata == {"violations": 1, "eos_id": EOS}


def test_a_double_bos_fails_single_bos_and_only_where_the_tokenizer_has_a_bos():
    examples = [*good_examples(), example([BOS, BOS, 10], [20])]
    result = run_dataset_checks(examples)
    assert result.failed == ["single_bos"]
    assert result.single_bos.metadata == {"double_bos": 1}
    assert run_dataset_checks(examples, bos_id=None).passed  # SmolLM2, Qwen: no BOS to double


def test_an_over_long_example_fails_token_lengths():
    examples = [*good_examples(), example([BOS, *range(10, 17)], [20, 21])]  # 11 tokens
    result = run_dataset_checks(examples, max_tokens=8)
    assert result.failed == ["token_lengths"]
    assert result.token_lengths.metadata == {"max_tokens": 8, "over_max": 1, "truncated": 0}
    assert run_dataset_checks(examples, max_tokens=11).passed  # fits exactly


def test_truncated_examples_are_counted_but_spared_parity_and_eos():
    """A cut reply has no EOS on purpose, and its cut prompt is not what inference builds."""
    cut = example([BOS, 12, 13], [20, 21], eos=False, truncated=True)
    examples = [*good_examples(), cut]
    prompts = [e.input_ids[: e.prompt_len] for e in examples]
    prompts[3] = [BOS, 11, 12, 13]  # inference keeps the whole prompt
    result = run_dataset_checks(examples, prompts)
    assert result.passed
    assert result.template_parity.metadata == {"sampled": 3, "mismatched": 0}
    assert result.token_lengths.metadata == {"max_tokens": 8, "over_max": 0, "truncated": 1}


def test_the_parity_sample_is_bounded_untruncated_and_the_same_every_run():
    examples = [example([BOS, i], [20], truncated=i % 3 == 0) for i in range(200)]
    first = parity_sample(examples)
    assert len(first) == checks.PARITY_SAMPLE == len(set(first))
    assert all(not examples[i].truncated for i in first)
    assert parity_sample(examples) == first
    assert sorted(parity_sample(examples[:5])) == [1, 2, 4]  # all of the few whole ones
    assert parity_sample([]) == []


def test_no_examples_pass_with_nothing_sampled():
    result = run_dataset_checks([])
    assert result.passed
    assert result.template_parity.metadata == {"sampled": 0, "mismatched": 0}


def test_a_real_template_dataset_passes_and_fails_once_tampered(sample_pairs, smollm2_tokenizer):
    """The same checks wired to SmolLM2's tokenizer (the tokenizer only, no weights)."""
    pairs = sample_pairs[0].slice(0, 24).to_pandas()
    _, examples = build_template_dataset(
        pairs, "chatml", smollm2_tokenizer, system_prompt="You are alex.", max_tokens=512
    )

    def checked(examples, max_tokens=512):
        spec = PromptSpec("chatml", "You are alex.", max_tokens=max_tokens)
        return check_template_dataset(spec, smollm2_tokenizer, pairs, examples)

    good = checked(examples)
    assert good.passed, good.failed
    assert good.eos_labelled.metadata["eos_id"] == smollm2_tokenizer.convert_tokens_to_ids(
        "<|im_end|>"
    )
    # a training prompt that lost its last token: what the model learns from is not what it sees
    first = examples[0]
    shifted = TokenizedExample(
        first.input_ids[: first.prompt_len - 1] + first.input_ids[first.prompt_len :],
        first.labels[: first.prompt_len - 1] + first.labels[first.prompt_len :],
        first.prompt_len - 1,
    )
    assert checked([shifted, *examples[1:]]).failed == ["template_parity"]
    unstopped = dataclasses.replace(first, labels=[*first.labels[:-1], IGNORE_INDEX])
    assert checked([unstopped, *examples[1:]]).failed == ["eos_labelled"]


def trigram_encoder(texts):
    """Unit vectors of hashed character 3-grams: a small real encoder for the memory's rules."""
    import numpy as np

    rows = np.zeros((len(texts), 64), np.float32)
    for i, text in enumerate(texts):
        for j in range(len(text) - 2):
            rows[i, sum(map(ord, text[j : j + 3])) % 64] += 1
    return rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-9)


def test_template_parity_covers_the_memory_examples(sample_pairs, smollm2_tokenizer):
    """With memory on, parity retrieves each sampled prompt's examples again, alone; a dataset
    rendered with other examples (another k) fails it."""
    from echo_pipeline.pairs.memory import ReplyMemory, build_index

    pairs = sample_pairs[0].slice(0, 40).to_pandas()
    index = build_index(pairs, trigram_encoder)

    def dataset(k):
        shown = ReplyMemory(index, trigram_encoder, k).examples_for(
            pairs["prompt"].tolist(), pairs["session_id"].tolist()
        )
        return build_template_dataset(
            pairs, "chatml", smollm2_tokenizer, system_prompt="You are alex.", examples=shown
        )[1]

    def checked(examples, k):
        return check_template_dataset(
            PromptSpec("chatml", "You are alex.", memory_k=k),
            smollm2_tokenizer,
            pairs,
            examples,
            memory=ReplyMemory(index, trigram_encoder, k),
        )

    with_two = dataset(2)
    assert checked(with_two, 2).passed
    assert checked(with_two, 3).failed == ["template_parity"]
    assert checked(dataset(0), 2).failed == ["template_parity"]
