"""Training against the clone's own replies: DPO with my real reply as "chosen".

After supervised training the adapter writes replies a reader can still tell from mine. SPIN
(arXiv 2401.01335) and DITTO (arXiv 2406.00888) turn that into data: for a train prompt, my real
reply is *chosen* and the adapter's own sampled reply is *rejected*, and a DPO objective
(Rafailov et al., arXiv 2305.18290) moves the adapter towards the first and away from the second,
relative to a frozen reference, the supervised adapter itself.

Here, in order:

* :func:`sample_preference_pairs`: replies sampled from an adapter on the train prompts, as
  :data:`~echo_pipeline.infra.schemas.PREFERENCE_PAIRS` rows (a sample equal to my reply is dropped).
  The prompt is the template dataset's own rendered prompt ids, so whatever the dataset puts in
  a prompt (memory examples, a system prompt) is exactly what the preference stage sees.
* :func:`read_preference_file`: pairs written elsewhere (a human rating page), Parquet or JSONL.
* :func:`preference_examples`: pairs as (chosen, rejected) token sequences, held-out pairs never.
* :func:`dpo_loss`, :func:`reference_logprobs` and :func:`train_preference`: the objective on
  the project's own packed loop (chosen and rejected are separate packed segments; log-probs of
  reply tokens and their EOS only), reference log-probs computed once before the first update
  and cached on disk, checkpoints and resume as in :mod:`echo_pipeline.training.checkpoints`.

Why our loop and not TRL's ``DPOTrainer``: TRL is not installed (it would add trl and its
transitive deps to the pins and to CI's install), and on the sample's self-sampled pairs TRL's
padded batch of 8 pairs feeds the model 1.22 tokens per real token (18 % padding) and projects
9.1 times as many positions onto the 49k-token vocabulary as our packed rows, which project only
the reply positions (benchmarks/bench_preference_loop.py --count-only). Our loop also keeps the
project's checkpoint/resume and fingerprint.

torch, transformers and peft are imported inside functions: importing this module is cheap.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import random
import shutil
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from echo_pipeline.infra.schemas import PREFERENCE_PAIRS, PREFERENCE_SOURCES
from echo_pipeline.infra.settings import setting, speed_only
from echo_pipeline.serving.generation import PENALTY_SCOPES
from echo_pipeline.training.packing import IGNORE_INDEX, pack_examples

logger = logging.getLogger(__name__)

SELF_SAMPLE = "self_sample"
REFERENCE_FILE = "reference_logprobs.json"
PREFERENCE_CHECKPOINTS = "checkpoints"

OnLog = Callable[[int, dict[str, float]], None]


@dataclass
class PreferenceConfig:
    """The preference stage's recipe. Defaults suit SmolLM2-135M on a few hundred pairs.

    ``beta`` is DPO's temperature: how far from the reference the adapter may move for a given
    preference margin (TRL's default, 0.1). ``sft_weight`` adds the chosen reply's mean token
    loss (RPO, arXiv 2404.19733), which keeps DPO from lowering the likelihood of my replies
    along with the clone's. Sampling settings default to the evaluation's, so the rejected
    replies are the ones the report judges.
    """

    beta: float = setting(0.1, "DPO beta: how far from the reference a margin may move it.", gt=0)
    samples_per_prompt: int = setting(
        2, "Replies sampled per train prompt (rejected candidates).", ge=1
    )
    max_prompts: int = setting(0, "Train prompts sampled (0: all).", ge=0)
    max_new_tokens: int = setting(48, "Bound on a sampled reply.", ge=1)
    temperature: float | None = setting(
        None, "Sampling temperature (unset: the supervised adapter's calibrated one).", gt=0
    )
    top_p: float = setting(0.9, "Nucleus sampling mass.", gt=0, le=1)
    repetition_penalty: float = setting(1.1, "Penalty on tokens already written (1: off).", ge=1)
    penalty_scope: Literal["prompt", "reply"] = setting(
        "reply", "'prompt' or 'reply': the tokens the repetition penalty falls on."
    )
    batch_size: int = setting(16, "Prompts sampled together.", ge=1)
    max_steps: int = setting(0, "DPO steps per round (0: from epochs).", ge=0)
    epochs: float = setting(1.0, "Passes over the pairs.", gt=0)
    pairs_per_step: int = setting(8, "Pairs per DPO step.", ge=1)
    learning_rate: float = setting(1e-4, "Peak learning rate.", gt=0)
    warmup_steps: int = setting(2, "Warm-up steps.", ge=0)
    min_lr_ratio: float = setting(0.1, "The cosine decays to learning_rate times this.", ge=0, le=1)
    max_grad_norm: float = setting(1.0, "Gradient clipping norm (0: none).", ge=0)
    sft_weight: float = setting(
        0.0, "Weight of my replies' token loss beside DPO (RPO; 0: off).", ge=0
    )
    pack_tokens: int = setting(1024, "Tokens per packed row.", ge=64)
    rounds: int = setting(
        1, "Rounds of sample-then-train; round 2 samples from round 1's adapter.", ge=1
    )
    seed: int = setting(0, "Seeds sampling and the pair order.")
    checkpoint_every: int = setting(
        10, "Steps per checkpoint (0: only when asked to stop).", ge=0, speed_only=True
    )
    log_every: int = setting(2, "Steps between logged losses.", ge=1, speed_only=True)
    torch_threads: int | None = setting(None, "CPU threads for torch.", ge=1, speed_only=True)

    def __post_init__(self) -> None:
        positive = {
            "beta": self.beta,
            "samples_per_prompt": self.samples_per_prompt,
            "max_new_tokens": self.max_new_tokens,
            "batch_size": self.batch_size,
            "pairs_per_step": self.pairs_per_step,
            "learning_rate": self.learning_rate,
            "pack_tokens": self.pack_tokens,
            "rounds": self.rounds,
            "log_every": self.log_every,
        }
        for name, value in positive.items():
            if value <= 0:
                raise ValueError(f"PreferenceConfig.{name} must be positive, got {value}")
        if self.max_steps < 0 or (self.epochs <= 0 and self.max_steps == 0):
            raise ValueError("PreferenceConfig: set max_steps > 0 or epochs > 0")
        if self.penalty_scope not in PENALTY_SCOPES:
            raise ValueError("PreferenceConfig.penalty_scope is 'prompt' or 'reply'")
        if self.sft_weight < 0 or self.max_prompts < 0 or self.warmup_steps < 0:
            raise ValueError("PreferenceConfig: sft_weight, max_prompts, warmup_steps are >= 0")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def generation_settings(self, seed: int, calibrated: float | None = None) -> Any:
        """How replies are sampled; ``calibrated``: the sampled adapter's own temperature."""
        from echo_pipeline.serving.generation import GenerationSettings

        return GenerationSettings(
            max_new_tokens=self.max_new_tokens,
            batch_size=self.batch_size,
            do_sample=True,
            temperature=self.temperature,
            top_p=self.top_p,
            repetition_penalty=self.repetition_penalty,
            penalty_scope=self.penalty_scope,
            seed=seed,
        ).for_adapter(calibrated)


# --- the pairs --------------------------------------------------------------------------------


def prompt_ids_of(input_ids: Sequence[int], labels: Sequence[int]) -> list[int]:
    """The rendered prompt of a template-dataset row: every token before the first label."""
    for position, label in enumerate(labels):
        if label != IGNORE_INDEX:
            return [int(t) for t in input_ids[:position]]
    raise ValueError("a template-dataset row without labelled reply tokens has no prompt")


def same_reply(left: str, right: str) -> bool:
    """Whether two replies are the same text, up to surrounding and repeated whitespace."""
    return " ".join(left.split()) == " ".join(right.split())


def context_turns(context: Any) -> list[dict[str, str]]:
    """A conversation pair's context as PREFERENCE_PAIRS turns: who spoke and what."""
    turns = list(context) if context is not None else []
    return [{"speaker": str(t["speaker"] or ""), "text": str(t["text"] or "")} for t in turns]


def train_prompts(
    frame: Any, pairs: Any, max_prompts: int, seed: int
) -> list[tuple[dict[str, Any], list[int]]]:
    """(pair row, prompt ids) of the train split's dataset rows, in dataset order; at most
    ``max_prompts`` (0: all), chosen with ``seed``. ``frame`` is the template dataset with token
    columns, ``pairs`` the conversation pairs (for the text of each prompt and reply)."""
    train = frame[frame["split"] == "train"]
    by_id = pairs.drop_duplicates("pair_id").set_index("pair_id")
    missing = sorted(set(train["pair_id"]) - set(by_id.index))
    if missing:
        raise ValueError(
            f"{len(missing)} train pairs of the dataset (e.g. {missing[0]}) are not in "
            "conversation_pairs: the dataset and the pairs are from different runs"
        )
    rows = list(zip(train["pair_id"], train["input_ids"], train["labels"], strict=True))
    if max_prompts and len(rows) > max_prompts:
        keep = sorted(random.Random(seed).sample(range(len(rows)), max_prompts))
        rows = [rows[i] for i in keep]
    found = []
    for pair_id, input_ids, labels in rows:
        pair = by_id.loc[pair_id]
        record = {
            "pair_id": str(pair_id),
            "context": context_turns(pair["context"]),
            "prompt_author": str(pair["prompt_author"] or ""),
            "prompt": str(pair["prompt"]),
            "reply": str(pair["reply"]),
        }
        found.append((record, prompt_ids_of(input_ids, labels)))
    return found


def sample_preference_pairs(
    session: Any,
    prompts: Sequence[tuple[dict[str, Any], list[int]]],
    config: PreferenceConfig,
    *,
    adapter: str,
    seed: int | None = None,
    now: datetime | None = None,
    temperature: float | None = None,
) -> tuple[Any, dict[str, int]]:
    """Sample ``config.samples_per_prompt`` replies per prompt from ``session`` (a
    :class:`~echo_pipeline.serving.chat.ChatSession` on the adapter named ``adapter``, whose calibrated
    ``temperature`` is the default) and pair each with my real reply: :func:`pair_rows`."""
    from echo_pipeline.serving.generation import generate_replies

    seed = config.seed if seed is None else seed
    prompt_ids = [ids for _, ids in prompts]
    draws = [
        generate_replies(
            session, prompt_ids, config.generation_settings(seed + k, temperature)
        ).texts
        for k in range(config.samples_per_prompt)
    ]
    records = [record for record, _ in prompts]
    return pair_rows(records, draws, adapter=adapter, created=now or datetime.now(UTC))


def pair_rows(
    records: Sequence[Mapping[str, Any]],
    draws: Sequence[Sequence[str]],
    *,
    adapter: str,
    created: datetime,
) -> tuple[Any, dict[str, int]]:
    """PREFERENCE_PAIRS rows: my reply to each record beside each draw's reply to it
    (``draws[k][i]`` answers ``records[i]``), less a draw equal to my reply (nothing to prefer)
    or to an earlier draw (the same pair twice). Returns the table and the counts."""
    import pyarrow as pa

    rows: list[dict[str, Any]] = []
    counts = {"sampled": 0, "kept": 0, "equal_to_real": 0, "repeated_draw": 0}
    for index, record in enumerate(records):
        seen: list[str] = []
        for draw in draws:
            text = draw[index]
            counts["sampled"] += 1
            if same_reply(text, record["reply"]):
                counts["equal_to_real"] += 1
                continue
            if any(same_reply(text, earlier) for earlier in seen):
                counts["repeated_draw"] += 1
                continue
            seen.append(text)
            rows.append(
                {
                    "pair_id": record["pair_id"],
                    "context": record["context"],
                    "prompt_author": record["prompt_author"],
                    "prompt": record["prompt"],
                    "chosen": record["reply"],
                    "rejected": text,
                    "source": SELF_SAMPLE,
                    "adapter": adapter,
                    "created_at": created,
                }
            )
    counts["kept"] = len(rows)
    return pa.Table.from_pylist(rows, schema=PREFERENCE_PAIRS), counts


def read_preference_file(path: str | Path) -> Any:
    """Pairs written by someone else (the rating page): Parquet or JSONL with the
    PREFERENCE_PAIRS columns, returned as a table of exactly that schema.

    Bad input raises one line naming the file and the problem: a missing column, an unknown
    ``source``, a value of the wrong type.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such preference file")
    try:
        if path.suffix.lower() in (".jsonl", ".json", ".ndjson"):
            records = []
            with path.open(encoding="utf-8") as lines:
                for number, line in enumerate(lines, start=1):
                    if line.strip():
                        try:
                            records.append(json.loads(line))
                        except json.JSONDecodeError as error:
                            raise ValueError(f"line {number} is not JSON ({error.msg})") from error
            table = _records_table(records)
        else:
            table = pq.read_table(path)
            missing = [n for n in PREFERENCE_PAIRS.names if n not in table.column_names]
            if missing:
                raise ValueError(f"missing columns {', '.join(missing)}")
            table = table.select(PREFERENCE_PAIRS.names).cast(PREFERENCE_PAIRS)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as error:
        first = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ValueError(f"{path}: not a preference-pairs table ({first})") from error
    except (ValueError, TypeError, KeyError, UnicodeDecodeError) as error:
        raise ValueError(f"{path}: not a preference-pairs table ({error})") from error
    unknown = sorted(set(table.column("source").to_pylist()) - set(PREFERENCE_SOURCES))
    if unknown:
        raise ValueError(
            f"{path}: unknown source {unknown[0]!r}; expected one of {', '.join(PREFERENCE_SOURCES)}"
        )
    return table


def _records_table(records: list[dict[str, Any]]) -> Any:
    import pyarrow as pa

    for number, record in enumerate(records, start=1):
        missing = [n for n in PREFERENCE_PAIRS.names if n not in record]
        if missing:
            raise ValueError(f"record {number} lacks {', '.join(missing)}")
        stamp = record["created_at"]
        if isinstance(stamp, str):
            parsed = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
            record["created_at"] = parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    return pa.Table.from_pylist(records, schema=PREFERENCE_PAIRS)


def pairs_digest(table: Any) -> str:
    """Content digest of a PREFERENCE_PAIRS table (creation times excluded: the same pairs
    sampled again the same way are the same data)."""
    digest = hashlib.sha256()
    columns = ("pair_id", "chosen", "rejected", "source", "adapter")
    for row in zip(*(table.column(c).to_pylist() for c in columns), strict=True):
        digest.update(json.dumps(row).encode())
    return digest.hexdigest()[:16]


def source_counts(table: Any) -> dict[str, int]:
    """Pairs per ``source`` value (every known source listed, zeros included)."""
    values = table.column("source").to_pylist() if table.num_rows else []
    return {source: values.count(source) for source in PREFERENCE_SOURCES}


def used_counts(examples: Sequence[PreferenceExample]) -> dict[str, int]:
    """Pairs trained on per ``source`` (every known source listed, zeros included)."""
    values = [example.source for example in examples]
    return {source: values.count(source) for source in PREFERENCE_SOURCES}


# --- pairs as token sequences ----------------------------------------------------------------


@dataclass(frozen=True)
class PreferenceExample:
    """One pair as the trainer sees it: the same prompt ids followed by each reply."""

    pair_id: str
    source: str
    chosen: dict[str, list[int]]  # input_ids, labels (prompt masked)
    rejected: dict[str, list[int]]


def completion_ids(template: str, tokenizer: Any, reply: str) -> list[int]:
    """The labelled tokens a reply becomes in ``template``: its text and the template's EOS,
    rendered by the training code (a sampled reply is scored exactly as my replies are)."""
    from echo_pipeline.datasets.templates import ChatPair
    from echo_pipeline.datasets.tokenization import tokenize_pair

    example = tokenize_pair(template, tokenizer, ChatPair((), "x", reply), max_tokens=None)
    return [t for t in example.labels if t != IGNORE_INDEX]


def _sequence(prompt: list[int], completion: list[int]) -> dict[str, list[int]]:
    return {
        "input_ids": prompt + completion,
        "labels": [IGNORE_INDEX] * len(prompt) + completion,
    }


def preference_examples(
    pairs: Any,
    frame: Any,
    template: str,
    tokenizer: Any,
    *,
    max_reply_tokens: int = 256,
    typed_prompt: Callable[[Mapping[str, Any]], list[int]] | None = None,
    heldout_prompts: Iterable[str] = (),
) -> tuple[list[PreferenceExample], dict[str, int]]:
    """Token sequences of every usable pair, and counts of those left out.

    The prompt is the dataset's rendered prompt of ``pair_id``. A pair whose ``pair_id`` is in
    a held-out split is left out: a rating of a held-out reply would teach the adapter the very
    prompts the evaluation asks. So is a pair whose two replies are the same. A pair of no
    dataset row (a message typed on the chat page, then rated) has its prompt rendered from its
    own context and text by ``typed_prompt`` (as the chat rendered it), unless that text is a
    held-out prompt; without ``typed_prompt`` it is left out as ``unknown_pair``. Replies are
    cut at ``max_reply_tokens`` (EOS dropped then: a cut reply did not end there).
    """
    train = frame[frame["split"] == "train"]
    prompts = {
        str(pair_id): prompt_ids_of(ids, labels)
        for pair_id, ids, labels in zip(
            train["pair_id"], train["input_ids"], train["labels"], strict=True
        )
    }
    heldout = set(map(str, frame.loc[frame["split"] != "train", "pair_id"]))
    heldout_texts = {_prompt_key(text) for text in heldout_prompts}
    cache: dict[str, list[int]] = {}

    def ids_of(text: str) -> list[int]:
        if text not in cache:
            cache[text] = completion_ids(template, tokenizer, text)[:max_reply_tokens]
        return cache[text]

    examples: list[PreferenceExample] = []
    skipped = {"heldout_pair": 0, "unknown_pair": 0, "equal_replies": 0, "heldout_prompt": 0}
    for row in pairs.to_pylist():
        pair_id, chosen, rejected = row["pair_id"], row["chosen"], row["rejected"]
        source = row["source"]
        if pair_id in heldout:
            skipped["heldout_pair"] += 1
            continue
        if pair_id not in prompts and typed_prompt is None:
            skipped["unknown_pair"] += 1
            continue
        if pair_id not in prompts and _prompt_key(row["prompt"]) in heldout_texts:
            skipped["heldout_prompt"] += 1
            continue
        if same_reply(chosen, rejected):
            skipped["equal_replies"] += 1
            continue
        prompt = prompts[pair_id] if pair_id in prompts else typed_prompt(row)
        examples.append(
            PreferenceExample(
                pair_id=pair_id,
                source=source,
                chosen=_sequence(prompt, ids_of(chosen)),
                rejected=_sequence(prompt, ids_of(rejected)),
            )
        )
    return examples, skipped


def _prompt_key(text: str) -> str:
    return " ".join(str(text).casefold().split())


def examples_digest(examples: Sequence[PreferenceExample]) -> str:
    digest = hashlib.sha256()
    for example in examples:
        digest.update(json.dumps([example.chosen, example.rejected]).encode())
    return digest.hexdigest()[:24]


# --- the objective ---------------------------------------------------------------------------


def dpo_loss(
    policy_chosen: Any,
    policy_rejected: Any,
    reference_chosen: Any,
    reference_rejected: Any,
    beta: float,
) -> tuple[Any, dict[str, Any]]:
    """The DPO loss, mean over pairs: ``-log sigmoid(beta * ((pc - rc) - (pr - rr)))``.

    Inputs are summed reply log-probabilities per pair (tensors of equal shape). Also returns
    the implicit rewards ``beta * (policy - reference)`` of each side and their margin, which
    is what a falling loss should widen.
    """
    import torch.nn.functional as F

    chosen_reward = beta * (policy_chosen - reference_chosen)
    rejected_reward = beta * (policy_rejected - reference_rejected)
    margin = chosen_reward - rejected_reward
    loss = -F.logsigmoid(margin).mean()
    return loss, {"chosen": chosen_reward, "rejected": rejected_reward, "margin": margin}


def sequence_logprobs(
    model: Any, sequences: Sequence[dict[str, list[int]]], pack_tokens: int
) -> Any:
    """Summed reply log-probability of each sequence (a tensor in input order), through the
    model's graph: packed rows, every sample in its own attention segment."""
    import torch

    from echo_pipeline.training.lora import input_device
    from echo_pipeline.training.losses import packed_logprobs
    from echo_pipeline.training.packed_attention import segment_attention

    longest = max(len(s["input_ids"]) for s in sequences)
    rows = pack_examples(sequences, max_tokens=max(pack_tokens, longest), shuffle=False, seed=0)
    device = input_device(model)
    out = torch.zeros(len(sequences), device=device, dtype=torch.float32)
    with segment_attention(model):
        for row in rows:
            values = packed_logprobs(model, row, device)
            out = out.index_put((torch.tensor(row.example_indices, device=device),), values)
    return out


def reference_logprobs(
    model: Any, examples: Sequence[PreferenceExample], pack_tokens: int, batch: int = 64
) -> list[tuple[float, float]]:
    """(chosen, rejected) summed log-probs of every pair under ``model`` as it is now: the
    frozen reference, computed once before the first update."""
    import torch

    was_training = model.training
    model.eval()
    values: list[tuple[float, float]] = []
    try:
        with torch.inference_mode():
            for start in range(0, len(examples), batch):
                part = examples[start : start + batch]
                sequences = [e.chosen for e in part] + [e.rejected for e in part]
                logps = sequence_logprobs(model, sequences, pack_tokens).tolist()
                values += list(zip(logps[: len(part)], logps[len(part) :], strict=True))
    finally:
        model.train(was_training)
    return values


def cached_reference_logprobs(
    model: Any, examples: Sequence[PreferenceExample], pack_tokens: int, path: Path, key: str
) -> list[tuple[float, float]]:
    """:func:`reference_logprobs`, read from ``path`` when it was computed for ``key`` (the run
    fingerprint: same reference adapter, same pairs), else computed and written there."""
    if path.is_file():
        saved = json.loads(path.read_text(encoding="utf-8"))
        if saved.get("key") == key and len(saved.get("values", ())) == len(examples):
            return [(float(c), float(r)) for c, r in saved["values"]]
    values = reference_logprobs(model, examples, pack_tokens)
    from echo_pipeline.infra.storage import write_text

    write_text(json.dumps({"key": key, "values": values}), path)
    return values


# --- the loop --------------------------------------------------------------------------------


@dataclass
class PreferenceResult:
    steps: int
    total_steps: int
    completed: bool
    losses: list[float]  # DPO loss per step
    margins: list[float]  # mean reward margin per step
    accuracies: list[float]  # share of pairs whose margin is positive, per step
    resumed_from_step: int | None
    seconds: float
    fingerprint: str
    model: Any = field(default=None, repr=False, compare=False)

    def metrics(self, prefix: str = "dpo_") -> dict[str, float]:
        tail = max(1, min(len(self.losses), 4))
        values = {
            "steps": float(self.steps),
            "first_loss": self.losses[0] if self.losses else None,
            "final_loss": sum(self.losses[-tail:]) / tail if self.losses else None,
            "final_margin": sum(self.margins[-tail:]) / tail if self.margins else None,
            "final_accuracy": sum(self.accuracies[-tail:]) / tail if self.accuracies else None,
            "wall_seconds": self.seconds,
        }
        return {prefix + k: float(v) for k, v in values.items() if v is not None}


def fingerprint_preference(
    config: PreferenceConfig, examples: Sequence[PreferenceExample], reference: str
) -> str:
    """What determines the trained weights: the recipe, the pairs and the reference adapter."""
    settings = {k: v for k, v in config.to_dict().items() if k not in speed_only(PreferenceConfig)}
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())
    digest.update(reference.encode())
    digest.update(examples_digest(examples).encode())
    return digest.hexdigest()[:24]


