"""Which offline base speaks my language: bits per character on my own train replies.

SmolLM2 is an English model; Gemma 3 270M's 262k-word vocabulary covers far more languages. A
single default chosen on an English channel fails a Hinglish chat, so ``--base-model auto``
scores every installed offline base on the person's own train replies (one forward pass over a
bounded sample, no training) and takes the one that models them best. The larger base costs
about twice the training time, and on the one real English channel where both were trained it
lost (discriminator AUC 0.93 against 0.85) while it models the risc-v channel's replies only 6 %
better, so another base has to win by a clear margin: 15 %, which Hinglish clears (19-31 %
measured) and the bundled English sample does not (14 %).

The choice is cached beside the pairs, keyed by the pairs' bytes and each candidate's
fingerprint, so every asset that resolves the base in one pipeline sees the same answer and the
forward passes run once.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from echo_pipeline.training.base_model import (
    BASE_MODEL_ALIASES,
    DEFAULT_BASE_MODEL,
    BaseModelError,
    ResolvedBaseModel,
    resolve_base_model,
)

AUTO = "auto"
#: The share of the default's bits per character another base must save to be chosen.
DEFAULT_MARGIN = 0.15
#: Enough text for a stable estimate (about two thousand tokens), little enough for a minute per base.
DEFAULT_MAX_CHARS = 8_000
CHOICE_FILE = "base_model_choice.json"
CHOICE_TAG = "echo.base_model_choice"  # MLflow tag: why this base (with one tag per score)


@dataclass(frozen=True)
class BaseChoice:
    """The bases scored, their bits per character on my replies, and the one chosen."""

    chosen: str
    bits_per_char: dict[str, float]
    chars_scored: int
    margin: float
    key: str = ""
    reason: str = ""
    skipped: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def tags(self) -> dict[str, str]:
        """MLflow tags of a run trained on the chosen base: the choice and every score."""
        scores = {
            f"{CHOICE_TAG}.bits_per_char.{n}": f"{v:.4f}" for n, v in self.bits_per_char.items()
        }
        return {CHOICE_TAG: self.reason or self.chosen, **scores}


def sample_texts(
    texts: Sequence[str], max_chars: int = DEFAULT_MAX_CHARS, seed: int = 0
) -> list[str]:
    """A deterministic sample of ``texts`` (shuffled by ``seed``) up to ``max_chars`` characters."""
    order = list(range(len(texts)))
    random.Random(seed).shuffle(order)
    picked, total = [], 0
    for index in order:
        text = str(texts[index]).strip()
        if not text:
            continue
        picked.append(text)
        total += len(text)
        if total >= max_chars:
            break
    return picked


def bits_per_character(
    resolved: ResolvedBaseModel, texts: Sequence[str], *, batch_size: int = 8
) -> float:
    """The base model's bits per character on ``texts``, each scored on its own.

    Per character, not per token: the bases' tokenizers differ (49k against 262k words), and a
    token-level loss would favour the one that cuts text into fewer, harder pieces.
    """
    import torch

    from echo_pipeline.training.base_model import load_causal_lm, load_tokenizer

    if not texts:
        raise ValueError("no text to score the base model on")
    tokenizer = load_tokenizer(resolved)
    model = load_causal_lm(resolved, dtype="float32", device="cpu", purpose="inference")
    model.eval()
    bos = tokenizer.bos_token_id
    pad = tokenizer.pad_token_id or 0
    encoded = [tokenizer(text, add_special_tokens=False)["input_ids"][:512] for text in texts]
    # Every character is scored: the first token is predicted from BOS (EOS where there is none).
    start_id = bos if bos is not None else tokenizer.eos_token_id
    rows = sorted(([start_id, *ids] for ids in encoded), key=len)  # little padding
    nats = 0.0
    with torch.inference_mode():
        for start in range(0, len(rows), batch_size):
            batch = rows[start : start + batch_size]
            width = max(len(row) for row in batch)
            input_ids = torch.tensor([row + [pad] * (width - len(row)) for row in batch])
            mask = torch.tensor([[1] * len(row) + [0] * (width - len(row)) for row in batch])
            logits = model(input_ids=input_ids, attention_mask=mask, use_cache=False).logits
            target = input_ids[:, 1:].masked_fill(mask[:, 1:] == 0, -100)
            nats += float(
                torch.nn.functional.cross_entropy(
                    logits[:, :-1].flatten(0, 1).float(), target.flatten(), reduction="sum"
                )
            )
    # Characters of what was scored: the text itself, or what is left of it after the cut.
    chars = sum(
        len(text) if len(ids) < 512 else len(tokenizer.decode(ids, skip_special_tokens=True))
        for text, ids in zip(texts, encoded, strict=True)
    )
    return nats / math.log(2) / max(chars, 1)


def installed_bases() -> list[str]:
    """The offline bases whose packages are installed, the default first."""
    from echo_pipeline.training.base_model import packaged_gguf_path

    found = []
    for alias in (DEFAULT_BASE_MODEL, *[a for a in BASE_MODEL_ALIASES if a != DEFAULT_BASE_MODEL]):
        try:
            packaged_gguf_path(alias)
        except BaseModelError:
            continue
        found.append(alias)
    return found


def choose(scores: dict[str, float], margin: float = DEFAULT_MARGIN) -> tuple[str, str]:
    """The chosen base and why: the default unless another saves at least ``margin`` of its
    bits per character (the best such one)."""
    if not scores:
        raise ValueError("no base model could be scored")
    if DEFAULT_BASE_MODEL not in scores:
        best = min(scores, key=scores.__getitem__)
        return best, f"{best}: the lowest bits per character ({scores[best]:.2f})"
    default = scores[DEFAULT_BASE_MODEL]
    best = min(scores, key=scores.__getitem__)
    if best != DEFAULT_BASE_MODEL and scores[best] <= default * (1 - margin):
        return best, (
            f"{best} models my replies at {scores[best]:.2f} bits per character against "
            f"{default:.2f} for {DEFAULT_BASE_MODEL} ({1 - scores[best] / default:.0%} fewer)"
        )
    return DEFAULT_BASE_MODEL, (
        f"{DEFAULT_BASE_MODEL} ({default:.2f} bits per character): no other base saves "
        f"{margin:.0%} or more"
        + (f" (best {best} at {scores[best]:.2f})" if best != DEFAULT_BASE_MODEL else "")
    )


def _choice_key(pairs_path: Path, candidates: dict[str, ResolvedBaseModel], margin: float) -> str:
    digest = hashlib.sha256()
    with open(pairs_path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    for name in sorted(candidates):
        digest.update(f"{name}={candidates[name].fingerprint}".encode())
    digest.update(f"margin={margin}".encode())
    return digest.hexdigest()[:16]


def choose_base_for_pairs(
    pairs_path: str | Path,
    *,
    candidates: Sequence[str] | None = None,
    margin: float = DEFAULT_MARGIN,
    max_chars: int = DEFAULT_MAX_CHARS,
) -> tuple[ResolvedBaseModel, BaseChoice]:
    """Resolve ``auto`` for the pairs at ``pairs_path``: score each candidate on my train replies
    and return the chosen base, reusing the choice cached beside the pairs when nothing changed."""
    import pyarrow.parquet as pq

    pairs_path = Path(pairs_path)
    if not pairs_path.is_file():
        raise BaseModelError(
            f"base model 'auto' is chosen from my replies, and {pairs_path} does not exist yet: "
            "materialise conversation_pairs first (echo-pipeline run does)"
        )
    resolved: dict[str, ResolvedBaseModel] = {}
    skipped: dict[str, str] = {}
    for name in candidates or installed_bases():
        try:
            resolved[name] = resolve_base_model(name)
        except BaseModelError as error:
            skipped[name] = str(error)
    if not resolved:
        raise BaseModelError(f"base model 'auto': no candidate could be loaded: {skipped}")
    key = _choice_key(pairs_path, resolved, margin)
    cache = pairs_path.parent / CHOICE_FILE
    if cache.is_file():
        cached = json.loads(cache.read_text())
        if cached.get("key") == key and cached.get("chosen") in resolved:
            return resolved[cached["chosen"]], BaseChoice(**cached)

    table = pq.read_table(pairs_path, columns=["reply", "split"]).to_pydict()
    replies = [r for r, s in zip(table["reply"], table["split"], strict=True) if s == "train"]
    texts = sample_texts(replies, max_chars)
    if not texts:
        raise BaseModelError(f"{pairs_path}: no train replies to choose the base model on")
    scores = {name: round(bits_per_character(base, texts), 4) for name, base in resolved.items()}
    chosen, reason = choose(scores, margin)
    choice = BaseChoice(chosen, scores, sum(map(len, texts)), margin, key, reason, skipped)
    staging = cache.with_suffix(".tmp")
    staging.write_text(json.dumps(choice.to_json(), indent=2))
    staging.replace(cache)
    return resolved[chosen], choice
