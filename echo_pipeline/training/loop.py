"""LoRA fine-tuning on packed rows: a plain PyTorch loop with checkpoints and resume.

One optimizer step is ``grad_accum`` packed rows (see :mod:`echo_pipeline.training.packing`). The loss is
the mean cross-entropy over reply tokens, and the vocabulary projection is computed only at the
positions that predict a reply token (prompts are masked, so that is most of the row's logits
saved). Everything the run depends on is a function of the config, the data and the step number,
so a run interrupted after a checkpoint resumes to the same weights as one that never stopped.

Launched by torchrun on several processes (:mod:`echo_pipeline.training.distributed`), each optimizer step
is ``grad_accum`` rows per process: rank r takes every world-size-th row of the step, DDP sums
the gradients, and the step count and learning-rate schedule follow that global batch. Every
rank knows every row's label count, so the loss is normalised by the global count and N processes
with ``grad_accum`` B compute what one process with ``grad_accum`` N*B does. Rank 0 alone writes
checkpoints and the adapter; every rank reads a checkpoint to resume.

torch, transformers and peft are imported inside functions: importing this module is cheap.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import inspect
import json
import logging
import math
import os
import random
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from echo_pipeline.infra.settings import setting, speed_only
from echo_pipeline.infra.storage import atomic_directory
from echo_pipeline.training import distributed
from echo_pipeline.training.packed_attention import segment_attention
from echo_pipeline.training.packing import (
    IGNORE_INDEX,
    PackedBatch,
    example_fields,
    pack_examples,
)

logger = logging.getLogger(__name__)

CHECKPOINTS_DIR = "checkpoints"
ADAPTER_DIR = "adapter"
_STATE_FILE = "trainer_state.json"
_OPTIMIZER_FILE = "optimizer.pt"
_RNG_FILE = "rng.pt"
_BEST_FILE = "best_trainable.safetensors"


OnLog = Callable[[int, dict[str, float]], None]
ShouldStop = Callable[[int], bool]


@dataclass
class TrainingConfig:
    """Hyper-parameters of one adapter. Defaults suit a small chat dataset on SmolLM2-135M."""

    lora_r: int = setting(16, "LoRA rank.", ge=1)
    lora_alpha: int = setting(32, "LoRA alpha (the update is scaled by alpha / rank).", ge=1)
    # peft's own default: on the sample's held-out test split 0.0 scored a reply loss of 3.152
    # against 3.160 for 0.05, and trains ~15 % faster on CPU (one mask per adapted module and
    # step). benchmarks/RESULTS.md, bench_recipe_quality.py.
    lora_dropout: float = setting(
        0.0, "LoRA dropout (0: measured no better at 0.05, and slower).", ge=0, lt=1
    )
    target_modules: str | list[str] = setting(
        "all-linear", "Modules that get an adapter: 'all-linear', or their names."
    )
    learning_rate: float = setting(2e-4, "Peak learning rate of the cosine schedule.", gt=0)
    warmup_ratio: float = setting(0.05, "Share of the steps spent warming up.", ge=0, lt=1)
    warmup_steps: int | None = setting(None, "Warm-up steps; overrides warmup_ratio.", ge=0)
    min_lr_ratio: float = setting(0.0, "The cosine decays to learning_rate times this.", ge=0, le=1)
    max_steps: int = setting(0, "Optimizer steps; 0 derives them from epochs.", ge=0)
    epochs: float = setting(1.0, "Passes over the train split when max_steps is 0.", gt=0)
    max_steps_cap: int = setting(
        0, "With epochs: never more than this many steps (a compute budget); 0: no cap.", ge=0
    )
    pack_tokens: int = setting(
        1024, "Tokens per packed row (samples never attend to each other).", ge=64
    )
    grad_accum: int = setting(1, "Packed rows per optimizer step.", ge=1)
    max_grad_norm: float = setting(
        1.0, "Gradient clipping norm (0: none; the norm is still reported).", ge=0
    )
    weight_decay: float = setting(0.0, "AdamW weight decay.", ge=0)
    eval_every: int = setting(50, "Steps between validation losses (0: end only).", ge=0)
    # The split grows with the export while the step budget does not (RESULTS section 16).
    eval_max_pairs: int = setting(
        0,
        "Validation pairs scored per pass (a seeded sample, the same each time); 0: all.",
        ge=0,
    )
    early_stopping_patience: int = setting(
        0, "Evaluations without improvement before stopping (0: off).", ge=0
    )
    early_stopping_min_delta: float = setting(
        0.0, "The least drop in validation loss that counts as an improvement.", ge=0
    )
    restore_best: bool = setting(
        True, "The final adapter is the one with the lowest validation loss."
    )
    checkpoint_every: int = setting(
        50,
        "Steps between resumable checkpoints (0: only when asked to stop).",
        ge=0,
        speed_only=True,
    )
    keep_checkpoints: int = setting(2, "Checkpoints kept on disk.", ge=1, speed_only=True)
    log_every: int = setting(10, "Steps between logged training losses.", ge=1, speed_only=True)
    seed: int = setting(42, "Random seed (training is deterministic on CPU).")
    # quantization and dtype are for the caller's base_model.load_causal_lm(); train_lora reads
    # the loaded model itself (bf16/fp32 weights keep their dtype; fp16 k-bit gets peft's fp32 prep).
    quantization: Literal["auto", "4bit", "8bit", "none"] = setting(
        "auto", "'auto' (4-bit QLoRA on CUDA, none on CPU), '4bit', '8bit' or 'none'."
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = setting(
        "auto",
        "'auto': bf16 on GPUs and on CPUs with native bf16 (AVX512-BF16 or AMX; env "
        "ECHO_CPU_BF16=0/1 overrides), fp32 on other CPUs; or 'float32', 'bfloat16', "
        "'float16'. The dtype used is logged as train.resolved_dtype.",
    )
    gradient_checkpointing: bool = setting(
        False, "Trade compute for memory (long packs, big models)."
    )
    adapter_dtype: Literal["auto", "float32", "bfloat16"] = setting(
        "auto", "The saved adapter's weights: 'auto' keeps the compute dtype's precision."
    )
    torch_threads: int | None = setting(
        None,
        "CPU threads for torch (unset: the cores free when training starts, at most one per "
        "core; on a busy machine more threads than free cores is several times slower).",
        ge=1,
        speed_only=True,
    )
    # the same mathematics either way, a different kernel
    packed_attention: Literal["segments", "model"] = setting(
        "segments",
        "'segments': each packed sample attends in its own sdpa call (packed_attention.py); "
        "'model': the model's own implementation (a dense block-diagonal mask).",
        speed_only=True,
    )

    def __post_init__(self) -> None:
        positive = {"lora_r": self.lora_r, "pack_tokens": self.pack_tokens}
        positive |= {"grad_accum": self.grad_accum, "log_every": self.log_every}
        positive |= {"keep_checkpoints": self.keep_checkpoints}
        for name, value in positive.items():
            if value <= 0:
                raise ValueError(f"TrainingConfig.{name} must be positive, got {value}")
        if self.eval_max_pairs < 0:
            raise ValueError("TrainingConfig.eval_max_pairs must be >= 0")
        if self.max_steps_cap < 0:
            raise ValueError("TrainingConfig.max_steps_cap must be >= 0")
        if self.max_steps < 0 or (self.epochs <= 0 and self.max_steps == 0):
            raise ValueError("set max_steps > 0 or epochs > 0")
        if self.quantization not in ("auto", "4bit", "8bit", "none"):
            raise ValueError(f"unknown quantization {self.quantization!r}")
        if self.packed_attention not in ("segments", "model"):
            raise ValueError(f"unknown packed_attention {self.packed_attention!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class TrainingResult:
    """What a call to :func:`train_lora` did. ``model`` is the trained PEFT model, in memory."""

    steps: int
    total_steps: int
    completed: bool  # False when should_stop interrupted the run (a checkpoint was saved)
    early_stopped: bool
    final_train_loss: float | None  # mean reply-token loss over the last log_every steps
    final_eval_loss: float | None  # eval loss of the adapter in adapter_dir
    # The sampling temperature that best predicts the validation replies with that adapter
    # (calibrated_temperature); None without a validation split.
    calibrated_temperature: float | None
    best_eval_loss: float | None
    best_step: int | None
    eval_losses: list[tuple[int, float]]
    eval_temperatures: list[tuple[int, float]]  # (step, calibrated temperature) per eval
    train_losses: list[float]  # one per optimizer step, from step 1 (resumed runs included)
    tokens_processed: int
    real_tokens: int
    padding_waste: float
    seconds: float  # wall time of this call
    tokens_per_s: float  # real tokens per second of training steps (evals and saves excluded)
    resumed_from_step: int | None
    adapter_dir: Path | None
    fingerprint: str
    model: Any = field(default=None, repr=False, compare=False)

    def metrics(self) -> dict[str, float]:
        """The numeric summary, ready for ``mlflow.log_metrics``."""
        values = {
            "steps": self.steps,
            "final_train_loss": self.final_train_loss,
            "final_eval_loss": self.final_eval_loss,
            "calibrated_temperature": self.calibrated_temperature,
            "best_eval_loss": self.best_eval_loss,
            "tokens_processed": self.tokens_processed,
            "real_tokens": self.real_tokens,
            "padding_waste": self.padding_waste,
            "wall_seconds": self.seconds,
            "tokens_per_s": self.tokens_per_s,
        }
        return {key: float(value) for key, value in values.items() if value is not None}


@dataclass
class _RunState:
    """Everything besides tensors that a checkpoint restores."""

    step: int = 0
    train_losses: list[float] = field(default_factory=list)
    eval_losses: list[tuple[int, float]] = field(default_factory=list)
    eval_temperatures: list[tuple[int, float]] = field(default_factory=list)
    best_eval_loss: float | None = None
    best_step: int | None = None
    evals_without_improvement: int = 0
    early_stopped: bool = False
    tokens_processed: int = 0
    real_tokens: int = 0
    pad_tokens: int = 0
    train_seconds: float = 0.0


@dataclass
class _Window:
    """Sums over the steps since the last progress report."""

    steps: int = 0
    loss_sum: float = 0.0
    labels: int = 0
    grad_norm_sum: float = 0.0
    real_tokens: int = 0
    seconds: float = 0.0


def fingerprint_run(
    config: TrainingConfig,
    train_examples: Sequence[Any],
    val_examples: Sequence[Any],
    *,
    base_model_id: str = "",
    world_size: int = 1,
) -> str:
    """A digest of what determines the trained weights: config, data and base model identity.

    The rows per optimizer step are those of all ``world_size`` processes, so a checkpoint of
    2 processes x ``grad_accum`` 1 resumes under 1 process x ``grad_accum`` 2 (the same run).
    """
    digest = hashlib.sha256()
    settings = {k: v for k, v in config.to_dict().items() if k not in speed_only(TrainingConfig)}
    settings["grad_accum"] = config.grad_accum * world_size
    digest.update(json.dumps(settings, sort_keys=True, default=str).encode())
    digest.update(base_model_id.encode())
    for split in (train_examples, val_examples):
        digest.update(b"|split|")
        for example in split:
            input_ids, labels = example_fields(example)
            digest.update(json.dumps([input_ids, labels]).encode())
    return digest.hexdigest()[:24]


def lr_at(
    step: int, *, peak: float, warmup_steps: int, total_steps: int, min_ratio: float
) -> float:
    """Learning rate for optimizer step ``step`` (0-based): linear warmup, then cosine decay.

    A pure function of the step, so resuming needs no scheduler object: the step is the state.
    """
    if step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    decay_steps = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    cosine = 0.5 * (1.0 + math.cos(math.pi * progress))
    return peak * (min_ratio + (1.0 - min_ratio) * cosine)


def train_lora(
    model: Any,
    tokenizer: Any | None,
    train_examples: Sequence[Any],
    val_examples: Sequence[Any],
    config: TrainingConfig,
    output_dir: Path,
    *,
    run_fingerprint: str | None = None,
    on_log: OnLog | None = None,
    should_stop: ShouldStop | None = None,
) -> TrainingResult:
    """Train a LoRA adapter on ``model`` (a loaded base causal LM, modified in place).

    ``output_dir`` receives ``checkpoints/step-N/`` while training and the final PEFT adapter in
    ``adapter/`` (plus the tokenizer, when given). A checkpoint whose fingerprint equals
    ``run_fingerprint`` (default: :func:`fingerprint_run` of the config, data and model) is
    resumed; any other checkpoint is discarded. ``should_stop(step)`` is asked after every step;
    when it says yes, a checkpoint is saved and the result has ``completed=False``.
    """
    segments = config.packed_attention == "segments"
    with torch_threads(config.torch_threads), segment_attention(model, enabled=segments):
        return _train_lora(
            model,
            tokenizer,
            train_examples,
            val_examples,
            config,
            Path(output_dir),
            run_fingerprint=run_fingerprint,
            on_log=on_log,
            should_stop=should_stop,
        )


def _train_lora(
    model: Any,
    tokenizer: Any | None,
    train_examples: Sequence[Any],
    val_examples: Sequence[Any],
    config: TrainingConfig,
    output_dir: Path,
    *,
    run_fingerprint: str | None,
    on_log: OnLog | None,
    should_stop: ShouldStop | None,
) -> TrainingResult:
    import torch

    started = time.perf_counter()
    output_dir.mkdir(parents=True, exist_ok=True)
    train = _examples_with_loss(train_examples, "train")
    val = validation_sample(_examples_with_loss(val_examples, "val"), config)
    if not train:
        raise ValueError("no training example has a labelled token after the first position")
    if config.early_stopping_patience and not val:
        raise ValueError("early stopping needs validation examples")

    ranks = distributed.current_ranks()
    packs = pack_examples(train, max_tokens=config.pack_tokens, seed=config.seed, shuffle=False)
    step_rows = config.grad_accum * ranks.world_size  # packed rows per optimizer step, all ranks
    total_steps = config.max_steps or math.ceil(config.epochs * len(packs) / step_rows)
    if not config.max_steps and config.max_steps_cap:
        total_steps = min(total_steps, config.max_steps_cap)
    warmup_steps = (
        config.warmup_steps
        if config.warmup_steps is not None
        else math.ceil(config.warmup_ratio * total_steps)
    )
    fingerprint = run_fingerprint or fingerprint_run(
        config, train, val, base_model_id=_model_identity(model), world_size=ranks.world_size
    )

    torch.manual_seed(config.seed)
    peft_model = _attach_lora(model, config)
    device = _input_device(peft_model)
    forward = _data_parallel(peft_model, device) if ranks.is_distributed else None
    if ranks.is_distributed:  # the same LoRA init everywhere (above); dropout masks differ
        torch.manual_seed(config.seed + ranks.rank)
    trainable = [(n, p) for n, p in peft_model.named_parameters() if p.requires_grad]
    params = [p for _, p in trainable]
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.weight_decay)
    logger.info(
        "LoRA: %d trainable parameters, %d packs of <= %d tokens, %d steps (%d warmup), "
        "%d process(es)",
        sum(p.numel() for p in params),
        len(packs),
        config.pack_tokens,
        total_steps,
        warmup_steps,
        ranks.world_size,
    )

    checkpoints = output_dir / CHECKPOINTS_DIR
    state, best_snapshot = _RunState(), None
    resumed_from = None
    latest = _latest_checkpoint(checkpoints)
    if latest is not None:
        saved = json.loads((latest / _STATE_FILE).read_text())
        if saved.get("fingerprint") == fingerprint and saved.get("total_steps") == total_steps:
            state, best_snapshot = _load_checkpoint(latest, peft_model, optimizer, saved)
            resumed_from = state.step
            logger.info("resuming from checkpoint at step %d", state.step)
            _emit(on_log, state.step, {"resumed_from_step": float(state.step)})
        else:
            logger.warning("checkpoints in %s belong to another run: starting over", checkpoints)
            distributed.barrier()  # every rank has read them before rank 0 removes them
            if ranks.is_main:
                shutil.rmtree(checkpoints)
            _emit(on_log, 0, {"checkpoints_discarded": 1.0})

    orders: dict[int, list[int]] = {}

    def pack_for(micro_step: int) -> PackedBatch:
        epoch, index = divmod(micro_step, len(packs))
        if epoch not in orders:
            order = list(range(len(packs)))
            random.Random(config.seed * 100_003 + epoch).shuffle(order)
            orders[epoch] = order
        return packs[orders[epoch][index]]

    window = _Window()
    interrupted = False
    peft_model.train()
    while state.step < total_steps and not state.early_stopped:
        step_started = time.perf_counter()
        lr = lr_at(
            state.step,
            peak=config.learning_rate,
            warmup_steps=warmup_steps,
            total_steps=total_steps,
            min_ratio=config.min_lr_ratio,
        )
        for group in optimizer.param_groups:
            group["lr"] = lr
        step_all = [pack_for(state.step * step_rows + k) for k in range(step_rows)]
        rows = step_all[ranks.rank :: ranks.world_size]  # this rank's share of the step
        step_labels = sum(row.label_tokens for row in step_all)
        step_loss = 0.0
        for i, row in enumerate(rows):
            # DDP averages gradients over ranks; scaling by the world size makes that the sum.
            syncing = forward is None or i == len(rows) - 1
            with contextlib.nullcontext() if syncing else forward.no_sync():
                loss_sum, _ = _row_loss_sum(peft_model, row, device, forward=forward)
                (loss_sum * ranks.world_size / step_labels).backward()
            step_loss += loss_sum.item()
        if ranks.is_distributed:
            (step_loss,) = distributed.sum_across_ranks([step_loss])
        max_norm = config.max_grad_norm if config.max_grad_norm > 0 else math.inf
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, max_norm))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

        state.step += 1
        state.train_losses.append(step_loss / step_labels)
        state.tokens_processed += sum(row.num_tokens for row in step_all)
        state.real_tokens += sum(row.real_tokens for row in step_all)
        state.pad_tokens += sum(row.pad_tokens for row in step_all)
        seconds = time.perf_counter() - step_started
        state.train_seconds += seconds
        window.steps += 1
        window.loss_sum += step_loss
        window.labels += step_labels
        window.grad_norm_sum += grad_norm
        window.real_tokens += sum(row.real_tokens for row in step_all)
        window.seconds += seconds

        if state.step % config.log_every == 0 or state.step == total_steps:
            metrics = {
                "loss": window.loss_sum / window.labels,
                "learning_rate": lr,
                "grad_norm": window.grad_norm_sum / window.steps,
                "tokens_per_s": window.real_tokens / window.seconds,
                "real_tokens": float(state.real_tokens),
                "padding_waste": _waste(state),
                "eta_s": window.seconds / window.steps * (total_steps - state.step),
                "epoch": state.step * step_rows / len(packs),
            }
            logger.info(
                "step %d/%d loss %.4f lr %.2e grad_norm %.3f %.0f tok/s eta %.0fs",
                state.step,
                total_steps,
                metrics["loss"],
                lr,
                metrics["grad_norm"],
                metrics["tokens_per_s"],
                metrics["eta_s"],
            )
            _emit(on_log, state.step, metrics)
            window = _Window()

        last_step = state.step == total_steps
        if val and (last_step or (config.eval_every and state.step % config.eval_every == 0)):
            best_snapshot = _evaluate(peft_model, val, config, state, trainable, best_snapshot)
            _emit(on_log, state.step, _eval_metrics(state))
            peft_model.train()

        interrupted = should_stop is not None and not last_step and should_stop(state.step)
        if ranks.is_distributed and not last_step:  # a signal may reach one rank first
            interrupted = distributed.any_rank(interrupted)
        due = config.checkpoint_every and state.step % config.checkpoint_every == 0
        if interrupted or (due and not last_step):
            if ranks.is_main:
                _save_checkpoint(
                    checkpoints,
                    peft_model,
                    optimizer,
                    state,
                    best_snapshot,
                    fingerprint,
                    total_steps,
                )
                _prune_checkpoints(checkpoints, config.keep_checkpoints)
            distributed.barrier()
        if interrupted:
            logger.info("stopping at step %d on request; checkpoint saved", state.step)
            break

    final_eval = temperature = None
    adapter_dir = None
    if not interrupted:
        if val and (not state.eval_losses or state.eval_losses[-1][0] != state.step):
            best_snapshot = _evaluate(peft_model, val, config, state, trainable, best_snapshot)
            _emit(on_log, state.step, _eval_metrics(state))
        final_eval = state.eval_losses[-1][1] if state.eval_losses else None
        temperature = state.eval_temperatures[-1][1] if state.eval_temperatures else None
        if config.restore_best and best_snapshot is not None and state.best_step != state.step:
            _restore_trainable(trainable, best_snapshot)
            final_eval = state.best_eval_loss
            temperature = dict(state.eval_temperatures).get(state.best_step)
            logger.info("restored the adapter of step %s (lowest eval loss)", state.best_step)
        if ranks.is_main:
            adapter_dir = output_dir / ADAPTER_DIR
            _save_adapter_atomically(peft_model, tokenizer, adapter_dir)
            # Checkpoints exist to resume an interrupted run; a finished one would make the
            # next run of the same fingerprint "resume" at its last periodic checkpoint and
            # retrain the tail of a run that already ended.
            shutil.rmtree(checkpoints, ignore_errors=True)
        distributed.barrier()
    peft_model.eval()

    recent = state.train_losses[-config.log_every :]
    return TrainingResult(
        steps=state.step,
        total_steps=total_steps,
        completed=not interrupted,
        early_stopped=state.early_stopped,
        final_train_loss=sum(recent) / len(recent) if recent else None,
        final_eval_loss=final_eval,
        calibrated_temperature=temperature,
        best_eval_loss=state.best_eval_loss,
        best_step=state.best_step,
        eval_losses=list(state.eval_losses),
        eval_temperatures=list(state.eval_temperatures),
        train_losses=list(state.train_losses),
        tokens_processed=state.tokens_processed,
        real_tokens=state.real_tokens,
        padding_waste=_waste(state),
        seconds=time.perf_counter() - started,
        tokens_per_s=state.real_tokens / state.train_seconds if state.train_seconds else 0.0,
        resumed_from_step=resumed_from,
        adapter_dir=adapter_dir,
        fingerprint=fingerprint,
        model=peft_model,
    )


def reply_loss(model: Any, examples: Sequence[Any], *, batch_tokens: int = 1024) -> float:
    """Mean cross-entropy over reply tokens (labels != -100), packed like training.

    Works for a base model and for base + adapter, so the two can be compared on held-out pairs.
    Rows hold at least the longest example, whatever ``batch_tokens`` says.
    """
    total, count, _ = _reply_loss_sums(model, examples, batch_tokens, distributed.Ranks())
    return total / count


#: The sampling temperatures a validation pass scores the held-out replies at: the grid that
#: :func:`calibrated_temperature` refines.
TEMPERATURE_GRID = (0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.1, 1.2, 1.3, 1.4, 1.5)


def calibrated_temperature(
    losses: Sequence[float], grid: Sequence[float] = TEMPERATURE_GRID
) -> float:
    """The temperature at which the model's token distribution best predicts my held-out
    replies: the lowest mean loss of ``losses`` (one per ``grid`` temperature, the logits divided
    by it), refined by the parabola through that point and its neighbours, to 0.01.

    Sampling at this temperature draws replies from the distribution closest (in cross-entropy)
    to the person's own. A clone sampled colder than that writes its likeliest, most generic
    reply, which is what a reader spots: the adapters of five real channels measured 0.98-1.06,
    and sampling them at 1 instead of 0.7 lowered the discriminator's AUC on every one
    (benchmarks/RESULTS.md sections 14 and 15). The loss is convex in 1/T, so the grid's minimum
    brackets it.
    """
    if len(losses) != len(grid) or not grid:
        raise ValueError("calibrated_temperature needs one loss per grid temperature")
    best = min(range(len(grid)), key=lambda i: losses[i])
    chosen = grid[best]
    if 0 < best < len(grid) - 1:
        (t0, t1, t2), (y0, y1, y2) = grid[best - 1 : best + 2], losses[best - 1 : best + 2]
        left, right = (y1 - y0) / (t1 - t0), (y2 - y1) / (t2 - t1)  # slopes at the midpoints
        if right > left:  # the parabola's slope is zero between the midpoints: its vertex
            chosen = (t0 + t1) / 2 - left * (t2 - t0) / (2 * (right - left))
    return round(min(max(chosen, grid[0]), grid[-1]), 2)


def measure_temperature(model: Any, examples: Sequence[Any], *, batch_tokens: int = 1024) -> float:
    """:func:`calibrated_temperature` of ``model`` on ``examples``: one forward pass."""
    _, count, scaled = _reply_loss_sums(
        model, examples, batch_tokens, distributed.Ranks(), TEMPERATURE_GRID
    )
    return calibrated_temperature([total / count for total in scaled])


def _reply_loss_sums(
    model: Any,
    examples: Sequence[Any],
    batch_tokens: int,
    ranks: distributed.Ranks,
    temperatures: Sequence[float] = (),
) -> tuple[float, int, list[float]]:
    """Summed reply-token loss and token count of this rank's share of the packed rows, and the
    summed loss at each of ``temperatures`` (from the same logits: a few softmaxes more)."""
    import torch
    import torch.nn.functional as F

    examples = _examples_with_loss(examples, "evaluation")
    if not examples:
        raise ValueError("reply_loss needs at least one example with labelled tokens")
    longest = max(len(example_fields(example)[0]) for example in examples)
    rows = pack_examples(examples, max_tokens=max(batch_tokens, longest), seed=0, shuffle=False)
    rows = rows[ranks.rank :: ranks.world_size]
    device = _input_device(model)
    was_training = model.training
    model.eval()
    total, count, scaled = 0.0, 0, [0.0] * len(temperatures)
    try:
        with torch.inference_mode(), segment_attention(model):
            for row in rows:
                logits, targets, keep = _labelled_logits(model, row, device)
                logits, targets = logits.float(), targets[keep]
                total += F.cross_entropy(logits, targets, reduction="sum").item()
                count += int(keep.sum())
                for i, temperature in enumerate(temperatures):
                    scaled[i] += F.cross_entropy(
                        logits / temperature, targets, reduction="sum"
                    ).item()
    finally:
        model.train(was_training)
    return total, count, scaled


def _row_loss_sum(
    model: Any, row: PackedBatch, device: Any, *, forward: Any | None = None
) -> tuple[Any, int]:
    """Summed cross-entropy of one packed row, and the number of tokens it covers.

    The targets are the labels shifted left by one (the packing put -100 at every sample's first
    label, so no target crosses a sample boundary). ``forward`` is what to call instead of
    ``model`` (its DDP wrapper, which syncs gradients).
    """
    import torch.nn.functional as F

    logits, targets, keep = _labelled_logits(model, row, device, forward=forward)
    loss_sum = F.cross_entropy(logits.float(), targets[keep], reduction="sum")
    return loss_sum, int(keep.sum())


def packed_logprobs(model: Any, row: PackedBatch, device: Any) -> Any:
    """Summed log-probability of each example's labelled tokens in one packed row: a float32
    tensor with one entry per example of ``row.example_indices``, in row order, differentiable.

    What a preference objective needs (DPO compares whole replies), from the same forward pass
    as the supervised loss: reply tokens and their EOS only, samples isolated by position ids.
    """
    import torch
    import torch.nn.functional as F

    logits, targets, keep = _labelled_logits(model, row, device)
    token_logprobs = -F.cross_entropy(logits.float(), targets[keep], reduction="none")
    segment = torch.repeat_interleave(
        torch.arange(len(row.seq_lens), device=device),
        torch.tensor(row.seq_lens, device=device),
    )[keep]
    sums = torch.zeros(len(row.example_indices), device=device, dtype=torch.float32)
    return sums.index_add(0, segment, token_logprobs)


def _labelled_logits(
    model: Any, row: PackedBatch, device: Any, *, forward: Any | None = None
) -> tuple[Any, Any, Any]:
    """Logits at the positions that predict a labelled token, the shifted targets, and the mask
    of those positions.

    Only positions with a target are projected onto the vocabulary: a boolean
    ``logits_to_keep`` makes the model gather those hidden states before its own ``lm_head`` (any
    final logit scaling or soft-capping is kept that way). ``use_cache=False`` matters: with a
    cache transformers ignores the restarting position_ids and the samples of a row attend to
    each other.
    """
    import torch

    input_ids = torch.tensor([row.input_ids], device=device)
    position_ids = torch.tensor([row.position_ids], device=device)
    targets = torch.tensor([*row.labels[1:], IGNORE_INDEX], device=device)
    keep = targets != IGNORE_INDEX
    call = forward if forward is not None else model
    if _accepts_logits_to_keep(model):
        output = call(
            input_ids=input_ids,
            position_ids=position_ids,
            use_cache=False,
            logits_to_keep=keep[None],
        )
        logits = output.logits
    else:
        output = call(input_ids=input_ids, position_ids=position_ids, use_cache=False)
        logits = output.logits[0][keep]
    return logits, targets, keep


def free_cores(sample_s: float = 0.5) -> float | None:
    """Cores of this process' CPU set that were idle over ``sample_s`` (from /proc/stat);
    None where /proc/stat is unreadable (not Linux)."""

    def snapshot() -> dict[str, tuple[int, int]]:
        times = {}
        with open("/proc/stat", encoding="ascii") as stat:
            for line in stat:
                name, *fields = line.split()
                if name.startswith("cpu") and name != "cpu":
                    ticks = [int(f) for f in fields[:8]]
                    times[name] = (ticks[3] + ticks[4], sum(ticks))  # idle + iowait, total
        return times

    try:
        cpus = {f"cpu{i}" for i in os.sched_getaffinity(0)}
        before = snapshot()
        time.sleep(sample_s)
        after = snapshot()
    except (OSError, ValueError, AttributeError):
        return None
    idle = 0.0
    for cpu in cpus & before.keys() & after.keys():
        total = after[cpu][1] - before[cpu][1]
        idle += (after[cpu][0] - before[cpu][0]) / total if total > 0 else 1.0
    return idle


def auto_threads(sample_s: float = 0.5) -> int:
    """Threads for torch on this machine now: the cores that are free (rounded, at least one),
    never more than torch's own default (one per physical core).

    OpenMP threads spin-wait for each other, so one more thread than there are free cores
    costs far more than it brings: on 2 shared cores, 2 threads under load ran 3-12x slower
    than 1 (benchmarks/RESULTS.md). Measured once, when a block starts.
    """
    import torch

    default = torch.get_num_threads()
    free = free_cores(sample_s)
    if free is None:
        return default
    # torchrun's processes on this node share the free cores (each measured the same ones).
    free /= distributed.ranks_from_env().local_world_size
    return max(1, min(default, int(free + 0.25)))


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Use ``threads`` intra-op threads inside the block (None: :func:`auto_threads`, as many as
    there are free cores).

    torch's setting is process-wide. On a CPU shared with other jobs, one thread can be many
    times faster than two: OpenMP threads spin-wait for each other when one is descheduled.
    """
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(threads or auto_threads())
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _data_parallel(peft_model: Any, device: Any) -> Any:
    """``peft_model`` in DDP, syncing only the LoRA weights: the frozen base is loaded from the
    same files on every rank, so broadcasting it (or a 4-bit base's packed weights) is waste."""
    from torch.nn.parallel import DistributedDataParallel

    frozen = [name for name, p in peft_model.named_parameters() if not p.requires_grad]
    frozen += [name for name, _ in peft_model.named_buffers()]
    DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(peft_model, frozen)
    on_gpu = getattr(device, "type", str(device)).startswith("cuda")
    return DistributedDataParallel(
        peft_model, device_ids=[device] if on_gpu else None, broadcast_buffers=False
    )


