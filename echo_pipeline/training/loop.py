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
import json
import logging
import math
import random
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from echo_pipeline.training import distributed
from echo_pipeline.training.checkpoints import (
    ADAPTER_DIR,
    CHECKPOINTS_DIR,
    STATE_FILE,
    RunState,
    latest_checkpoint,
    load_checkpoint,
    prune_checkpoints,
    save_adapter_atomically,
    save_checkpoint,
)
from echo_pipeline.training.config import TrainingConfig, fingerprint_run, lr_at
from echo_pipeline.training.lora import attach_lora, data_parallel, input_device, model_identity
from echo_pipeline.training.losses import (
    TEMPERATURE_GRID,
    calibrated_temperature,
    examples_with_loss,
    reply_loss_sums,
    row_loss_sum,
)
from echo_pipeline.training.packed_attention import segment_attention
from echo_pipeline.training.packing import PackedBatch, pack_examples
from echo_pipeline.training.threads import torch_threads

logger = logging.getLogger(__name__)


OnLog = Callable[[int, dict[str, float]], None]


ShouldStop = Callable[[int], bool]


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
class _Window:
    """Sums over the steps since the last progress report."""

    steps: int = 0
    loss_sum: float = 0.0
    labels: int = 0
    grad_norm_sum: float = 0.0
    real_tokens: int = 0
    seconds: float = 0.0


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


@dataclass(frozen=True)
class _Plan:
    """How many optimizer steps, over which packed rows, with how much warm-up."""

    packs: list[PackedBatch]
    step_rows: int  # packed rows per optimizer step, all ranks together
    total_steps: int
    warmup_steps: int

    def rows_of_step(self, step: int, seed: int) -> list[PackedBatch]:
        """The rows of optimizer step ``step``: a fresh seeded order of the packs per epoch."""
        rows = []
        for micro_step in range(step * self.step_rows, (step + 1) * self.step_rows):
            epoch, index = divmod(micro_step, len(self.packs))
            order = list(range(len(self.packs)))
            random.Random(seed * 100_003 + epoch).shuffle(order)
            rows.append(self.packs[order[index]])
        return rows


