"""The invariants of ``conversation_pairs``, as plain functions: a pairs table and my ids in,
typed outcomes out."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa

from echo_pipeline.infra.checks import CheckOutcome, Outcomes

NO_TRAIN_PAIRS = (
    "No training pairs: check that `me` is you (see chat_messages' authors) and that the "
    "export holds other people's messages you replied to (an export filtered to one author has none)."
)
ADVICE_NOTHING_HELD_OUT = "set test_fraction or test_min_pairs above 0 (conversation_pairs config)"
ADVICE_TOO_FEW_SESSIONS = (
    "use a longer export (more conversations), or a smaller session_gap_s so long "
    "conversations split into sessions (conversation_pairs config)"
)


@dataclass(frozen=True)
class PairChecks(Outcomes):
    """The invariants of ``conversation_pairs``: whose voice, no leaks between splits, no PII."""

    has_pairs: CheckOutcome
    has_heldout_pairs: CheckOutcome
    replies_are_mine: CheckOutcome
    prompts_are_others: CheckOutcome
    pairs_within_session: CheckOutcome
    sessions_in_one_split: CheckOutcome
    no_pii_left: CheckOutcome


def _frame(pairs: pa.Table | pd.DataFrame) -> pd.DataFrame:
    import pandas as pd

    return pairs if isinstance(pairs, pd.DataFrame) else pairs.to_pandas()


def check_has_pairs(df: pd.DataFrame) -> CheckOutcome:
    train = int((df["split"] == "train").sum()) if len(df) else 0
    return CheckOutcome(
        "has_pairs",
        train > 0,
        {"pairs": len(df), "train": train},
        None if train else NO_TRAIN_PAIRS,
    )


def check_heldout_pairs(df: pd.DataFrame) -> CheckOutcome:
    """Fails, before minutes of training, an export too small to hold out test pairs.

    The split puts at least one session in test whenever two sessions have pairs; so this fails
    on pairs from one session only, or when the config holds out nothing. (No pairs at all is
    has_pairs' failure, reported once.)
    """
    test = int((df["split"] == "test").sum()) if len(df) else 0
    sessions = int(df["session_id"].nunique()) if len(df) else 0
    metadata = {"pairs": len(df), "sessions": sessions, "test": test}
    if test or not len(df):  # no pairs at all: has_pairs fails and says why, once
        return CheckOutcome("has_heldout_pairs", True, metadata)
    # two sessions or more: pairs to spare, so the config held out nothing
    advice = ADVICE_NOTHING_HELD_OUT if sessions >= 2 else ADVICE_TOO_FEW_SESSIONS
    return CheckOutcome(
        "has_heldout_pairs",
        False,
        metadata,
        f"no held-out pairs to evaluate on: {len(df)} pairs in {sessions} session(s); "
        f"the split needs at least 2 pairs in 2 sessions (one to train on, one to test on); {advice}",
    )


def _violations(name: str, count: int) -> CheckOutcome:
    return CheckOutcome(name, count == 0, {"violations": count})


def check_no_pii_left(df: pd.DataFrame, redacted: bool) -> CheckOutcome:
    """No text of a pair (prompt, reply, context turns) still holds what redaction would remove."""
    import pandas as pd

    from echo_pipeline.pairs.redaction import find_pii

    if not redacted:
        return CheckOutcome("no_pii_left", True, {"note": "redaction turned off in config"})
    texts = pd.concat(
        [df["prompt"], df["reply"], df["context"].explode().dropna().map(lambda t: t["text"])],
        ignore_index=True,
    )
    found = texts.map(find_pii)
    leftover = found[found.map(len) > 0]
    kinds = (
        pd.Series([k for ks in leftover for k in ks]).value_counts().to_dict()
        if len(leftover)
        else {}
    )
    return CheckOutcome(
        "no_pii_left",
        len(leftover) == 0,
        {"texts_with_pii": len(leftover), "kinds": {k: int(v) for k, v in kinds.items()}},
    )


def check_pairs(
    pairs: pa.Table | pd.DataFrame, me_ids: Iterable[str], redacted: bool = True
) -> PairChecks:
    """Every pairs invariant; broken, it would train on the wrong voice or leak test data or secrets.

    ``me_ids`` are the author ids "me" resolved to; ``redacted`` says whether redaction ran (when
    the config turned it off, leftover PII is the user's choice, not a failure).
    """
    import pandas as pd

    df = _frame(pairs)
    me = set(me_ids)
    per_session = df.groupby("session_id")["split"].nunique() if len(df) else pd.Series(dtype=int)
    return PairChecks(
        has_pairs=check_has_pairs(df),
        has_heldout_pairs=check_heldout_pairs(df),
        replies_are_mine=_violations(
            "replies_are_mine", int((~df["reply_author_id"].isin(me)).sum())
        ),
        prompts_are_others=_violations(
            "prompts_are_others", int(df["prompt_author_id"].isin(me).sum())
        ),
        pairs_within_session=_violations(
            "pairs_within_session", int((df["prompt_session_id"] != df["session_id"]).sum())
        ),
        sessions_in_one_split=_violations("sessions_in_one_split", int((per_session > 1).sum())),
        no_pii_left=check_no_pii_left(df, redacted),
    )