def _input_device(model: Any) -> Any:
    """Where input ids must live: the embedding's device (models may span several devices)."""
    return model.get_input_embeddings().weight.device


def _accepts_logits_to_keep(model: Any) -> bool:
    causal_lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    cached = getattr(causal_lm, "_echo_accepts_logits_to_keep", None)
    if cached is None:
        cached = "logits_to_keep" in inspect.signature(causal_lm.forward).parameters
        causal_lm._echo_accepts_logits_to_keep = cached
    return cached


def validation_sample(val: Sequence[Any], config: TrainingConfig) -> list[Any]:
    """At most ``config.eval_max_pairs`` validation examples, in their own order, drawn with
    the run's seed: every pass scores the same ones, so steps compare like for like."""
    cap = config.eval_max_pairs
    if not cap or len(val) <= cap:
        return list(val)
    keep = sorted(random.Random(config.seed).sample(range(len(val)), cap))
    return [val[i] for i in keep]


def _examples_with_loss(examples: Sequence[Any], split: str) -> list[Any]:
    """Drop examples with nothing to learn (no labelled token after the first position)."""
    kept = [ex for ex in examples if any(x != IGNORE_INDEX for x in example_fields(ex)[1][1:])]
    if len(kept) < len(examples):
        logger.warning(
            "%s: %d examples without labelled tokens skipped", split, len(examples) - len(kept)
        )
    return kept


