"""Is the reply about the right thing, and does it repeat itself?

Semantic similarity uses all-MiniLM-L6-v2 (:mod:`echo_pipeline.pairs.embedder`, which the
reply memory retrieves with too). Repetition is distinct-n over word n-grams.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from echo_pipeline.evaluation.style import words
from echo_pipeline.pairs.embedder import SentenceEmbedder


def distinct_n(texts: Sequence[str], n: int = 2) -> float:
    """Distinct word n-grams over all word n-grams of the set (Li et al., 2016); 0 if there are none.

    Low values mean the model says the same things again and again, within and across replies.
    """
    grams = [
        tuple(tokens[i : i + n])
        for text in texts
        for tokens in [words(text)]
        for i in range(len(tokens) - n + 1)
    ]
    return len(set(grams)) / len(grams) if grams else 0.0


class CachedEmbedder:
    """An embedder that encodes each distinct text once.

    An evaluation embeds the same texts again and again (my real replies against every side,
    the prompts for relevance, in-context and replay); on two CPU cores that is most of the
    cost of the measures, so it is paid once per text.
    """

    def __init__(self, embedder: Any) -> None:
        self.embedder = embedder
        self._vectors: dict[str, np.ndarray] = {}

    @property
    def model(self) -> Any:
        return self.embedder.model

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        texts = [str(t) for t in texts]
        missing = [t for t in dict.fromkeys(texts) if t not in self._vectors]
        if missing:
            self._vectors.update(zip(missing, self.embedder.encode(missing), strict=True))
        if not texts:
            return self.embedder.encode([])
        return np.stack([self._vectors[t] for t in texts])

    paired_similarity = SentenceEmbedder.paired_similarity
