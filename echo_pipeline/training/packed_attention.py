"""Attention for packed rows that computes only each sample's own causal block.

transformers runs a packed row (position_ids restarting at 0 for every sample, no padding mask)
through sdpa with a dense block-diagonal boolean mask: every one of the row's T x T scores is
computed and most are then masked away. Chat samples average ~90 tokens, so in a 1024-token row
over 90 % of that work is thrown away. Here the row is cut at the position restarts and each
sample runs its own causal sdpa call: the same mathematics (a sample sees only itself), a
fraction of the work, and no T x T mask to build. On a CUDA device in bf16/fp16, one call of
torch's flash varlen kernel (``torch.nn.attention.varlen``, torch >= 2.9) does the same for the
whole row, without a kernel launch per sample.

Sliding-window layers (Gemma 3: 5 of every 6 layers see only the last 512 tokens) pass their
``sliding_window``; a sample longer than the window gets a banded causal mask in its own call,
the rule transformers' sliding masks follow (a query sees itself and the ``window - 1`` keys
before it). Models that soft-cap attention scores (Gemma 2) are left on their own
implementation: sdpa has no soft-capping.

The implementation is registered with transformers' ``AttentionInterface`` and switched on only
inside :func:`segment_attention`, around training and held-out loss passes. Generation (padding
masks, KV caches) never sees it: it keeps the model's own implementation.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import itertools
from collections.abc import Iterator
from typing import Any

ATTENTION_NAME = "echo_segments"
# Implementations that already isolate packed samples without a dense mask (varlen kernels or
# block-sparse masks): left as they are.
_NATIVE_PACKED = ("flash_attention_2", "flash_attention_3", "flex_attention")
_SWAPPABLE = ("sdpa", "eager")

_registered = False


def segment_bounds(position_ids: Any) -> list[list[tuple[int, int]]]:
    """Per batch row, the ``(start, end)`` of every sample: a new one starts where the
    position does not follow the previous one by 1 (the rule transformers uses for packing)."""
    import torch

    rows = position_ids.detach()
    starts = torch.diff(rows, prepend=rows[:, :1] - 1, dim=-1) != 1
    starts[:, 0] = True
    bounds = []
    for row_starts in starts.cpu().tolist():
        cuts = [i for i, is_start in enumerate(row_starts) if is_start]
        cuts.append(len(row_starts))
        bounds.append(list(itertools.pairwise(cuts)))
    return bounds


def _cached_bounds(position_ids: Any) -> list[list[tuple[int, int]]]:
    """Bounds computed once per forward (one device sync, not one per layer): every layer
    receives the same position_ids tensor, which nothing edits in place during a forward."""
    cached = getattr(position_ids, "_echo_segment_bounds", None)
    if cached is None:
        cached = segment_bounds(position_ids)
        position_ids._echo_segment_bounds = cached
    return cached


def segment_attention_forward(
    module: Any,
    query: Any,
    key: Any,
    value: Any,
    attention_mask: Any,
    dropout: float = 0.0,
    scaling: float | None = None,
    position_ids: Any = None,
    sliding_window: int | None = None,
    **kwargs: Any,
) -> tuple[Any, None]:
    """One causal sdpa call per packed sample (banded when ``sliding_window`` is shorter than
    the sample); output laid out as transformers expects (batch, tokens, heads, head_dim)."""
    import torch

    if attention_mask is not None or query.shape[2] != key.shape[2]:
        raise RuntimeError(
            f"{ATTENTION_NAME} attention serves packed training rows only (no padding mask, no "
            "KV cache); leave the segment_attention() block before generating"
        )
    if kwargs.get("softcap") is not None:
        raise RuntimeError(f"{ATTENTION_NAME} attention has no attention-score soft-capping")

    if position_ids is None:  # one unpacked sequence per row: plain causal attention
        return _causal_sdpa(module, query, key, value, dropout, scaling, sliding_window), None

    def attend(b: int, start: int, end: int) -> Any:
        return _causal_sdpa(
            module,
            query[b : b + 1, :, start:end],
            key[b : b + 1, :, start:end],
            value[b : b + 1, :, start:end],
            dropout,
            scaling,
            sliding_window,
        )

    bounds_per_row = _cached_bounds(position_ids)
    longest = max(end - start for bounds in bounds_per_row for start, end in bounds)
    windowed = sliding_window is not None and longest > sliding_window
    if not windowed and _can_use_varlen(query, dropout, len(bounds_per_row)):
        return _varlen_forward(query, key, value, scaling, position_ids), None
    rows = []
    for b, bounds in enumerate(bounds_per_row):
        parts = [attend(b, start, end) for start, end in bounds]
        rows.append(parts[0] if len(parts) == 1 else torch.cat(parts, dim=1))
    return (rows[0] if len(rows) == 1 else torch.cat(rows, dim=0)), None


def _causal_sdpa(
    module: Any,
    query: Any,
    key: Any,
    value: Any,
    dropout: float,
    scaling: float | None,
    sliding_window: int | None,
) -> Any:
    """transformers' sdpa over one sequence: causal, or banded to ``sliding_window`` keys."""
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    length = query.shape[2]
    if sliding_window is None or length <= sliding_window:
        mask, causal = None, True
    else:
        offsets = torch.arange(length, device=query.device)
        distance = offsets[:, None] - offsets[None, :]  # query index minus key index
        mask, causal = ((distance >= 0) & (distance < sliding_window))[None, None], False
    return sdpa_attention_forward(
        module, query, key, value, mask, dropout=dropout, scaling=scaling, is_causal=causal
    )[0]