def _model_identity(model: Any) -> str:
    config = getattr(model, "config", None)
    name = getattr(config, "_name_or_path", "") or ""
    parameters = sum(p.numel() for p in model.parameters())
    return f"{type(model).__name__}:{name}:{parameters}"


def _attach_lora(model: Any, config: TrainingConfig) -> Any:
    """Wrap the base model in a PEFT LoRA model (frozen base, optional gradient checkpointing)."""
    import torch
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from peft.tuners.tuners_utils import BaseTunerLayer

    if any(isinstance(module, BaseTunerLayer) for module in model.modules()):
        raise ValueError(
            "the model already carries adapter layers: pass a freshly loaded base model "
            "(train_lora injects the LoRA layers in place)"
        )
    compute_dtype = compute_dtype_of(model)
    gc_kwargs = {"use_reentrant": False}
    if is_quantized(model) and compute_dtype == torch.float16:
        # fp16 k-bit training (GPUs without bf16) needs peft's fp32 norms, embeddings and head.
        model = prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=config.gradient_checkpointing,
            gradient_checkpointing_kwargs=gc_kwargs,
        )
    else:
        # bf16/fp32 bases keep their dtypes: peft's preparation would upcast every non-quantised
        # weight (embeddings, lm_head, norms: 1 GiB instead of 0.5 at 7B) to fp32 and, through
        # it, the adapters.
        for parameter in model.parameters():
            parameter.requires_grad_(False)
        if config.gradient_checkpointing:
            if hasattr(model, "activation_checkpointing_enable"):  # the name since transformers 5.x
                model.activation_checkpointing_enable(activation_checkpointing_kwargs=gc_kwargs)
            else:
                model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=gc_kwargs)

    on_cuda = next(model.parameters()).device.type == "cuda"
    adapter_dtype = resolve_adapter_dtype(config.adapter_dtype, compute_dtype, on_cuda=on_cuda)
    lora = LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=config.target_modules,
        bias="none",
        task_type="CAUSAL_LM",
    )
    peft_model = get_peft_model(model, lora, autocast_adapter_dtype=adapter_dtype == "float32")
    wanted = getattr(torch, adapter_dtype)
    for parameter in peft_model.parameters():
        if parameter.requires_grad and parameter.dtype != wanted:
            parameter.data = parameter.data.to(wanted)
    return peft_model


