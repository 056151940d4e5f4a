"""Every data check can fail: each is fed a real input that passes, then one broken the way it
guards against, with no Dagster and no model weights."""

from __future__ import annotations

import dataclasses

import pandas as pd
import pyarrow as pa
import pytest

from echo_pipeline import checks, conversations, schemas
from echo_pipeline.checks import (
    ADVICE_NOTHING_HELD_OUT,
    ADVICE_TOO_FEW_SESSIONS,
    NO_TRAIN_PAIRS,
    CheckOutcome,
    check_dataset,
    check_pairs,
    check_template_dataset,
    parity_sample,
)
from echo_pipeline.exports import read_exports
from echo_pipeline.paths import sample_export_dir
from echo_pipeline.tokenization import IGNORE_INDEX, TokenizedExample, build_template_dataset

ME = "100"
PAIR_CHECKS = [
    "has_pairs",
    "has_heldout_pairs",
    "replies_are_mine",
    "prompts_are_others",
    "pairs_within_session",
    "sessions_in_one_split",
    "no_pii_left",
]
DATASET_CHECKS = ["template_parity", "eos_labelled", "single_bos", "token_lengths"]


# --- conversation pairs ---------------------------------------------------------------------


def pair(session: str, split: str, prompt: str = "you around?", reply: str = "yes", **extra):
    row = {
        "session_id": session,
        "prompt_session_id": session,
        "split": split,
        "prompt_author_id": "200",
        "reply_author_id": ME,
        "prompt": prompt,
        "reply": reply,
        "context": [{"speaker": "sam", "text": "hi there", "is_me": False}],
    }
    return row | extra


def good_pairs() -> pd.DataFrame:
    """Three sessions, one per split, every invariant holding."""
    return pd.DataFrame(
        [
            pair("s1", "train"),
            pair("s1", "train", "and tomorrow?", "maybe"),
            pair("s2", "val"),
            pair("s3", "test"),
        ]
    )


def outcomes(result) -> dict[str, CheckOutcome]:
    return {o.name: o for o in result}


def test_good_pairs_pass_every_check_in_spec_order():
    result = check_pairs(good_pairs(), [ME])
    assert [o.name for o in result] == PAIR_CHECKS
    assert result.passed and result.failed == []
    assert all(o.description is None for o in result)
    got = outcomes(result)
    assert got["has_pairs"].metadata == {"pairs": 4, "train": 2}
    assert got["has_heldout_pairs"].metadata == {"pairs": 4, "sessions": 3, "test": 1}
    assert got["replies_are_mine"].metadata == {"violations": 0}
    assert got["no_pii_left"].metadata == {"texts_with_pii": 0, "kinds": {}}


def test_results_are_frozen_records():
    result = check_pairs(good_pairs(), [ME])
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.has_pairs = result.no_pii_left  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.has_pairs.passed = False  # type: ignore[misc]


def break_has_pairs(df):
    return df.assign(split="test")  # nothing left to train on


def break_replies_are_mine(df):
    df.loc[1, "reply_author_id"] = "300"
    return df


def break_prompts_are_others(df):
    df.loc[0, "prompt_author_id"] = ME
    return df


def break_pairs_within_session(df):
    df.loc[0, "prompt_session_id"] = "s0"
    return df


def break_sessions_in_one_split(df):
    df.loc[1, "split"] = "val"  # session s1 now in train and val
    return df


def break_no_pii_left(df):
    df.loc[0, "reply"] = "write to jamie.rivera@example.com"
    return df


BREAKERS = {
    "has_pairs": (break_has_pairs, {"pairs": 4, "train": 0}),
    "replies_are_mine": (break_replies_are_mine, {"violations": 1}),
    "prompts_are_others": (break_prompts_are_others, {"violations": 1}),
    "pairs_within_session": (break_pairs_within_session, {"violations": 1}),
    "sessions_in_one_split": (break_sessions_in_one_split, {"violations": 1}),
    "no_pii_left": (break_no_pii_left, {"texts_with_pii": 1, "kinds": {"email": 1}}),
}


@pytest.mark.parametrize("name", sorted(BREAKERS))
def test_each_pair_check_fails_alone_on_its_broken_input(name):
    breaker, metadata = BREAKERS[name]
    result = check_pairs(breaker(good_pairs()), [ME])
    assert result.failed == [name]
    assert outcomes(result)[name].metadata == metadata


def test_no_pairs_at_all_fail_has_pairs_once_with_its_advice():
    empty = schemas.CONVERSATION_PAIRS.empty_table()
    result = check_pairs(empty, [ME])
    assert result.failed == ["has_pairs"]  # has_heldout_pairs leaves the telling to has_pairs
    assert result.has_pairs.description == NO_TRAIN_PAIRS
    assert result.has_pairs.metadata == {"pairs": 0, "train": 0}
    assert result.has_heldout_pairs.metadata == {"pairs": 0, "sessions": 0, "test": 0}


