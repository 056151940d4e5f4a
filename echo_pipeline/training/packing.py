"""Padding-free packing of tokenised examples into rows for causal-LM training.

Several whole examples share one row; ``position_ids`` restart at 0 for each of them. With
``use_cache=False`` transformers reads the restarts as sequence boundaries and builds a
block-diagonal causal mask (sdpa, eager, flex), so an example never attends to its neighbours and
its logits are the same as when it runs alone. Compared with padding every example to a cutoff,
nearly every token processed is a real one.

Labels follow transformers' ``DataCollatorWithFlattening`` convention: unshifted, and the first
label of every example is -100. The model predicts ``labels[t + 1]`` from position ``t``, so the
last token of one example would otherwise be trained to predict the first token of the next one.
Nothing is lost: the first token of a sequence has no left context and is never predicted.

Pure Python (no torch) so that packing can be inspected and tested without the training stack.
"""

from __future__ import annotations

import bisect
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from echo_pipeline.infra.schemas import IGNORE_INDEX


@dataclass(frozen=True)
class PackedBatch:
    """One packed row: whole examples back to back, optionally followed by one padding segment.

    ``seq_lens`` lists every segment of the row in order (the padding segment last, when there is
    one), so ``cu_seqlens`` is what a varlen attention kernel expects. ``example_indices`` maps the
    real segments back to positions in the input sequence of examples.
    """

    input_ids: list[int]
    labels: list[int]
    position_ids: list[int]
    seq_lens: list[int]
    example_indices: list[int]
    pad_tokens: int = 0

    @property
    def cu_seqlens(self) -> list[int]:
        """Cumulative segment boundaries: ``[0, len0, len0 + len1, ..., num_tokens]``."""
        bounds = [0]
        for length in self.seq_lens:
            bounds.append(bounds[-1] + length)
        return bounds

    @property
    def num_tokens(self) -> int:
        """Tokens the model processes for this row, padding included."""
        return len(self.input_ids)

    @property
    def real_tokens(self) -> int:
        return len(self.input_ids) - self.pad_tokens

    @property
    def label_tokens(self) -> int:
        """Tokens that carry a loss (reply tokens and their EOS)."""
        return sum(1 for label in self.labels if label != IGNORE_INDEX)


@dataclass(frozen=True)
class PaddedBatch:
    """Baseline batch: each example right-padded to a fixed cutoff, one row per example."""

    input_ids: list[list[int]]
    labels: list[list[int]]
    attention_mask: list[list[int]]
    example_indices: list[int]
    pad_tokens: int

    @property
    def num_tokens(self) -> int:
        return sum(len(row) for row in self.input_ids)

    @property
    def real_tokens(self) -> int:
        return self.num_tokens - self.pad_tokens

    @property
    def label_tokens(self) -> int:
        return sum(1 for row in self.labels for label in row if label != IGNORE_INDEX)


class _CountsTokens(Protocol):
    @property
    def num_tokens(self) -> int: ...

    pad_tokens: int


def example_fields(example: Any) -> tuple[list[int], list[int]]:
    """``(input_ids, labels)`` of a mapping or of an object with those attributes."""
    if isinstance(example, Mapping):
        input_ids, labels = example["input_ids"], example["labels"]
    else:
        input_ids, labels = example.input_ids, example.labels
    input_ids, labels = list(input_ids), list(labels)
    if len(input_ids) != len(labels):
        raise ValueError(
            f"input_ids and labels differ in length ({len(input_ids)} vs {len(labels)}); "
            "tokenisation must label every token (-100 where there is no loss)"
        )
    return input_ids, labels