def is_quantized(model: Any) -> bool:
    return bool(
        getattr(model, "is_quantized", False)
        or getattr(model, "is_loaded_in_4bit", False)
        or getattr(model, "is_loaded_in_8bit", False)
    )


def compute_dtype_of(model: Any) -> Any:
    """The dtype the base's matmuls run in: a 4-bit model's ``bnb_4bit_compute_dtype``, else
    the dtype of its first floating-point weight."""
    import torch

    quantization = getattr(getattr(model, "config", None), "quantization_config", None)
    if quantization is not None and not isinstance(quantization, dict):
        quantization = quantization.to_dict()
    if quantization and quantization.get("load_in_4bit"):
        declared = getattr(torch, str(quantization.get("bnb_4bit_compute_dtype")), None)
        if isinstance(declared, torch.dtype):
            return declared
    return next(p.dtype for p in model.parameters() if p.is_floating_point())


def resolve_adapter_dtype(requested: str, compute_dtype: Any, *, on_cuda: bool) -> str:
    """``"auto"``: bf16 adapters when the base computes in bf16 on a GPU (no cast per LoRA
    matmul and tensor-core GEMMs: ~30 % faster per step), fp32 otherwise."""
    if requested != "auto":
        return requested
    import torch

    return "bfloat16" if on_cuda and compute_dtype == torch.bfloat16 else "float32"