@functools.cache
def _varlen_kernel() -> tuple[Any, frozenset[str]] | None:
    """torch's flash varlen attention and the names of its parameters, or None."""
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:  # torch < 2.9
        return None
    parameters = frozenset(inspect.signature(varlen_attn).parameters)
    # the first releases took no softmax scale: those keep the per-sample loop
    return (varlen_attn, parameters) if "scale" in parameters else None


def _can_use_varlen(query: Any, dropout: float, rows: int) -> bool:
    """On CUDA in half precision, one flash varlen call per layer replaces the per-sample loop
    (whose kernel launches would dominate a GPU step at ~45 samples per 4096-token row)."""
    import torch

    return (
        query.is_cuda
        and query.dtype in (torch.bfloat16, torch.float16)
        and not dropout
        and rows == 1
        and _varlen_kernel() is not None
    )


def _varlen_forward(
    query: Any, key: Any, value: Any, scaling: float | None, position_ids: Any
) -> Any:
    """Flash attention over the concatenated samples of one row, cut by cumulative lengths."""
    import torch

    kernel, parameters = _varlen_kernel()
    (bounds,) = _cached_bounds(position_ids)
    cuts = getattr(position_ids, "_echo_cu_seqlens", None)
    if cuts is None:
        cuts = torch.tensor(
            [0, *(end for _, end in bounds)], dtype=torch.int32, device=query.device
        )
        position_ids._echo_cu_seqlens = cuts
    longest = max(end - start for start, end in bounds)
    q, k, v = (t[0].transpose(0, 1).contiguous() for t in (query, key, value))  # (T, H, D)
    kwargs: dict[str, Any] = {"scale": scaling}
    if "window_size" in parameters:
        kwargs["window_size"] = (-1, 0)  # causal
    else:
        kwargs["is_causal"] = True
    if k.shape[1] != q.shape[1]:
        if "enable_gqa" in parameters:
            kwargs["enable_gqa"] = True
        else:
            groups = q.shape[1] // k.shape[1]
            k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    out = kernel(q, k, v, cuts, cuts, longest, longest, **kwargs)
    return out[None]  # (1, T, H, D), the layout attention functions return


def _register() -> None:
    global _registered
    if _registered:
        return
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, flash_attention_mask

    AttentionInterface.register(ATTENTION_NAME, segment_attention_forward)
    # Like flash attention's: no 4D mask is built (None, or the 2D padding mask we then refuse).
    ALL_MASK_ATTENTION_FUNCTIONS.register(ATTENTION_NAME, flash_attention_mask)
    _registered = True


@contextlib.contextmanager
def segment_attention(model: Any, enabled: bool = True) -> Iterator[bool]:
    """Run packed forward passes of ``model`` (a causal LM or a PEFT wrapper) with per-sample
    attention inside the block; yields whether it was switched on. Models on eager or sdpa
    attention are switched; flash/flex implementations are left alone (they already skip the
    masked blocks), as is anything not built on transformers' attention interface or that
    soft-caps attention scores (sdpa cannot)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = getattr(base, "config", None)
    previous = getattr(config, "_attn_implementation", None)
    swappable = (
        enabled
        and previous in _SWAPPABLE
        and getattr(config, "attn_logit_softcapping", None) is None
        and hasattr(base, "set_attn_implementation")
        and getattr(base, "_can_set_attn_implementation", lambda: False)()
    )
    if not swappable:
        yield previous == ATTENTION_NAME or previous in _NATIVE_PACKED
        return
    _register()
    base.set_attn_implementation(ATTENTION_NAME)
    try:
        yield True
    finally:
        base.set_attn_implementation(previous)