def pack_examples(
    examples: Sequence[Any],
    *,
    max_tokens: int,
    seed: int | None = None,
    shuffle: bool = True,
    pad_to_max_tokens: bool = False,
    pad_token_id: int = 0,
) -> list[PackedBatch]:
    """Pack whole examples into rows of at most ``max_tokens`` tokens (best-fit decreasing).

    Each example goes, longest first, into the fullest row that still has room for it, which
    fills rows to within a few percent of ``max_tokens`` for chat-length examples. Ties in length
    are broken by a seeded shuffle and, with ``shuffle``, the order of the rows is seeded too, so
    the result is a pure function of the inputs. An example longer than ``max_tokens`` is an
    error: truncation belongs to tokenisation, where the prompt can be cut instead of the reply.

    ``pad_to_max_tokens`` appends one padding segment (its own positions, labels -100) so that
    every row has exactly ``max_tokens`` tokens, for accelerators that want static shapes.
    """
    if max_tokens <= 0:
        raise ValueError(f"max_tokens must be positive, got {max_tokens}")
    fields = [example_fields(example) for example in examples]
    for index, (input_ids, _) in enumerate(fields):
        if not input_ids:
            raise ValueError(f"example {index} has no tokens")
        if len(input_ids) > max_tokens:
            raise ValueError(
                f"example {index} has {len(input_ids)} tokens, more than max_tokens={max_tokens}; "
                "truncate it during tokenisation or raise the pack size"
            )

    rng = random.Random(seed)
    order = list(range(len(fields)))
    rng.shuffle(order)  # breaks ties between equal lengths; the sort below is stable
    order.sort(key=lambda i: len(fields[i][0]), reverse=True)

    bins: list[list[int]] = []
    # (space left, bin number), kept sorted so the tightest bin that fits is one bisect away.
    space_left: list[tuple[int, int]] = []
    for index in order:
        length = len(fields[index][0])
        slot = bisect.bisect_left(space_left, (length, -1))
        if slot == len(space_left):
            bins.append([index])
            bin_number, left = len(bins) - 1, max_tokens - length
        else:
            left, bin_number = space_left.pop(slot)
            bins[bin_number].append(index)
            left -= length
        if left > 0:
            bisect.insort(space_left, (left, bin_number))

    if shuffle:
        rng.shuffle(bins)
    pad_to = max_tokens if pad_to_max_tokens else None
    return [_build_row(members, fields, pad_to, pad_token_id) for members in bins]


def _build_row(
    members: list[int],
    fields: list[tuple[list[int], list[int]]],
    pad_to: int | None,
    pad_token_id: int,
) -> PackedBatch:
    input_ids: list[int] = []
    labels: list[int] = []
    position_ids: list[int] = []
    seq_lens: list[int] = []
    for index in members:
        ids, labs = fields[index]
        input_ids.extend(ids)
        labels.append(IGNORE_INDEX)
        labels.extend(labs[1:])
        position_ids.extend(range(len(ids)))
        seq_lens.append(len(ids))
    pad = 0 if pad_to is None else pad_to - len(input_ids)
    if pad > 0:
        input_ids.extend([pad_token_id] * pad)
        labels.extend([IGNORE_INDEX] * pad)
        position_ids.extend(range(pad))
        seq_lens.append(pad)
    return PackedBatch(
        input_ids=input_ids,
        labels=labels,
        position_ids=position_ids,
        seq_lens=seq_lens,
        example_indices=list(members),
        pad_tokens=pad,
    )


def padded_batches(
    examples: Sequence[Any],
    cutoff: int = 256,
    micro_batch: int = 4,
    *,
    pad_token_id: int = 0,
) -> list[PaddedBatch]:
    """The naive recipe, for benchmarks: truncate or right-pad every example to ``cutoff``.

    This is what text-generation-webui's LoRA trainer does (one example per row, ``cutoff_len``
    tokens each, ``micro_batch_size`` rows per step); kept here to measure packing against it.
    """
    batches = []
    for start in range(0, len(examples), micro_batch):
        rows_ids, rows_labels, rows_mask, indices = [], [], [], []
        pad_tokens = 0
        for index in range(start, min(start + micro_batch, len(examples))):
            ids, labs = example_fields(examples[index])
            ids, labs = ids[:cutoff], labs[:cutoff]
            pad = cutoff - len(ids)
            rows_ids.append(ids + [pad_token_id] * pad)
            rows_labels.append(labs + [IGNORE_INDEX] * pad)
            rows_mask.append([1] * len(ids) + [0] * pad)
            indices.append(index)
            pad_tokens += pad
        batches.append(
            PaddedBatch(
                input_ids=rows_ids,
                labels=rows_labels,
                attention_mask=rows_mask,
                example_indices=indices,
                pad_tokens=pad_tokens,
            )
        )
    return batches


def padding_waste(batches: Iterable[_CountsTokens]) -> float:
    """Share of processed tokens that are padding (0.0 for an empty list)."""
    processed = pad = 0
    for batch in batches:
        processed += batch.num_tokens
        pad += batch.pad_tokens
    return pad / processed if processed else 0.0