def _evaluate(
    peft_model: Any,
    val: list[Any],
    config: TrainingConfig,
    state: _RunState,
    trainable: list[tuple[str, Any]],
    best_snapshot: dict[str, Any] | None,
) -> dict[str, Any] | None:
    """Record the eval loss; update best, patience and the best weights. Returns the snapshot.

    Each rank scores its share of the validation rows; the sums are added over ranks, so every
    rank takes the same early-stopping and best-step decisions."""
    total, count, scaled = _reply_loss_sums(
        peft_model, val, config.pack_tokens, distributed.current_ranks(), TEMPERATURE_GRID
    )
    total, count, *scaled = distributed.sum_across_ranks([total, float(count), *scaled])
    loss = total / count
    temperature = calibrated_temperature([s / count for s in scaled])
    state.eval_losses.append((state.step, loss))
    state.eval_temperatures.append((state.step, temperature))
    logger.info("step %d eval_loss %.4f calibrated temperature %.2f", state.step, loss, temperature)
    if (
        state.best_eval_loss is None
        or loss < state.best_eval_loss - config.early_stopping_min_delta
    ):
        state.best_eval_loss, state.best_step = loss, state.step
        state.evals_without_improvement = 0
        if config.restore_best:
            best_snapshot = {name: p.detach().clone() for name, p in trainable}
    else:
        state.evals_without_improvement += 1
        patience = config.early_stopping_patience
        if patience and state.evals_without_improvement >= patience:
            state.early_stopped = True
            logger.info("early stopping at step %d (best step %s)", state.step, state.best_step)
    return best_snapshot