def test_one_session_without_test_pairs_fails_has_heldout_pairs_asking_for_more_sessions():
    df = pd.DataFrame([pair("s1", "train"), pair("s1", "train", "and you?", "fine")])
    result = check_pairs(df, [ME])
    assert result.failed == ["has_heldout_pairs"]
    assert result.has_heldout_pairs.metadata == {"pairs": 2, "sessions": 1, "test": 0}
    assert result.has_heldout_pairs.description == (
        "no held-out pairs to evaluate on: 2 pairs in 1 session(s); the split needs at least 2 "
        "pairs in 2 sessions (one to train on, one to test on); use a longer export (more "
        "conversations), or a smaller session_gap_s so long conversations split into sessions "
        "(conversation_pairs config)"
    )
    assert result.has_heldout_pairs.description.endswith(ADVICE_TOO_FEW_SESSIONS)


def test_sessions_to_spare_without_test_pairs_fail_has_heldout_pairs_blaming_the_config():
    df = good_pairs().assign(split=["train", "train", "val", "val"])
    result = check_pairs(df, [ME])
    assert result.failed == ["has_heldout_pairs"]
    assert result.has_heldout_pairs.description == (
        "no held-out pairs to evaluate on: 4 pairs in 3 session(s); the split needs at least 2 "
        "pairs in 2 sessions (one to train on, one to test on); set test_fraction or "
        "test_min_pairs above 0 (conversation_pairs config)"
    )
    assert result.has_heldout_pairs.description.endswith(ADVICE_NOTHING_HELD_OUT)


def test_pii_in_a_context_turn_fails_and_unredacted_pairs_are_the_users_choice():
    df = good_pairs()
    leaky = [{"speaker": "sam", "text": "my ip is 203.0.113.77", "is_me": False}]
    df["context"] = [df.at[0, "context"], df.at[1, "context"], leaky, []]
    assert check_pairs(df, [ME]).no_pii_left.metadata == {"texts_with_pii": 1, "kinds": {"ip": 1}}
    skipped = check_pairs(df, [ME], redacted=False).no_pii_left
    assert skipped.passed and skipped.metadata == {"note": "redaction turned off in config"}


def test_an_alt_account_counts_as_me():
    df = break_replies_are_mine(good_pairs())
    assert check_pairs(df, [ME, "300"]).passed


@pytest.fixture(scope="module")
def sample_pairs() -> tuple[pa.Table, list[str]]:
    messages = read_exports([sample_export_dir()]).to_pandas()
    pairs, report = conversations.build_pairs(messages, conversations.PairingConfig(me=("alex",)))
    return pairs, report.me_ids


def test_the_real_pairing_of_the_sample_passes_and_a_table_or_frame_give_the_same(sample_pairs):
    pairs, me_ids = sample_pairs
    from_table = check_pairs(pairs, me_ids)
    assert from_table.passed, from_table.failed
    assert from_table == check_pairs(pairs.to_pandas(), me_ids)
    assert check_pairs(pairs, ["someone else"]).failed == ["replies_are_mine"]


# --- tokenised datasets ---------------------------------------------------------------------

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
        return check_template_dataset(
            "chatml",
            smollm2_tokenizer,
            pairs,
            examples,
            system_prompt="You are alex.",
            max_tokens=max_tokens,
        )

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
    from echo_pipeline.memory import ReplyMemory, build_index

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
            "chatml",
            smollm2_tokenizer,
            pairs,
            examples,
            system_prompt="You are alex.",
            max_tokens=512,
            memory=ReplyMemory(index, trigram_encoder, k),
        )

    with_two = dataset(2)
    assert checked(with_two, 2).passed
    assert checked(with_two, 3).failed == ["template_parity"]
    assert checked(dataset(0), 2).failed == ["template_parity"]


# --- the evaluation's "beats the base" (a WARN check) --------------------------------------


def _verdict(label: str):
    from echo_pipeline.evaluation.echo_quality import Verdict

    return Verdict(label, (f"{label}: a reason",), ())


def test_beats_base_passes_an_adapter_that_sounds_like_me():
    from echo_pipeline.checks import check_beats_base

    verdicts = {"adapter": _verdict("sounds like you"), "base": _verdict("babbling")}
    outcome = check_beats_base(verdicts, {"base_reply_loss": 3.0, "adapter_reply_loss": 3.5})
    assert outcome.passed and outcome.warn_only and outcome.description is None


def test_beats_base_needs_a_better_verdict_and_a_lower_loss():
    from echo_pipeline.checks import check_beats_base

    better = {"adapter": _verdict("unlike you"), "base": _verdict("babbling")}
    lower = {"base_reply_loss": 5.0, "adapter_reply_loss": 4.0, "adapter_loop_share": 0.1}
    outcome = check_beats_base(better, lower, headline=("adapter_loop_share",))
    assert outcome.passed and outcome.metadata["adapter_ahead_on_reply_loss"] is True
    assert outcome.metadata["adapter_loop_share"] == 0.1

    higher = {"base_reply_loss": 4.0, "adapter_reply_loss": 5.0}
    failed = check_beats_base(better, higher)
    assert not failed.passed and failed.warn_only
    assert failed.description.startswith("The adapter's verdict is 'unlike you' (base: 'babbling')")
    same = {"adapter": _verdict("babbling"), "base": _verdict("babbling")}
    assert not check_beats_base(same, lower).passed  # a lower loss alone is not enough
