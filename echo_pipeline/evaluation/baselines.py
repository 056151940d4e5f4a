"""Sides the report sets beside base and adapter that no training made: what must a clone beat?

A *side* is anything that answers the evaluated prompts: my real replies, the base model, the
adapter, and the baselines here. Every side's replies go through the same scoring and the
same verdict, so a baseline that should fail shows which gate stops it.

* **replay**: my real reply to the most similar train prompt, verbatim. It is my text, so no
  style measure can tell it from me; what it lacks is being an answer to *this* message, and
  the memorised and in-context gates must say so.

A further baseline is one more :class:`Baseline` in :data:`BASELINES` (and its name in
``EvaluationConfig.baselines``): it gets the evaluation's :class:`BaselineInputs` and returns
its :class:`SideReplies`; scoring, verdict, MLflow metrics (``<name>_...``) and the report's
columns follow from the name. **base + memory** (issue #22, the base model prompted with my
retrieved past exchanges) would be, in outline::

    class MemoryBaseline:
        name, label = "memory", "base + memory"

        def replies(self, inputs):
            settings = inputs.config.generation
            with adapter_disabled(inputs.session.model):
                held_out = memory_prompt_ids(inputs.session, inputs.chosen, inputs.train)
                draws = [generate_replies(inputs.session, held_out, settings)]
                # train prompts retrieve from the train pairs minus their own pair
                on_train = generate_replies(inputs.session, memory_prompt_ids(
                    inputs.session, inputs.train_prompts, inputs.train), settings)
            return SideReplies([d.texts for d in draws], on_train.texts,
                               [d.stopped for d in draws], sum(d.seconds for d in draws))

where ``memory_prompt_ids`` renders the top-k retrieved (prompt, reply) pairs into the
template's prompt (``echo_pipeline.pairs.memory``), ``k`` read from ``inputs.meta``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import pandas as pd

#: ``f(a, b)[i, j]``: similarity of texts ``a[i]`` and ``b[j]``.
Similarity = Callable[[Sequence[str], Sequence[str]], np.ndarray]


@dataclass
class SideReplies:
    """One side's replies: draws on the held-out prompts, one reply per discriminator prompt.

    ``stopped`` and ``seconds`` are for sides that generate (stop rate, cost); a side that
    picks existing text leaves ``stopped`` None and its stop-rate gate is not applied.
    """

    draws: list[list[str]]  # [draw][held-out prompt]
    train_replies: list[str]  # one per discriminator train prompt
    stopped: list[list[bool]] | None = None
    seconds: float = 0.0


@dataclass
class BaselineInputs:
    """What a baseline may use to answer: nothing of the held-out replies themselves."""

    chosen: pd.DataFrame  # the held-out pairs answered (prompt, context, prompt_author, ...)
    train_prompts: pd.DataFrame  # the train pairs answered to fit the discriminator
    train: pd.DataFrame  # every train pair: the only replies of mine a baseline may reuse
    similarity: Similarity  # MiniLM when loaded, else character n-grams
    session: Any | None = None  # the ChatSession (adapter loaded): for baselines that generate
    meta: Any | None = None  # the adapter's AdapterMetadata (its template, dataset settings)
    config: Any | None = None  # the EvaluationConfig
    say: Callable[[str], None] = field(default=lambda _: None)


class Baseline(Protocol):
    """A side that answers the evaluated prompts without the adapter's training."""

    name: str  # metric prefix and samples column: "replay", "memory"
    label: str  # how the report names it

    def replies(self, inputs: BaselineInputs) -> SideReplies: ...


def nearest_replies(
    queries: Sequence[str],
    train_prompts: Sequence[str],
    train_replies: Sequence[str],
    similarity: Similarity,
    *,
    exclude: Sequence[Sequence[int]] | None = None,
) -> list[str]:
    """For each query, the train reply whose prompt is most similar to it.

    ``exclude[i]`` lists train rows query ``i`` may not take (itself, when the queries are
    train prompts: a pair never answers itself). Ties go to the earlier train row.
    """
    if not len(train_prompts):
        raise ValueError("replay needs at least one train pair")
    scores = np.array(similarity(list(queries), list(train_prompts)), dtype=float)
    for i, rows in enumerate(exclude or ()):
        scores[i, list(rows)] = -np.inf
    best = scores.argmax(axis=1) if len(queries) else np.zeros(0, dtype=int)
    return [str(train_replies[j]) for j in best]


@dataclass(frozen=True)
class ReplayBaseline:
    """My real reply to the train prompt most like this one, verbatim: a nearest-neighbour
    clone that memorises instead of answering."""

    name: str = "replay"
    label: str = "replay (my nearest train reply)"

    def replies(self, inputs: BaselineInputs) -> SideReplies:
        train = inputs.train.reset_index(drop=True)
        prompts, replies = train["prompt"].astype(str).tolist(), train["reply"].astype(str)
        held_out = nearest_replies(
            inputs.chosen["prompt"].astype(str).tolist(), prompts, replies, inputs.similarity
        )
        row_of = {pair_id: i for i, pair_id in enumerate(train["pair_id"])}
        own = [[row_of[p]] if p in row_of else [] for p in inputs.train_prompts["pair_id"]]
        on_train = (
            nearest_replies(
                inputs.train_prompts["prompt"].astype(str).tolist(),
                prompts,
                replies,
                inputs.similarity,
                exclude=own,
            )
            if len(train) > 1
            else []
        )
        return SideReplies([held_out], on_train)


#: Baselines by name, as ``EvaluationConfig.baselines`` lists them.
BASELINES: dict[str, Callable[[], Baseline]] = {"replay": ReplayBaseline}


def baseline(name: str) -> Baseline:
    try:
        return BASELINES[name]()
    except KeyError:
        raise ValueError(
            f"unknown baseline {name!r}; known: {', '.join(sorted(BASELINES))}"
        ) from None
