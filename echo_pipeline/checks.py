"""The data checks, as plain functions: pairs and tokenised datasets in, typed outcomes out.

A check that only runs inside Dagster can only be seen to pass: nothing makes it fail. Here
each check is computed from plain inputs (a pairs table, tokenised examples, a few ids), so a
unit test can hand it a broken input and watch it fail. The Dagster layer only turns each
:class:`CheckOutcome` into an ``AssetCheckResult``, keeping its name, metadata and description.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

from echo_pipeline.templates import auto_bos_token_id
from echo_pipeline.tokenization import (
    IGNORE_INDEX,
    TokenizedExample,
    stop_token_id,
    tokenize_inference_prompt,
)

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd
    import pyarrow as pa

#: How many whole (untruncated) examples the template parity check re-tokenises.
PARITY_SAMPLE = 64

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
class CheckOutcome:
    """One check's verdict: its name, whether it passed, the numbers behind it, and why not."""

    name: str
    passed: bool
    metadata: dict[str, Any]
    description: str | None = None
    warn_only: bool = False  # news for whoever reads it, never a reason to stop downstream


class _Outcomes:
    """Iteration over a group's outcomes in field (= declaration) order."""

    def __iter__(self) -> Iterator[CheckOutcome]:
        return (getattr(self, f.name) for f in fields(self))  # type: ignore[arg-type]

    @property
    def passed(self) -> bool:
        return all(outcome.passed for outcome in self)

    @property
    def failed(self) -> list[str]:
        """Names of the checks that failed, in order."""
        return [outcome.name for outcome in self if not outcome.passed]


@dataclass(frozen=True)
class PairChecks(_Outcomes):
    """The invariants of ``conversation_pairs``: whose voice, no leaks between splits, no PII."""

    has_pairs: CheckOutcome
    has_heldout_pairs: CheckOutcome
    replies_are_mine: CheckOutcome
    prompts_are_others: CheckOutcome
    pairs_within_session: CheckOutcome
    sessions_in_one_split: CheckOutcome
    no_pii_left: CheckOutcome


@dataclass(frozen=True)
class DatasetChecks(_Outcomes):
    """The invariants of one template's tokenised dataset: what the model learns to see and stop on."""

    template_parity: CheckOutcome
    eos_labelled: CheckOutcome
    single_bos: CheckOutcome
    token_lengths: CheckOutcome


# --- conversation pairs ---------------------------------------------------------------------


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

    from echo_pipeline.redaction import find_pii

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


# --- tokenised datasets ---------------------------------------------------------------------


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
    template: str,
    tokenizer: Any,
    pairs: pd.DataFrame,
    system_prompt: str,
    max_tokens: int | None,
    memory: Any = None,
    is_group: bool | None = None,
) -> Callable[[int], list[int]]:
    """Row ``i`` of ``pairs`` -> the prompt ids inference builds for it (no reply known).

    ``memory`` (a :class:`~echo_pipeline.memory.ReplyMemory`, or None) retrieves the row's
    examples the way evaluation and chat do: by its prompt, never from its own session.
    ``is_group``: the dataset's speaker naming (its manifest's ``group_chat``)."""

    def prompt_ids(i: int) -> list[int]:
        row = pairs.iloc[i]
        examples = (
            memory.examples_for([str(row["prompt"])], [str(row["session_id"])])[0]
            if memory is not None
            else ()
        )
        return tokenize_inference_prompt(
            template,
            tokenizer,
            row["context"],
            row["prompt"],
            system_prompt,
            prompt_author=row["prompt_author"],
            is_group=is_group,
            max_tokens=max_tokens,
            examples=examples,
        )

    return prompt_ids


def check_template_dataset(
    template: str,
    tokenizer: Any,
    pairs: pd.DataFrame,
    examples: Sequence[TokenizedExample],
    *,
    system_prompt: str,
    max_tokens: int,
    memory: Any = None,
    is_group: bool | None = None,
) -> DatasetChecks:
    """:func:`check_dataset` with the ids taken from ``template`` and the real ``tokenizer``
    (and, with reply memory on, the examples retrieved again at inference)."""
    return check_dataset(
        examples,
        inference_prompt=inference_prompts(
            template, tokenizer, pairs, system_prompt, max_tokens, memory, is_group
        ),
        eos_id=stop_token_id(template, tokenizer),
        bos_id=auto_bos_token_id(tokenizer),
        max_tokens=max_tokens,
    )


# --- the evaluation ----------------------------------------------------------------------------


def check_beats_base(
    verdicts: Mapping[str, Any], metrics: Mapping[str, float], headline: Sequence[str] = ()
) -> CheckOutcome:
    """Passes when the adapter sounds like me, or at least earns a better verdict than the base
    with a lower held-out reply loss. ``verdicts``: the report's ``{"adapter": .., "base": ..}``
    (``ok``, ``rank()``, ``label``, ``reasons``); ``headline``: metrics copied into the result."""
    from echo_pipeline.evaluation.evaluate import adapter_vs_base

    ahead = adapter_vs_base(dict(metrics))
    adapter, base = verdicts["adapter"], verdicts["base"]
    passed = bool(adapter.ok or (adapter.rank() < base.rank() and ahead.get("reply_loss")))
    return CheckOutcome(
        "beats_base",
        passed,
        {
            "verdict": adapter.label,
            "base_verdict": base.label,
            **{f"adapter_ahead_on_{name}": won for name, won in ahead.items()},
            **{n: float(metrics[n]) for n in headline if n in metrics},
        },
        None
        if passed
        else f"The adapter's verdict is {adapter.label!r} (base: {base.label!r}): "
        + "; ".join(adapter.reasons[:3]),
        warn_only=True,
    )
