"""Authorship attribution: would a classifier that knows my texting take this reply for mine?

Character 2-4-grams (case kept: casing is half of a texting style) are hashed into a fixed
number of features, counted sublinearly and L2-normalised per text; an L2-regularised logistic
regression, trained on my turns against everyone else's with balanced class weights, gives
P(me) for any text. The share of generations with P(me) > 0.5 is the "sounds like me" number,
read beside the same share for my real held-out replies (the ceiling) and for the base model.

Everything is numpy: a sparse row format of three arrays, and Nesterov-accelerated gradient
descent, whose step needs no tuning because normalised rows bound the curvature.
"""

from __future__ import annotations

import math
import re
import zlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

NGRAM_RANGE = (2, 4)
N_FEATURES = 2**18
_WORD = re.compile(r"\w+(?:['’]\w+)*")


@dataclass(frozen=True)
class SparseRows:
    """Rows of a sparse matrix in CSR form: row ``i`` is ``indices/values[indptr[i]:indptr[i+1]]``."""

    indptr: np.ndarray
    indices: np.ndarray
    values: np.ndarray
    n_features: int
    row_ids: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "row_ids", np.repeat(np.arange(self.n_rows), np.diff(self.indptr)))

    @property
    def n_rows(self) -> int:
        return len(self.indptr) - 1

    def dot(self, weights: np.ndarray) -> np.ndarray:
        """X @ weights."""
        return np.bincount(
            self.row_ids, weights=self.values * weights[self.indices], minlength=self.n_rows
        )

    def tdot(self, per_row: np.ndarray) -> np.ndarray:
        """X.T @ per_row."""
        return np.bincount(
            self.indices, weights=self.values * per_row[self.row_ids], minlength=self.n_features
        )


def hashed_char_ngrams(
    texts: Sequence[str],
    *,
    ngram_range: tuple[int, int] = NGRAM_RANGE,
    n_features: int = N_FEATURES,
    word_ngram_range: tuple[int, int] | None = None,
) -> SparseRows:
    """Each text as L2-normalised ``1 + log(count)`` of its hashed character n-grams.

    Texts are padded with a space at both ends so starts and ends of messages are n-grams too.
    The hash is CRC-32, stable across processes (Python's ``hash`` is salted per process).
    ``word_ngram_range`` adds lowercased word n-grams (with start/end markers) to the same
    hashed space, for classifiers that should also see which words and phrases a text uses.
    """
    low, high = ngram_range
    bucket: dict[str, int] = {}
    indptr, indices, values = [0], [], []
    for text in texts:
        padded = f" {text} "
        grams = [
            padded[i : i + n] for n in range(low, high + 1) for i in range(len(padded) - n + 1)
        ]
        if word_ngram_range is not None:
            tokens = ["<s>", *_WORD.findall(str(text).lower()), "</s>"]
            w_low, w_high = word_ngram_range
            grams += [
                "\x00" + " ".join(tokens[i : i + n])
                for n in range(w_low, w_high + 1)
                for i in range(len(tokens) - n + 1)
            ]
        counts: Counter[int] = Counter()
        for gram in grams:
            index = bucket.get(gram)
            if index is None:
                index = bucket[gram] = zlib.crc32(gram.encode("utf-8")) % n_features
            counts[index] += 1
        weights = {k: 1.0 + math.log(c) for k, c in counts.items()}
        norm = math.sqrt(sum(v * v for v in weights.values())) or 1.0
        indices.extend(weights)
        values.extend(v / norm for v in weights.values())
        indptr.append(len(indices))
    return SparseRows(
        np.asarray(indptr, dtype=np.int64),
        np.asarray(indices, dtype=np.int64),
        np.asarray(values, dtype=np.float64),
        n_features,
    )


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))  # overflow-free


