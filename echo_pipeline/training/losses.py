"""Held-out reply loss and the sampling temperature it implies, on packed rows: the numbers
training, evaluation and the preference stage read from a model."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from echo_pipeline.training import distributed
from echo_pipeline.training.lora import accepts_logits_to_keep, input_device
from echo_pipeline.training.packed_attention import segment_attention
from echo_pipeline.training.packing import (
    IGNORE_INDEX,
    PackedBatch,
    example_fields,
    pack_examples,
)

logger = logging.getLogger(__name__)


def reply_loss(model: Any, examples: Sequence[Any], *, batch_tokens: int = 1024) -> float:
    """Mean cross-entropy over reply tokens (labels != -100), packed like training.

    Works for a base model and for base + adapter, so the two can be compared on held-out pairs.
    Rows hold at least the longest example, whatever ``batch_tokens`` says.
    """
    total, count, _ = reply_loss_sums(model, examples, batch_tokens, distributed.Ranks())
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
    _, count, scaled = reply_loss_sums(
        model, examples, batch_tokens, distributed.Ranks(), TEMPERATURE_GRID
    )
    return calibrated_temperature([total / count for total in scaled])


def reply_loss_sums(
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

    examples = examples_with_loss(examples, "evaluation")
    if not examples:
        raise ValueError("reply_loss needs at least one example with labelled tokens")
    longest = max(len(example_fields(example)[0]) for example in examples)
    rows = pack_examples(examples, max_tokens=max(batch_tokens, longest), seed=0, shuffle=False)
    rows = rows[ranks.rank :: ranks.world_size]
    device = input_device(model)
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


def row_loss_sum(
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
    if accepts_logits_to_keep(model):
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


def examples_with_loss(examples: Sequence[Any], split: str) -> list[Any]:
    """Drop examples with nothing to learn (no labelled token after the first position)."""
    kept = [ex for ex in examples if any(x != IGNORE_INDEX for x in example_fields(ex)[1][1:])]
    if len(kept) < len(examples):
        logger.warning(
            "%s: %d examples without labelled tokens skipped", split, len(examples) - len(kept)
        )
    return kept