def _eval_metrics(state: _RunState) -> dict[str, float]:
    return {
        "eval_loss": state.eval_losses[-1][1],
        "calibrated_temperature": state.eval_temperatures[-1][1],
    }


def _restore_trainable(trainable: list[tuple[str, Any]], snapshot: dict[str, Any]) -> None:
    import torch

    with torch.no_grad():
        for name, parameter in trainable:
            parameter.copy_(snapshot[name])


def _waste(state: _RunState) -> float:
    return state.pad_tokens / state.tokens_processed if state.tokens_processed else 0.0


def _emit(on_log: OnLog | None, step: int, metrics: dict[str, float]) -> None:
    if on_log is not None:
        on_log(step, metrics)


def _checkpoint_dirs(root: Path) -> list[Path]:
    """Complete checkpoints (renamed into place), oldest first."""
    if not root.is_dir():
        return []
    found = []
    for path in root.iterdir():
        prefix, _, number = path.name.partition("-")
        if prefix == "step" and number.isdigit() and (path / _STATE_FILE).is_file():
            found.append((int(number), path))
    return [path for _, path in sorted(found)]


def _latest_checkpoint(root: Path) -> Path | None:
    dirs = _checkpoint_dirs(root)
    return dirs[-1] if dirs else None


def _save_checkpoint(
    root: Path,
    peft_model: Any,
    optimizer: Any,
    state: _RunState,
    best_snapshot: dict[str, Any] | None,
    fingerprint: str,
    total_steps: int,
) -> Path:
    """Write ``root/step-N`` through :func:`~echo_pipeline.infra.storage.atomic_directory`: a
    checkpoint is on disk whole (fsynced) or not at all, so resume never meets half of one."""
    import torch
    from safetensors.torch import save_file

    final = root / f"step-{state.step}"
    with atomic_directory(final) as staging:
        peft_model.save_pretrained(staging)
        torch.save(optimizer.state_dict(), staging / _OPTIMIZER_FILE)
        rng = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        torch.save(rng, staging / _RNG_FILE)
        if best_snapshot is not None and state.best_step != state.step:
            best = {k: v.contiguous().cpu() for k, v in best_snapshot.items()}
            save_file(best, staging / _BEST_FILE)
        payload = dataclasses.asdict(state) | {
            "fingerprint": fingerprint,
            "total_steps": total_steps,
        }
        (staging / _STATE_FILE).write_text(json.dumps(payload))
    logger.info("checkpoint saved at step %d", state.step)
    return final