def _plan(train: Sequence[Any], config: TrainingConfig, world_size: int) -> _Plan:
    packs = pack_examples(train, max_tokens=config.pack_tokens, seed=config.seed, shuffle=False)
    step_rows = config.grad_accum * world_size
    total_steps = config.max_steps or math.ceil(config.epochs * len(packs) / step_rows)
    if not config.max_steps and config.max_steps_cap:
        total_steps = min(total_steps, config.max_steps_cap)
    warmup_steps = (
        config.warmup_steps
        if config.warmup_steps is not None
        else math.ceil(config.warmup_ratio * total_steps)
    )
    return _Plan(packs, step_rows, total_steps, warmup_steps)


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
    train = examples_with_loss(train_examples, "train")
    val = validation_sample(examples_with_loss(val_examples, "val"), config)
    if not train:
        raise ValueError("no training example has a labelled token after the first position")
    if config.early_stopping_patience and not val:
        raise ValueError("early stopping needs validation examples")

    ranks = distributed.current_ranks()
    plan = _plan(train, config, ranks.world_size)
    fingerprint = run_fingerprint or fingerprint_run(
        config, train, val, base_model_id=model_identity(model), world_size=ranks.world_size
    )

    torch.manual_seed(config.seed)
    peft_model = attach_lora(model, config)
    device = input_device(peft_model)
    forward = data_parallel(peft_model, device) if ranks.is_distributed else None
    if ranks.is_distributed:  # the same LoRA init everywhere (above); dropout masks differ
        torch.manual_seed(config.seed + ranks.rank)
    trainable = [(n, p) for n, p in peft_model.named_parameters() if p.requires_grad]
    params = [p for _, p in trainable]
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.weight_decay)
    logger.info(
        "LoRA: %d trainable parameters, %d packs of <= %d tokens, %d steps (%d warmup), "
        "%d process(es)",
        sum(p.numel() for p in params),
        len(plan.packs),
        config.pack_tokens,
        plan.total_steps,
        plan.warmup_steps,
        ranks.world_size,
    )

    checkpoints = output_dir / CHECKPOINTS_DIR
    state, best_snapshot = _resume(
        checkpoints, peft_model, optimizer, fingerprint, plan.total_steps, on_log
    )
    resumed_from = state.step or None

    window = _Window()
    interrupted = False
    peft_model.train()
    while state.step < plan.total_steps and not state.early_stopped:
        step_started = time.perf_counter()
        lr = lr_at(
            state.step,
            peak=config.learning_rate,
            warmup_steps=plan.warmup_steps,
            total_steps=plan.total_steps,
            min_ratio=config.min_lr_ratio,
        )
        for group in optimizer.param_groups:
            group["lr"] = lr
        step_all = plan.rows_of_step(state.step, config.seed)
        step_loss, grad_norm = _optimizer_step(
            peft_model, step_all, ranks, forward, device, params, optimizer, config
        )
        step_labels = sum(row.label_tokens for row in step_all)
        state.step += 1
        seconds = time.perf_counter() - step_started
        _count(state, window, step_all, step_loss, step_labels, grad_norm, seconds)

        last_step = state.step == plan.total_steps
        if state.step % config.log_every == 0 or last_step:
            _emit(on_log, state.step, _window_metrics(state, window, plan, lr))
            window = _Window()

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
                save_checkpoint(
                    checkpoints,
                    peft_model,
                    optimizer,
                    state,
                    best_snapshot,
                    fingerprint,
                    plan.total_steps,
                )
                prune_checkpoints(checkpoints, config.keep_checkpoints)
            distributed.barrier()
        if interrupted:
            logger.info("stopping at step %d on request; checkpoint saved", state.step)
            break

    final_eval = temperature = adapter_dir = None
    if not interrupted:
        final_eval, temperature = _final_adapter(
            peft_model, val, config, state, trainable, best_snapshot, on_log
        )
        if ranks.is_main:
            adapter_dir = output_dir / ADAPTER_DIR
            save_adapter_atomically(peft_model, tokenizer, adapter_dir)
            # Checkpoints exist to resume an interrupted run; a finished one would make the
            # next run of the same fingerprint "resume" at its last periodic checkpoint and
            # retrain the tail of a run that already ended.
            shutil.rmtree(checkpoints, ignore_errors=True)
        distributed.barrier()
    peft_model.eval()

    recent = state.train_losses[-config.log_every :]
    return TrainingResult(
        steps=state.step,
        total_steps=plan.total_steps,
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


def _resume(
    checkpoints: Path,
    peft_model: Any,
    optimizer: Any,
    fingerprint: str,
    total_steps: int,
    on_log: OnLog | None,
) -> tuple[RunState, Any]:
    """The state of the run's latest checkpoint (and its best adapter), where it is this run's
    (same fingerprint and step count); else a fresh state, the other run's checkpoints gone."""
    latest = latest_checkpoint(checkpoints)
    if latest is None:
        return RunState(), None
    saved = json.loads((latest / STATE_FILE).read_text())
    if saved.get("fingerprint") == fingerprint and saved.get("total_steps") == total_steps:
        state, best_snapshot = load_checkpoint(latest, peft_model, optimizer, saved)
        logger.info("resuming from checkpoint at step %d", state.step)
        _emit(on_log, state.step, {"resumed_from_step": float(state.step)})
        return state, best_snapshot
    logger.warning("checkpoints in %s belong to another run: starting over", checkpoints)
    distributed.barrier()  # every rank has read them before rank 0 removes them
    if distributed.current_ranks().is_main:
        shutil.rmtree(checkpoints)
    _emit(on_log, 0, {"checkpoints_discarded": 1.0})
    return RunState(), None


def _optimizer_step(
    peft_model: Any,
    step_all: list[PackedBatch],
    ranks: distributed.Ranks,
    forward: Any,
    device: Any,
    params: list[Any],
    optimizer: Any,
    config: TrainingConfig,
) -> tuple[float, float]:
    """One optimizer step over this rank's share of ``step_all``: the loss is the sum over
    every labelled token of the step (all ranks) divided by their count, so rows of any length
    weigh by their tokens. Returns (summed token loss of the step, gradient norm)."""
    import torch

    rows = step_all[ranks.rank :: ranks.world_size]  # this rank's share of the step
    step_labels = sum(row.label_tokens for row in step_all)
    step_loss = 0.0
    for i, row in enumerate(rows):
        # DDP averages gradients over ranks; scaling by the world size makes that the sum.
        syncing = forward is None or i == len(rows) - 1
        with contextlib.nullcontext() if syncing else forward.no_sync():
            loss_sum, _ = row_loss_sum(peft_model, row, device, forward=forward)
            (loss_sum * ranks.world_size / step_labels).backward()
        step_loss += loss_sum.item()
    if ranks.is_distributed:
        (step_loss,) = distributed.sum_across_ranks([step_loss])
    max_norm = config.max_grad_norm if config.max_grad_norm > 0 else math.inf
    grad_norm = float(torch.nn.utils.clip_grad_norm_(params, max_norm))
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return step_loss, grad_norm


def _count(
    state: RunState,
    window: _Window,
    step_all: list[PackedBatch],
    step_loss: float,
    step_labels: int,
    grad_norm: float,
    seconds: float,
) -> None:
    """A finished step's numbers, into the run's totals and the logging window."""
    real = sum(row.real_tokens for row in step_all)
    state.train_losses.append(step_loss / step_labels)
    state.tokens_processed += sum(row.num_tokens for row in step_all)
    state.real_tokens += real
    state.pad_tokens += sum(row.pad_tokens for row in step_all)
    state.train_seconds += seconds
    window.steps += 1
    window.loss_sum += step_loss
    window.labels += step_labels
    window.grad_norm_sum += grad_norm
    window.real_tokens += real
    window.seconds += seconds


def _window_metrics(state: RunState, window: _Window, plan: _Plan, lr: float) -> dict[str, float]:
    metrics = {
        "loss": window.loss_sum / window.labels,
        "learning_rate": lr,
        "grad_norm": window.grad_norm_sum / window.steps,
        "tokens_per_s": window.real_tokens / window.seconds,
        "real_tokens": float(state.real_tokens),
        "padding_waste": _waste(state),
        "eta_s": window.seconds / window.steps * (plan.total_steps - state.step),
        "epoch": state.step * plan.step_rows / len(plan.packs),
    }
    logger.info(
        "step %d/%d loss %.4f lr %.2e grad_norm %.3f %.0f tok/s eta %.0fs",
        state.step,
        plan.total_steps,
        metrics["loss"],
        lr,
        metrics["grad_norm"],
        metrics["tokens_per_s"],
        metrics["eta_s"],
    )
    return metrics


def _final_adapter(
    peft_model: Any,
    val: Sequence[Any],
    config: TrainingConfig,
    state: RunState,
    trainable: list[tuple[str, Any]],
    best_snapshot: Any,
    on_log: OnLog | None,
) -> tuple[float | None, float | None]:
    """A finished run's last validation (if the last step had none), and the adapter it keeps:
    the best step's with ``restore_best``. Returns its (validation loss, temperature)."""
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
    return final_eval, temperature


def validation_sample(val: Sequence[Any], config: TrainingConfig) -> list[Any]:
    """At most ``config.eval_max_pairs`` validation examples, in their own order, drawn with
    the run's seed: every pass scores the same ones, so steps compare like for like."""
    cap = config.eval_max_pairs
    if not cap or len(val) <= cap:
        return list(val)
    keep = sorted(random.Random(config.seed).sample(range(len(val)), cap))
    return [val[i] for i in keep]


def _evaluate(
    peft_model: Any,
    val: list[Any],
    config: TrainingConfig,
    state: RunState,
    trainable: list[tuple[str, Any]],
    best_snapshot: dict[str, Any] | None,
) -> dict[str, Any] | None:
    """Record the eval loss; update best, patience and the best weights. Returns the snapshot.

    Each rank scores its share of the validation rows; the sums are added over ranks, so every
    rank takes the same early-stopping and best-step decisions."""
    total, count, scaled = reply_loss_sums(
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


def _eval_metrics(state: RunState) -> dict[str, float]:
    return {
        "eval_loss": state.eval_losses[-1][1],
        "calibrated_temperature": state.eval_temperatures[-1][1],
    }


def _restore_trainable(trainable: list[tuple[str, Any]], snapshot: dict[str, Any]) -> None:
    import torch

    with torch.no_grad():
        for name, parameter in trainable:
            parameter.copy_(snapshot[name])


def _waste(state: RunState) -> float:
    return state.pad_tokens / state.tokens_processed if state.tokens_processed else 0.0


def _emit(on_log: OnLog | None, step: int, metrics: dict[str, float]) -> None:
    if on_log is not None:
        on_log(step, metrics)
