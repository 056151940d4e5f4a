"""Every pairs check can fail: each is fed a real input that passes, then one broken the way it
guards against, with no Dagster and no model weights."""

from __future__ import annotations

import dataclasses

import pandas as pd
import pytest

from echo_pipeline.infra import schemas
from echo_pipeline.infra.checks import CheckOutcome
from echo_pipeline.pairs.checks import (
    ADVICE_NOTHING_HELD_OUT,
    ADVICE_TOO_FEW_SESSIONS,
    NO_TRAIN_PAIRS,
    check_pairs,
)

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


def test_the_real_pairing_of_the_sample_passes_and_a_table_or_frame_give_the_same(sample_pairs):
    pairs, me_ids = sample_pairs
    from_table = check_pairs(pairs, me_ids)
    assert from_table.passed, from_table.failed
    assert from_table == check_pairs(pairs.to_pandas(), me_ids)
    assert check_pairs(pairs, ["someone else"]).failed == ["replies_are_mine"]
