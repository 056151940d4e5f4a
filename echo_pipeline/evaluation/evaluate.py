"""Evaluate one adapter against its base model on held-out pairs: "does it sound like me?".

Loss says how well the adapter predicts my held-out replies; it does not say whether what it
writes reads like me, or answers the message. So, on the same held-out prompts rendered with
the adapter's training template, the base model (adapter switched off) and the adapter each
write a reply, and every reply is measured against my real one:

* reply loss and perplexity on the held-out reply tokens (base vs adapter);
* stop rate: did the reply end at EOS within the token bound (the seed rambled);
* style: length distribution, casing, punctuation, emoji, vocabulary, character 3-grams;
* attribution: the share a my-turns-vs-others classifier, trained on the train split, takes
  for mine, beside the same share for my real replies;
* relevance: MiniLM similarity to the real reply and to the prompt; repetition (distinct-2).

Beside them, baselines no training made (:mod:`~echo_pipeline.evaluation.baselines`; today
``replay``, my nearest train reply verbatim) answer the same prompts and go through the same
scoring and verdict: a gate that lets replay "sound like me" is not yet right.

Metric names are flat and prefixed by whose text they describe: ``real_``, ``base_``,
``adapter_``, then one prefix per baseline (``replay_``). Nothing here touches Dagster or MLflow.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from echo_pipeline.evaluation.attribution import (
    AuthorshipClassifier,
    attributed_share,
    balanced_accuracy,
    hashed_char_ngrams,
)
from echo_pipeline.evaluation.baselines import BaselineInputs, SideReplies, baseline
from echo_pipeline.evaluation.config import EvaluationConfig
from echo_pipeline.evaluation.echo_quality import (
    Interval,
    TrainReplyIndex,
    Verdict,
    VerdictThresholds,
    bigram_vocabulary,
    bootstrap_mean,
    discriminator_interval,
    draw_metrics,
    in_context_interval,
    known_bigram_rate,
    mean_over_draws,
    relevance_interval,
    verdict,
    vocabulary,
)
from echo_pipeline.evaluation.relevance import distinct_n
from echo_pipeline.evaluation.style import compare_style, style_profile, word_counts
from echo_pipeline.infra.records import AdapterMetadata
from echo_pipeline.pairs.conversations import heldout_split
from echo_pipeline.serving.generation import (
    GenerationRun,
    GenerationSettings,
    adapter_disabled,
    generate_replies,
    stop_rate,
    torch_threads,
)

logger = logging.getLogger(__name__)

SIDES = ("real", "base", "adapter")
MODEL_SIDES = ("base", "adapter")
#: My train replies the embedding discriminator learns "real" from: each costs a MiniLM pass,
#: and the generated class has only ``discriminator_prompts`` texts to set against them.
EMBEDDED_REAL_TRAIN = 500
PAIR_COLUMNS = ["pair_id", "context", "prompt_author", "prompt", "reply", "split"]

#: The headline numbers: (label, metric suffix, which direction is better, sides shown).
#: Similarity to the prompt has no better direction: parroting the prompt maximises it; read
#: it against my real replies' value.
#: "mine" compares with my real replies' value: closer to it is better, either way.
SCORECARD: tuple[tuple[str, str, str | None, tuple[str, ...]], ...] = (
    ("Reply loss (held-out, teacher-forced)", "reply_loss", "lower", ("base", "adapter")),
    ("Perplexity (held-out)", "perplexity", "lower", ("base", "adapter")),
    ("Stop rate (EOS within bound; mine: fit the bound)", "stop_rate", "higher", SIDES),
    ("Distinct-1", "distinct_1", "mine", SIDES),
    ("Distinct-2", "distinct_2", "mine", SIDES),
    ("Most common reply's share", "top_reply_share", "mine", SIDES),
    ("Looping replies", "loop_share", "lower", SIDES),
    ("Known-word rate (my train vocabulary)", "known_word_rate", "mine", SIDES),
    ("Known-bigram rate (word pairs of my train replies)", "known_bigram_rate", "mine", SIDES),
    ("Copied from the prompt", "parrot_share", "mine", SIDES),
    ("Memorised (says a train reply of mine again)", "memorised_share", "mine", SIDES),
    ("Relevance gain over shuffled prompts", "relevance_gain", "higher", ("base", "adapter")),
    ("In context (own reply outranks the others; 0.5: none)", "in_context", "higher", SIDES),
    ("Discriminator AUC, n-grams (0.5: can't tell)", "discriminator_auc", "lower", MODEL_SIDES),
    (
        "Discriminator AUC, embeddings + n-grams",
        "embedding_discriminator_auc",
        "lower",
        MODEL_SIDES,
    ),
    ("Attributed to me", "attributed_share", "higher", SIDES),
    ("Style distance to my replies", "style_distance", "lower", ("base", "adapter")),
    ("Similarity to my reply", "similarity_to_real", "higher", ("base", "adapter")),
    ("Similarity to the prompt", "similarity_to_prompt", None, SIDES),
)


@dataclass
class EvaluationResult:
    """All numbers of one evaluation, the per-prompt samples, and where everything came from."""

    template: str
    experiment: str
    metrics: dict[str, float]
    samples: pd.DataFrame  # one row per evaluated prompt
    lineage: dict[str, Any]
    config: dict[str, Any]
    verdicts: dict[str, Verdict] = field(default_factory=dict)  # every side but "real"
    sides: tuple[str, ...] = SIDES  # "real", then every side that answered, baselines last

    @property
    def verdict(self) -> str:
        """The adapter's verdict: the report's headline."""
        return self.verdicts["adapter"].label if "adapter" in self.verdicts else "not judged"

    @property
    def baselines(self) -> tuple[str, ...]:
        return tuple(s for s in self.sides if s not in SIDES)

    def arrays(self) -> dict[str, np.ndarray]:
        """Per-text values for plots: word counts and P(me) per side, similarities."""
        values = {f"{side}_words": word_counts(self.samples[side]) for side in self.sides}
        for column in self.samples.columns:
            if column.endswith(("_p_me", "_similarity_to_real", "_similarity_to_prompt")):
                values[column] = self.samples[column].to_numpy(dtype=float)
        return values

    def to_json(self) -> dict[str, Any]:
        samples = self.samples.astype(object).where(self.samples.notna(), None)
        return {
            "template": self.template,
            "experiment": self.experiment,
            "metrics": self.metrics,
            "lineage": self.lineage,
            "config": self.config,
            "sides": list(self.sides),
            "verdicts": {
                side: {
                    "label": v.label,
                    "reasons": list(v.reasons),
                    "gates": [list(g) for g in v.gates],
                }
                for side, v in self.verdicts.items()
            },
            "samples": samples.to_dict(orient="records"),
        }


def adapter_vs_base(metrics: dict[str, float]) -> dict[str, bool]:
    """For each scorecard metric both models have: is the adapter better than the base?

    "mine" metrics are better when closer to my real replies' value.
    """
    ahead = {}
    for _, name, better, _ in SCORECARD:
        base, adapter = metrics.get(f"base_{name}"), metrics.get(f"adapter_{name}")
        if not better or base is None or adapter is None or name == "perplexity":
            continue
        if better == "mine":
            real = metrics.get(f"real_{name}")
            if real is not None:
                ahead[name] = abs(adapter - real) < abs(base - real)
        else:
            ahead[name] = adapter < base if better == "lower" else adapter > base
    return ahead


def heldout_split_name(frame: pd.DataFrame, preferred: str = "test") -> str:
    """The split to evaluate on (:func:`~echo_pipeline.pairs.conversations.heldout_split`, the
    training side's choice too); an error when it has no rows."""
    split = heldout_split(frame["split"].value_counts().to_dict(), preferred)
    if not (frame["split"] == split).any():
        raise ValueError(f"the dataset has no {preferred!r} or 'val' rows to evaluate on")
    return split


def select_prompts(heldout: pd.DataFrame, count: int, seed: int) -> pd.DataFrame:
    """``count`` held-out pairs drawn with ``seed``, kept in dataset order (all if fewer)."""
    if count >= len(heldout):
        return heldout.reset_index(drop=True)
    rng = np.random.default_rng(seed)
    return heldout.iloc[np.sort(rng.choice(len(heldout), size=count, replace=False))].reset_index(
        drop=True
    )


def _texts_metrics(side: str, texts: Sequence[str], real: Sequence[str]) -> dict[str, float]:
    metrics = {f"{side}_{k}": v for k, v in style_profile(texts).as_dict().items() if k != "texts"}
    metrics[f"{side}_distinct_1"] = distinct_n(texts, 1)
    metrics[f"{side}_distinct_2"] = distinct_n(texts, 2)
    if side != "real":
        metrics |= {f"{side}_{k}": v for k, v in compare_style(real, texts).as_dict().items()}
    return metrics


def score_replies(
    samples: pd.DataFrame,
    classifier: AuthorshipClassifier,
    embedder: Any | None = None,
    sides: Sequence[str] = SIDES,
) -> tuple[pd.DataFrame, dict[str, float]]:
    """Style, attribution and relevance of the ``sides`` columns of ``samples`` ("real" first).

    ``samples`` needs ``prompt`` and the reply columns; per-text scores are added as
    columns, the aggregate ones returned as metrics. No model generation here.
    """
    samples = samples.copy()
    real = samples["real"].astype(str).tolist()
    metrics: dict[str, float] = {}
    for side in sides:
        texts = samples[side].astype(str).tolist()
        metrics |= _texts_metrics(side, texts, real)
        p_me = classifier.p_me(texts)
        samples[f"{side}_p_me"] = p_me
        metrics[f"{side}_attributed_share"] = attributed_share(p_me)
        share = bootstrap_mean((np.asarray(p_me) > 0.5).astype(float))
        metrics[f"{side}_attributed_share_low"] = share.low
        metrics[f"{side}_attributed_share_high"] = share.high
        metrics[f"{side}_mean_p_me"] = float(p_me.mean()) if len(p_me) else 0.0
        if embedder is not None:
            prompts = samples["prompt"].astype(str).tolist()
            to_prompt = embedder.paired_similarity(texts, prompts)
            samples[f"{side}_similarity_to_prompt"] = to_prompt
            metrics[f"{side}_similarity_to_prompt"] = float(to_prompt.mean())
            if side != "real":
                to_real = embedder.paired_similarity(texts, real)
                samples[f"{side}_similarity_to_real"] = to_real
                metrics[f"{side}_similarity_to_real"] = float(to_real.mean())
    return samples, metrics


def train_attribution(
    pairs: pd.DataFrame, *, l2: float = 1e-3
) -> tuple[AuthorshipClassifier, dict[str, float]]:
    """The classifier from the train split (my replies vs the prompts), and how good it is.

    Its balanced accuracy on held-out replies vs held-out prompts says how much the attribution
    numbers can be trusted: near 0.5 the classifier cannot tell me from the others at all.
    """
    train = pairs[pairs["split"] == "train"]
    classifier = AuthorshipClassifier.fit(train["reply"].tolist(), train["prompt"].tolist(), l2=l2)
    metrics = {
        "attribution_train_mine": float(classifier.trained_on["mine"]),
        "attribution_train_others": float(classifier.trained_on["others"]),
    }
    heldout = pairs[pairs["split"] != "train"]
    if len(heldout):
        metrics["attribution_heldout_balanced_accuracy"] = balanced_accuracy(
            classifier.p_me(heldout["reply"].tolist()), classifier.p_me(heldout["prompt"].tolist())
        )
    return classifier, metrics


def _generation_metrics(side: str, runs: Sequence[GenerationRun]) -> dict[str, float]:
    seconds = sum(run.seconds for run in runs)
    count = sum(len(run.texts) for run in runs)
    return {
        f"{side}_stop_rate": stop_rate([s for run in runs for s in run.stopped]),
        f"{side}_generation_seconds": seconds,
        f"{side}_generations_per_s": count / seconds if seconds > 0 else 0.0,
    }


def _loss_metrics(side: str, loss: float) -> dict[str, float]:
    return {f"{side}_reply_loss": loss, f"{side}_perplexity": math.exp(min(loss, 50.0))}


def read_pairs(pairs_path: Path) -> pd.DataFrame:
    import pyarrow.parquet as pq

    if not Path(pairs_path).exists():
        raise FileNotFoundError(
            f"{pairs_path}: conversation_pairs is not materialised; materialise it first"
        )
    return pq.read_table(pairs_path, columns=PAIR_COLUMNS).to_pandas()


@dataclass
class HeldOut:
    """What an evaluation reads: the adapter's metadata, its dataset, and the chosen prompts."""

    meta: AdapterMetadata
    frame: pd.DataFrame  # the template dataset, token columns included
    pairs: pd.DataFrame  # conversation pairs: every split, for the attribution classifier
    split: str
    heldout: pd.DataFrame  # pairs of the held-out split, in dataset order
    chosen: pd.DataFrame  # the prompts the models answer


def load_heldout(
    adapter_dir: Path, dataset_path: Path, pairs_path: Path, config: EvaluationConfig
) -> HeldOut:
    import pyarrow.parquet as pq

    from echo_pipeline.training.adapters import load_dataset

    meta = AdapterMetadata.load(adapter_dir)
    frame = load_dataset(dataset_path)
    pairs = read_pairs(pairs_path)
    # Each prompt's session: its reply-memory examples never come from it (train prompts).
    sessions = pq.read_table(pairs_path, columns=["pair_id", "session_id"]).to_pandas()
    pairs["session_id"] = pairs["pair_id"].map(
        sessions.drop_duplicates("pair_id").set_index("pair_id")["session_id"]
    )
    split = heldout_split_name(frame, config.heldout_split)
    heldout_ids = frame.loc[frame["split"] == split, "pair_id"]
    by_id = pairs.drop_duplicates("pair_id").set_index("pair_id")
    missing = sorted(set(heldout_ids) - set(by_id.index))
    if missing:
        raise ValueError(
            f"{dataset_path}: {len(missing)} held-out pairs (e.g. {missing[0]}) are not in "
            f"{pairs_path}; the dataset and the pairs are from different runs: "
            "re-materialise template_dataset"
        )
    heldout = by_id.loc[heldout_ids].reset_index()
    chosen = select_prompts(heldout, config.num_prompts, config.generation.seed)
    return HeldOut(meta, frame, pairs, split, heldout, chosen)


def _lineage(
    data: HeldOut, adapter_dir: Path, dataset_path: Path, pairs_path: Path
) -> dict[str, Any]:
    from echo_pipeline.datasets.render import dataset_digest

    meta, digest = data.meta, dataset_digest(data.frame)
    recorded, tracked = meta.dataset.digest, meta.mlflow
    return {
        "template": meta.template,
        "experiment": meta.experiment,
        "adapter_dir": str(adapter_dir),
        "adapter_fingerprint": meta.fingerprint,
        "base_model": dataclasses.asdict(meta.base_model),
        "system_prompt": meta.system_prompt,
        "prompt": dict(meta.prompt),
        "dataset_path": str(dataset_path),
        "dataset_digest": digest,
        "adapter_dataset_digest": recorded,
        "dataset_matches_adapter": recorded == digest,
        "pairs_path": str(pairs_path),
        "heldout_split": data.split,
        "training": meta.training,
        "training_results": meta.results,
        "training_run_id": tracked.run_id,
        "training_experiment_id": tracked.experiment_id,
        "training_tracking_uri": tracked.tracking_uri,
        "package_version": meta.package_version,
        "git_commit": meta.git_commit,
    }


def _loss_examples(data: HeldOut, config: EvaluationConfig) -> list[dict[str, list[int]]]:
    from echo_pipeline.training.adapters import split_examples

    examples = split_examples(data.frame, data.split)
    if config.max_loss_examples and len(examples) > config.max_loss_examples:
        rng = np.random.default_rng(config.generation.seed)
        keep = np.sort(rng.choice(len(examples), config.max_loss_examples, replace=False))
        examples = [examples[i] for i in keep]
    return examples


def _inference_prompts(session: Any, rows: pd.DataFrame) -> list[list[int]]:
    """Each row's prompt as the adapter was trained to see it (its prompt spec), with its
    reply-memory examples (from the train index, never the row's own session) when the session
    has memory."""
    memory = getattr(session, "memory", None)
    shown = (
        memory.examples_for(
            rows["prompt"].astype(str).tolist(),
            rows["session_id"].astype(str).tolist() if "session_id" in rows else None,
        )
        if memory is not None
        else [()] * len(rows)
    )
    return [
        session.prompt.prompt_ids(
            session.tokenizer,
            row.context,
            str(row.prompt),
            prompt_author=str(row.prompt_author or ""),
            examples=examples,
        )
        for row, examples in zip(rows.itertuples(index=False), shown, strict=True)
    ]


def _draws(session: Any, prompt_ids: list[list[int]], settings: GenerationSettings, count: int):
    """``count`` draws of replies to every prompt, draw ``k`` seeded ``seed + k`` (greedy: one)."""
    count = count if settings.do_sample else 1
    return [
        generate_replies(session, prompt_ids, dataclasses.replace(settings, seed=settings.seed + k))
        for k in range(count)
    ]


@dataclass
class Generated:
    """Every reply the models wrote: draws on the held-out prompts, one on the train prompts."""

    draws: dict[str, list[list[str]]]  # side -> [draw][prompt]
    train_prompts: pd.DataFrame
    train_replies: dict[str, list[str]]  # side -> reply per train prompt


def recorded_reply_losses(data: HeldOut, dataset_digest: str) -> dict[str, float] | None:
    """The held-out reply losses training already measured (base before it, adapter after),
    when they are of this split of this very dataset, on every pair of it; else None.

    Scoring them again is one forward pass per side over the whole split: minutes of a
    ``run --export`` on CPU, for the same number (training scores in its own dtype, bf16 on
    a CPU, so a re-scored fp32 figure differs in the third decimal).
    """
    results = data.meta.results
    names = {side: f"{side}_{data.split}_reply_loss" for side in ("base", "adapter")}
    if data.meta.dataset.digest != dataset_digest:
        return None
    values = {side: results.get(name) for side, name in names.items()}
    if not all(isinstance(v, int | float) and math.isfinite(v) for v in values.values()):
        return None
    return {side: float(v) for side, v in values.items()}  # type: ignore[arg-type]


def _generate_and_score_loss(
    session: Any,
    data: HeldOut,
    config: EvaluationConfig,
    say: Callable[[str], None],
    recorded: dict[str, float] | None = None,
) -> tuple[pd.DataFrame, dict[str, float], Generated]:
    """Reply loss and replies of the adapter, then of the base (adapter switched off); the
    reply losses training ``recorded`` for this split are taken as they are."""
    from echo_pipeline.training.losses import reply_loss

    prompt_ids = _inference_prompts(session, data.chosen)
    train = data.pairs[data.pairs["split"] == "train"]
    train_prompts = select_prompts(train, config.discriminator_prompts, config.generation.seed + 1)
    train_ids = _inference_prompts(session, train_prompts)
    examples = [] if recorded else _loss_examples(data, config)
    loss_pairs = len(data.heldout) if recorded else len(examples)
    settings = config.generation
    say(
        f"{data.split}: reply loss on {loss_pairs} pairs"
        f"{' (measured by training)' if recorded else ''}; {len(prompt_ids)} prompts x "
        f"{config.samples_per_prompt} adapter / {config.base_samples_per_prompt} base replies "
        f"({settings.describe()}), {len(train_ids)} train prompts for the discriminator"
    )
    runs: dict[str, list[GenerationRun]] = {}
    train_runs: dict[str, GenerationRun] = {}
    losses: dict[str, float] = {}
    for side, count in (
        ("adapter", config.samples_per_prompt),
        ("base", config.base_samples_per_prompt),
    ):
        context = adapter_disabled(session.model) if side == "base" else contextlib.nullcontext()
        with context:
            losses[side] = recorded[side] if recorded else reply_loss(session.model, examples)
            runs[side] = _draws(session, prompt_ids, settings, count)
            train_runs[side] = generate_replies(session, train_ids, settings)
        seconds = sum(r.seconds for r in runs[side]) + train_runs[side].seconds
        say(
            f"{side}: {sum(len(r.texts) for r in runs[side]) + len(train_ids)} replies in {seconds:.0f} s"
        )
    metrics: dict[str, float] = {"reply_loss_examples": float(loss_pairs)}
    # The "stop rate" of my real replies: how many would fit the bound with their EOS.
    lengths = data.frame.drop_duplicates("pair_id").set_index("pair_id")["completion_tokens"]
    real_lengths = lengths.reindex(data.chosen["pair_id"]).dropna()
    if len(real_lengths):
        metrics["real_stop_rate"] = float((real_lengths <= settings.max_new_tokens).mean())
    for side in ("base", "adapter"):
        metrics |= _loss_metrics(side, losses[side])
        metrics |= _generation_metrics(side, runs[side])
    samples = pd.DataFrame(
        {
            "pair_id": data.chosen["pair_id"].astype(str),
            "prompt_author": data.chosen["prompt_author"].astype(str),
            "prompt": data.chosen["prompt"].astype(str),
            "real": data.chosen["reply"].astype(str),
            "base": runs["base"][0].texts,
            "adapter": runs["adapter"][0].texts,
            "base_stopped": runs["base"][0].stopped,
            "adapter_stopped": runs["adapter"][0].stopped,
            "prompt_tokens": [len(p) for p in prompt_ids],
        }
    )
    for k, run in enumerate(runs["adapter"][1:], start=2):
        samples[f"adapter_draw_{k}"] = run.texts
    generated = Generated(
        {side: [r.texts for r in side_runs] for side, side_runs in runs.items()},
        train_prompts,
        {side: run.texts for side, run in train_runs.items()},
    )
    return samples, metrics, generated


def similarity_matrix(embedder: Any | None) -> Callable[[Sequence[str], Sequence[str]], np.ndarray]:
    """``f(a, b)[i, j]``: cosine of ``a[i]`` and ``b[j]``; MiniLM when given, else character
    3-5-gram profiles (a surface measure, for runs without the embedder). Empty texts score 0."""

    def vectors(texts: Sequence[str]) -> np.ndarray:
        if embedder is not None:
            return embedder.encode(list(texts))
        rows = hashed_char_ngrams(
            [str(t).lower() for t in texts], ngram_range=(3, 5), n_features=2**14
        )
        dense = np.zeros((rows.n_rows, rows.n_features))
        dense[rows.row_ids, rows.indices] = rows.values
        return dense

    def matrix(left: Sequence[str], right: Sequence[str]) -> np.ndarray:
        product = vectors(left) @ vectors(right).T
        empty_left = np.array([not str(t).strip() for t in left])
        empty_right = np.array([not str(t).strip() for t in right])
        product[empty_left, :] = 0.0
        product[:, empty_right] = 0.0
        return product

    return matrix


def answer_with_baselines(
    data: HeldOut,
    samples: pd.DataFrame,
    generated: Generated,
    config: EvaluationConfig,
    *,
    session: Any | None = None,
    embedder: Any | None = None,
    say: Callable[[str], None] = logger.info,
) -> tuple[pd.DataFrame, dict[str, float]]:
    """Every baseline of ``config.baselines`` answers the evaluated prompts: its first draw is
    a column of ``samples``, its draws join ``generated`` to be scored as the models' are."""
    samples, metrics = samples.copy(), {}
    inputs = BaselineInputs(
        chosen=data.chosen,
        train_prompts=generated.train_prompts,
        train=data.pairs[data.pairs["split"] == "train"],
        similarity=similarity_matrix(embedder),
        session=session,
        meta=data.meta,
        config=config,
        say=say,
    )
    for name in config.baselines:
        side = baseline(name)
        started = time.perf_counter()
        replies: SideReplies = side.replies(inputs)
        seconds = replies.seconds or time.perf_counter() - started
        answered = {len(draw) for draw in replies.draws}
        if answered != {len(samples)}:
            raise ValueError(
                f"baseline {name!r} answered {sorted(answered)} of {len(samples)} prompts"
            )
        samples[side.name] = replies.draws[0]
        generated.draws[side.name] = replies.draws
        generated.train_replies[side.name] = replies.train_replies
        metrics[f"{side.name}_seconds"] = seconds
        if replies.stopped is not None:
            metrics[f"{side.name}_stop_rate"] = stop_rate([s for d in replies.stopped for s in d])
            samples[f"{side.name}_stopped"] = replies.stopped[0]
        say(f"{side.name}: {sum(map(len, replies.draws))} replies in {seconds:.0f} s")
    return samples, metrics


def _interval_metrics(key: str, interval: Interval) -> dict[str, float]:
    return {key: interval.mean, f"{key}_low": interval.low, f"{key}_high": interval.high}


def score_echo(
    data: HeldOut, generated: Generated, config: EvaluationConfig, embedder: Any | None
) -> dict[str, float]:
    """Collapse, babble, parroting, memorising, relevance, in-context fit and
    indistinguishability of every draw of every side (models and baselines)."""
    train = data.pairs[data.pairs["split"] == "train"]
    train_replies = train["reply"].astype(str)
    references = {
        "known_bigrams": bigram_vocabulary(train_replies),
        "train_index": TrainReplyIndex.build(train_replies),
    }
    known = vocabulary(train_replies)
    prompts = data.chosen["prompt"].astype(str).tolist()
    real = data.chosen["reply"].astype(str).tolist()
    seed = config.generation.seed
    metrics = {f"real_{k}": v for k, v in draw_metrics(real, prompts, known, **references).items()}
    # The fluency bar is what my *new* sentences reach: a held-out reply that repeats a train
    # reply hits every bigram by construction, and a chat where I repeat myself a lot (the
    # synthetic sample: 75 %) would otherwise set a bar no fresh sentence can reach.
    novel = [i for i, text in enumerate(real) if not references["train_index"].copies(text)]
    if novel:
        metrics["real_known_bigram_rate"] = known_bigram_rate(
            [real[i] for i in novel], references["known_bigrams"], [prompts[i] for i in novel]
        )
    similarity = similarity_matrix(embedder)
    # In context: prompt-reply similarity (MiniLM when loaded) picks each prompt's reply.
    if len(real) >= 2:
        fit = in_context_interval([real], prompts, similarity, seed=seed)
        metrics |= _interval_metrics("real_in_context", fit)
    # The discriminator learns "real" from my train replies; it is tested on held-out ones.
    real_train = train_replies.sample(min(len(train_replies), 2000), random_state=seed).tolist()
    for side, draws in generated.draws.items():
        metrics |= {
            f"{side}_{k}": v
            for k, v in mean_over_draws(draws, prompts, known, **references).items()
        }
        if len(real) >= 2:
            gain = relevance_interval(draws, real, similarity, seed=seed)
            metrics |= _interval_metrics(f"{side}_relevance_gain", gain)
            fit = in_context_interval(draws, prompts, similarity, seed=seed)
            metrics |= _interval_metrics(f"{side}_in_context", fit)
        # Two readers: n-grams, and sentence embeddings + n-grams (what is said, not only how).
        readers = {"discriminator_auc": None}
        if embedder is not None:
            readers["embedding_discriminator_auc"] = embedder.encode
        generated_texts = [text for draw in draws for text in draw]
        for name, embed in readers.items():
            auc = discriminator_interval(
                real_train if embed is None else real_train[:EMBEDDED_REAL_TRAIN],
                generated.train_replies[side],
                real,
                generated_texts,
                seed=seed,
                embed=embed,
            )
            metrics |= _interval_metrics(f"{side}_{name}", auc)
        harder = max(readers, key=lambda name: np.nan_to_num(metrics[f"{side}_{name}"], nan=-1.0))
        for suffix in ("", "_low", "_high"):
            metrics[f"{side}_hardest_discriminator_auc{suffix}"] = metrics[
                f"{side}_{harder}{suffix}"
            ]
    return metrics


def judge(
    metrics: dict[str, float], thresholds: VerdictThresholds, sides: Sequence[str] = MODEL_SIDES
) -> dict[str, Verdict]:
    """The verdict of each side, from every metric of the evaluation (ranks added to them)."""
    verdicts = {side: verdict(metrics, side, thresholds) for side in sides}
    for side, judged in verdicts.items():
        metrics[f"{side}_verdict_rank"] = float(judged.rank())
    return verdicts


def evaluate_adapter(
    adapter_dir: str | Path,
    dataset_path: str | Path,
    pairs_path: str | Path,
    *,
    config: EvaluationConfig | None = None,
    base_model: Any | None = None,
    session: Any | None = None,
    embedder: Any | None = None,
    log: Callable[[str], None] | None = None,
) -> EvaluationResult:
    """Base vs adapter on the held-out pairs of ``dataset_path`` (a template_dataset Parquet).

    ``pairs_path`` is the conversation_pairs Parquet: prompts and context for generation, and
    the train split for the attribution classifier. ``base_model`` (a ResolvedBaseModel)
    defaults to the one recorded with the adapter; ``session`` and ``embedder`` can be passed
    in to reuse loaded models.
    """
    config = config or EvaluationConfig()
    say = log or logger.info
    adapter_dir, dataset_path, pairs_path = Path(adapter_dir), Path(dataset_path), Path(pairs_path)
    started = time.perf_counter()
    data = load_heldout(adapter_dir, dataset_path, pairs_path, config)
    lineage = _lineage(data, adapter_dir, dataset_path, pairs_path)
    # training's own held-out losses, unless the base was swapped for another
    recorded = (
        recorded_reply_losses(data, lineage["dataset_digest"]) if base_model is None else None
    )
    lineage["reply_loss_measured_by"] = "training" if recorded else "evaluation"
    # Sampled at the adapter's own temperature unless one was set; the report records which.
    generation = config.generation.for_adapter(data.meta.calibrated_temperature)
    config = dataclasses.replace(config, generation=generation)

    classifier, metrics = train_attribution(data.pairs, l2=config.attribution_l2)
    accuracy = metrics.get("attribution_heldout_balanced_accuracy", float("nan"))
    say(f"attribution classifier: held-out balanced accuracy {accuracy:.3f}")
    with torch_threads(config.torch_threads):
        if session is None:
            from echo_pipeline.serving.chat import ChatSession

            session = ChatSession.from_adapter(adapter_dir, base_model=base_model)
        samples, generation_metrics, generated = _generate_and_score_loss(
            session, data, config, say, recorded
        )
        if embedder is None and config.similarity:
            from echo_pipeline.pairs.embedder import SentenceEmbedder

            embedder = SentenceEmbedder.load()
        if embedder is not None and config.similarity:
            from echo_pipeline.evaluation.relevance import CachedEmbedder

            embedder = CachedEmbedder(embedder)  # each text embedded once across measures
        else:
            embedder = None
        measures_started = time.perf_counter()
        samples, baseline_metrics = answer_with_baselines(
            data, samples, generated, config, session=session, embedder=embedder, say=say
        )
        sides = (
            "real",
            *(s for s in MODEL_SIDES if s in generated.draws),
            *(s for s in generated.draws if s not in MODEL_SIDES),
        )
        samples, scores = score_replies(samples, classifier, embedder, sides)
        echo_scores = score_echo(data, generated, config, embedder)
        measures_seconds = time.perf_counter() - measures_started
    # Stop rate, distinct-n and the rest over every draw replace the first draw's numbers.
    metrics |= generation_metrics | baseline_metrics | scores | echo_scores
    metrics["measures_seconds"] = measures_seconds
    verdicts = judge(metrics, config.thresholds, sides[1:])
    metrics |= {
        "heldout_pairs": float(len(data.heldout)),
        "evaluated_prompts": float(len(data.chosen)),
        "evaluation_seconds": time.perf_counter() - started,
    }
    if not lineage["dataset_matches_adapter"]:
        say(
            "warning: the dataset changed since the adapter was trained "
            f"({lineage['adapter_dataset_digest']} -> {lineage['dataset_digest']})"
        )
    return EvaluationResult(
        template=data.meta.template,
        experiment=data.meta.experiment,
        metrics={k: float(v) for k, v in metrics.items()},
        samples=samples,
        lineage=lineage,
        config=config.as_dict(),
        verdicts=verdicts,
        sides=sides,
    )