def total_steps_for(config: PreferenceConfig, pairs: int) -> int:
    if config.max_steps:
        return config.max_steps
    return max(1, math.ceil(config.epochs * pairs / config.pairs_per_step))


def train_preference(
    model: Any,
    examples: Sequence[PreferenceExample],
    config: PreferenceConfig,
    work_dir: Path,
    *,
    fingerprint: str,
    on_log: OnLog | None = None,
    should_stop: Callable[[int], bool] | None = None,
) -> PreferenceResult:
    """DPO on ``model``, a PEFT model whose trainable adapter is the reference's copy (loaded
    with ``is_trainable=True``); its own weights before the first step are the reference.

    Each step takes ``pairs_per_step`` pairs (an epoch-seeded shuffle), packs their chosen and
    rejected sequences into rows and backpropagates the mean DPO loss once. Checkpoints of a
    run with the same ``fingerprint`` in ``work_dir`` are resumed; others are discarded.
    """
    from echo_pipeline.training.threads import torch_threads

    with torch_threads(config.torch_threads):
        return _train_preference(
            model, examples, config, Path(work_dir), fingerprint, on_log, should_stop
        )


def _train_preference(
    model: Any,
    examples: Sequence[PreferenceExample],
    config: PreferenceConfig,
    work_dir: Path,
    fingerprint: str,
    on_log: OnLog | None,
    should_stop: Callable[[int], bool] | None,
) -> PreferenceResult:
    import torch

    from echo_pipeline.training.checkpoints import (
        STATE_FILE,
        RunState,
        latest_checkpoint,
        load_checkpoint,
        prune_checkpoints,
        save_checkpoint,
    )
    from echo_pipeline.training.config import lr_at

    if not examples:
        raise ValueError("no preference pair to train on")
    started = time.perf_counter()
    work_dir.mkdir(parents=True, exist_ok=True)
    reference = cached_reference_logprobs(
        model, examples, config.pack_tokens, work_dir / REFERENCE_FILE, fingerprint
    )
    total_steps = total_steps_for(config, len(examples))
    torch.manual_seed(config.seed)
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not trainable:
        raise ValueError("the model has no trainable adapter: load it with is_trainable=True")
    params = [p for _, p in trainable]
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=0.0)

    checkpoints = work_dir / PREFERENCE_CHECKPOINTS
    state = RunState()
    resumed_from = None
    margins: list[float] = []
    accuracies: list[float] = []
    latest = latest_checkpoint(checkpoints)
    if latest is not None:
        saved = json.loads((latest / STATE_FILE).read_text())
        if saved.get("fingerprint") == fingerprint and saved.get("total_steps") == total_steps:
            state, _ = load_checkpoint(latest, model, optimizer, saved)
            margins, accuracies = list(saved["margins"]), list(saved["accuracies"])
            resumed_from = state.step
            logger.info("resuming the preference run at step %d", state.step)
        else:
            logger.warning("checkpoints in %s belong to another run: starting over", checkpoints)
            shutil.rmtree(checkpoints)

    order: dict[int, list[int]] = {}

    def pair_at(index: int) -> int:
        epoch, position = divmod(index, len(examples))
        if epoch not in order:
            shuffled = list(range(len(examples)))
            random.Random(config.seed * 100_003 + epoch).shuffle(shuffled)
            order[epoch] = shuffled
        return order[epoch][position]

    interrupted = False
    model.train()
    while state.step < total_steps:
        lr = lr_at(
            state.step,
            peak=config.learning_rate,
            warmup_steps=config.warmup_steps,
            total_steps=total_steps,
            min_ratio=config.min_lr_ratio,
        )
        for group in optimizer.param_groups:
            group["lr"] = lr
        chosen = [
            pair_at(state.step * config.pairs_per_step + k) for k in range(config.pairs_per_step)
        ]
        batch = [examples[i] for i in chosen]
        sequences = [e.chosen for e in batch] + [e.rejected for e in batch]
        logps = sequence_logprobs(model, sequences, config.pack_tokens)
        n = len(batch)
        ref = torch.tensor([reference[i] for i in chosen], device=logps.device)
        loss, rewards = dpo_loss(logps[:n], logps[n:], ref[:, 0], ref[:, 1], config.beta)
        objective = loss
        if config.sft_weight:
            lengths = torch.tensor(
                [sum(1 for t in e.chosen["labels"] if t != IGNORE_INDEX) for e in batch],
                device=logps.device,
            )
            objective = loss + config.sft_weight * (-(logps[:n] / lengths).mean())
        objective.backward()
        max_norm = config.max_grad_norm if config.max_grad_norm > 0 else math.inf
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, max_norm))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

        state.step += 1
        rewards = {k: v.detach() for k, v in rewards.items()}
        state.train_losses.append(float(loss.detach()))
        margins.append(float(rewards["margin"].mean()))
        accuracies.append(float((rewards["margin"] > 0).float().mean()))
        state.real_tokens += sum(len(s["input_ids"]) for s in sequences)
        if on_log is not None and (state.step % config.log_every == 0 or state.step == total_steps):
            on_log(
                state.step,
                {
                    "dpo_loss": state.train_losses[-1],
                    "dpo_margin": margins[-1],
                    "dpo_accuracy": accuracies[-1],
                    "dpo_chosen_reward": float(rewards["chosen"].mean()),
                    "dpo_rejected_reward": float(rewards["rejected"].mean()),
                    "learning_rate": lr,
                    "grad_norm": grad_norm,
                },
            )
        last = state.step == total_steps
        interrupted = should_stop is not None and not last and should_stop(state.step)
        due = config.checkpoint_every and state.step % config.checkpoint_every == 0
        if interrupted or (due and not last):
            path = save_checkpoint(
                checkpoints, model, optimizer, state, None, fingerprint, total_steps
            )
            state_file = path / STATE_FILE
            saved = json.loads(state_file.read_text())
            saved |= {"margins": margins, "accuracies": accuracies}
            state_file.write_text(json.dumps(saved))
            prune_checkpoints(checkpoints, 2)
        if interrupted:
            logger.info("preference training stopped at step %d; checkpoint saved", state.step)
            break
    if not interrupted:
        shutil.rmtree(checkpoints, ignore_errors=True)
    model.eval()
    return PreferenceResult(
        steps=state.step,
        total_steps=total_steps,
        completed=not interrupted,
        losses=list(state.train_losses),
        margins=margins,
        accuracies=accuracies,
        resumed_from_step=resumed_from,
        seconds=time.perf_counter() - started,
        fingerprint=fingerprint,
        model=model,
    )


def load_trainable_adapter(adapter_dir: Path, base_model: Any, dtype: str) -> Any:
    """The base model with ``adapter_dir``'s LoRA weights loaded as the trainable adapter
    (validated first: safetensors only, shapes that fit the base)."""
    from peft import PeftModel

    from echo_pipeline.training.adapter_files import validate_adapter_dir
    from echo_pipeline.training.base_model import load_causal_lm

    base = load_causal_lm(base_model, dtype=dtype, quantization="none")
    validate_adapter_dir(adapter_dir, base)
    return PeftModel.from_pretrained(base, adapter_dir, is_trainable=True)


def merge_pair_tables(tables: Iterable[Any]) -> Any:
    """One PREFERENCE_PAIRS table from several (self-sampled rounds, human ratings)."""
    import pyarrow as pa

    parts = [t.select(PREFERENCE_PAIRS.names).cast(PREFERENCE_PAIRS) for t in tables]
    return pa.concat_tables(parts) if parts else PREFERENCE_PAIRS.empty_table()


def describe_counts(counts: Mapping[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in counts.items())