@dataclass
class LogisticRegression:
    """Binary logistic regression on :class:`SparseRows`, weighted mean log-loss + L2/2 ||w||².

    Rows must have norm <= 1 (as :func:`hashed_char_ngrams` makes them): with the intercept the
    Hessian is then bounded by 0.5 + l2, so 1 / (0.5 + l2) is a safe step.
    """

    l2: float = 1e-3
    max_iter: int = 500
    tol: float = 1e-5
    weights: np.ndarray | None = None
    bias: float = 0.0
    iterations: int = 0

    def _gradient(
        self, X: SparseRows, y: np.ndarray, share: np.ndarray, w: np.ndarray, b: float
    ) -> tuple[np.ndarray, float]:
        residual = share * (_sigmoid(X.dot(w) + b) - y)
        return X.tdot(residual) + self.l2 * w, float(residual.sum())

    def fit(
        self, X: SparseRows, y: Sequence[float], sample_weight: Sequence[float] | None = None
    ) -> LogisticRegression:
        y = np.asarray(y, dtype=float)
        if len(y) != X.n_rows or not len(y):
            raise ValueError(f"{X.n_rows} rows but {len(y)} labels")
        weight = np.ones(len(y)) if sample_weight is None else np.asarray(sample_weight, float)
        share = weight / weight.sum()
        # Only features seen in training can get a weight: fit on those columns alone.
        used, compact = np.unique(X.indices, return_inverse=True)
        X_used = SparseRows(X.indptr, compact.astype(np.int64), X.values, len(used))
        step = 1.0 / (0.5 + self.l2)
        w, b = np.zeros(len(used)), 0.0
        w_prev, b_prev = w, b
        for k in range(1, self.max_iter + 1):
            momentum = (k - 1) / (k + 2)
            look_w, look_b = w + momentum * (w - w_prev), b + momentum * (b - b_prev)
            grad_w, grad_b = self._gradient(X_used, y, share, look_w, look_b)
            w_prev, b_prev = w, b
            w, b = look_w - step * grad_w, look_b - step * grad_b
            self.iterations = k
            if math.sqrt(float(np.sum(grad_w * grad_w)) + grad_b * grad_b) < self.tol:
                break
        self.weights = np.zeros(X.n_features)
        self.weights[used] = w
        self.bias = b
        return self

    def predict_proba(self, X: SparseRows) -> np.ndarray:
        if self.weights is None:
            raise RuntimeError("fit the model first")
        return _sigmoid(X.dot(self.weights) + self.bias)


@dataclass
class AuthorshipClassifier:
    """P(me) for any text, learnt from my turns and other people's."""

    model: LogisticRegression
    ngram_range: tuple[int, int] = NGRAM_RANGE
    n_features: int = N_FEATURES
    trained_on: dict[str, int] = field(default_factory=dict)

    @classmethod
    def fit(
        cls,
        mine: Sequence[str],
        others: Sequence[str],
        *,
        l2: float = 1e-3,
        max_iter: int = 500,
        ngram_range: tuple[int, int] = NGRAM_RANGE,
        n_features: int = N_FEATURES,
    ) -> AuthorshipClassifier:
        """Train on distinct non-empty texts; both classes weigh the same whatever their sizes."""
        mine = list(dict.fromkeys(t for t in map(str, mine) if t.strip()))
        theirs = set(mine)
        others = [t for t in dict.fromkeys(map(str, others)) if t.strip() and t not in theirs]
        if not mine or not others:
            raise ValueError(
                f"attribution needs texts from both sides (mine: {len(mine)}, others: {len(others)})"
            )
        X = hashed_char_ngrams([*mine, *others], ngram_range=ngram_range, n_features=n_features)
        y = np.r_[np.ones(len(mine)), np.zeros(len(others))]
        weight = np.r_[np.full(len(mine), 0.5 / len(mine)), np.full(len(others), 0.5 / len(others))]
        model = LogisticRegression(l2=l2, max_iter=max_iter).fit(X, y, weight)
        return cls(model, ngram_range, n_features, {"mine": len(mine), "others": len(others)})

    def p_me(self, texts: Sequence[str]) -> np.ndarray:
        """P(me) per text."""
        if not len(texts):
            return np.zeros(0)
        X = hashed_char_ngrams(
            [str(t) for t in texts], ngram_range=self.ngram_range, n_features=self.n_features
        )
        return self.model.predict_proba(X)


def attributed_share(p_me: Sequence[float], threshold: float = 0.5) -> float:
    """Share of texts the classifier takes for mine."""
    p_me = np.asarray(p_me, dtype=float)
    return float((p_me > threshold).mean()) if len(p_me) else 0.0


def balanced_accuracy(p_me_mine: Sequence[float], p_me_others: Sequence[float]) -> float:
    """Mean of the recall on my texts and on the others': 0.5 is chance whatever the class sizes."""
    hits_mine = np.asarray(p_me_mine) > 0.5
    hits_others = np.asarray(p_me_others) <= 0.5
    if not len(hits_mine) or not len(hits_others):
        raise ValueError("balanced accuracy needs texts from both sides")
    return float((hits_mine.mean() + hits_others.mean()) / 2)