def _load_checkpoint(
    path: Path, peft_model: Any, optimizer: Any, saved: dict[str, Any]
) -> tuple[_RunState, dict[str, Any] | None]:
    import torch
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    device = _input_device(peft_model)
    weights = load_file(path / "adapter_model.safetensors", device=str(device))
    outcome = set_peft_model_state_dict(peft_model, weights)
    missing = [k for k in outcome.missing_keys if "lora_" in k]
    if missing:
        raise RuntimeError(f"checkpoint {path} lacks adapter weights {missing[:3]}")
    # weights_only: a checkpoint folder is data, never code (pickles can run code on load).
    optimizer.load_state_dict(
        torch.load(path / _OPTIMIZER_FILE, map_location=device, weights_only=True)
    )
    rng = torch.load(path / _RNG_FILE, weights_only=True)
    torch.set_rng_state(rng["torch"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    best = None
    if (path / _BEST_FILE).is_file():
        best = load_file(path / _BEST_FILE, device=str(device))
    elif saved.get("best_step") == saved["step"]:
        best = {n: p.detach().clone() for n, p in peft_model.named_parameters() if p.requires_grad}
    fields = {f.name for f in dataclasses.fields(_RunState)}
    state = _RunState(**{k: v for k, v in saved.items() if k in fields})
    state.eval_losses = [(int(s), float(v)) for s, v in state.eval_losses]
    state.eval_temperatures = [(int(s), float(v)) for s, v in state.eval_temperatures]
    return state, best


def _prune_checkpoints(root: Path, keep: int) -> None:
    """Keep the newest ``keep`` checkpoints. (What a killed save left is swept by storage.)"""
    for path in _checkpoint_dirs(root)[:-keep]:
        shutil.rmtree(path)


def _save_adapter_atomically(peft_model: Any, tokenizer: Any | None, adapter_dir: Path) -> None:
    with atomic_directory(adapter_dir) as staging:
        peft_model.save_pretrained(staging)
        if tokenizer is not None:
            tokenizer.save_pretrained(staging)
