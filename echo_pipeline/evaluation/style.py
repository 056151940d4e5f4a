"""How replies look, and how far one set of replies is from another.

A style profile is a handful of rates a person would recognise in their own texting: how long
the messages are, whether they start in lowercase, shout in caps, end with a period, use
punctuation and emoji, how varied the vocabulary is, and which words and character 3-grams
come up most. :func:`compare_style` turns two profiles into per-feature distances, each in
[0, 1], and their mean, the ``style_distance``: 0 for identical replies, larger when the
generated replies look less like the real ones.

Rates over an empty set (no words, no letters) are 0, so empty generations still compare.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass

import numpy as np

TOP_K_WORDS = 20
CHAR_NGRAM = 3
PUNCTUATION_FLOOR = 0.05  # punctuation per character below which differences count less

_WORD = re.compile(r"\w+(?:['’]\w+)*")
_LETTER = re.compile(r"[^\W\d_]")
#: Pictographs, symbols, dingbats, flags and the emoji presentation selector; ``:name:`` is how
#: the pipeline renders Discord's custom emoji.
_EMOJI = re.compile(
    "[\U0001f000-\U0001faff\u2600-\u27bf\u2b50\u2b55\u231a\u231b\u23e9-\u23fa\ufe0f]"
    r"|:[A-Za-z0-9_+-]{2,32}:"
)


def words(text: str) -> list[str]:
    """Lowercased words (letters, digits, inner apostrophes): the unit of the vocabulary."""
    return _WORD.findall(text.lower())


def word_counts(texts: Iterable[str]) -> np.ndarray:
    """Whitespace-separated tokens per text: the message length a reader sees."""
    return np.array([len(str(t).split()) for t in texts], dtype=float)


def _ecdfs(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    a, b = np.sort(np.asarray(a, dtype=float)), np.sort(np.asarray(b, dtype=float))
    if not len(a) or not len(b):
        raise ValueError("comparing distributions needs at least one value on each side")
    support = np.unique(np.concatenate([a, b]))
    cdf_a = np.searchsorted(a, support, side="right") / len(a)
    cdf_b = np.searchsorted(b, support, side="right") / len(b)
    return support, cdf_a, cdf_b


def wasserstein_1d(a: Sequence[float], b: Sequence[float]) -> float:
    """Earth mover's distance between two samples: how far, in words, lengths must move."""
    support, cdf_a, cdf_b = _ecdfs(np.asarray(a), np.asarray(b))
    return float(np.sum(np.abs(cdf_a - cdf_b)[:-1] * np.diff(support)))


def ks_statistic(a: Sequence[float], b: Sequence[float]) -> float:
    """Two-sample Kolmogorov-Smirnov statistic: the largest gap between the two CDFs, in [0, 1]."""
    _, cdf_a, cdf_b = _ecdfs(np.asarray(a), np.asarray(b))
    return float(np.max(np.abs(cdf_a - cdf_b)))


def _rate(hits: int, total: int) -> float:
    return hits / total if total else 0.0


def lowercase_start_rate(texts: Sequence[str]) -> float:
    """Share of texts whose first letter is lowercase (texts without letters are left out)."""
    firsts = [m.group() for t in texts if (m := _LETTER.search(t))]
    return _rate(sum(c.islower() for c in firsts), len(firsts))


def all_caps_rate(texts: Sequence[str]) -> float:
    """Share of words of two or more letters written all in capitals ("LOL", "WHAT")."""
    candidates = [w for t in texts for w in t.split() if len(_LETTER.findall(w)) >= 2]
    return _rate(sum(w.isupper() for w in candidates), len(candidates))


def punctuation_rate(texts: Sequence[str]) -> float:
    """Punctuation characters per non-space character."""
    chars = [c for t in texts for c in t if not c.isspace()]
    return _rate(sum(unicodedata.category(c).startswith("P") for c in chars), len(chars))


def ending_period_rate(texts: Sequence[str]) -> float:
    """Share of non-empty texts that end with a period (an ellipsis counts)."""
    ends = [t.rstrip() for t in texts if t.strip()]
    return _rate(sum(t.endswith(".") for t in ends), len(ends))


def emoji_rate(texts: Sequence[str]) -> float:
    """Share of non-empty texts with at least one emoji (Unicode or ``:custom:``)."""
    nonempty = [t for t in texts if t.strip()]
    return _rate(sum(bool(_EMOJI.search(t)) for t in nonempty), len(nonempty))


def distinct_words_ratio(texts: Sequence[str]) -> float:
    """Distinct words over all words (type-token ratio) of the whole set."""
    all_words = [w for t in texts for w in words(t)]
    return _rate(len(set(all_words)), len(all_words))


def top_words(texts: Sequence[str], k: int = TOP_K_WORDS) -> list[str]:
    """The ``k`` most frequent words, ties broken alphabetically so the list is reproducible."""
    counts = Counter(w for t in texts for w in words(t))
    return [w for w, _ in sorted(counts.items(), key=lambda item: (-item[1], item[0]))[:k]]


def jaccard(a: Iterable[str], b: Iterable[str]) -> float:
    """|A ∩ B| / |A ∪ B|; two empty sets are identical (1)."""
    a, b = set(a), set(b)
    return len(a & b) / len(a | b) if a | b else 1.0


def char_ngram_profile(texts: Sequence[str], n: int = CHAR_NGRAM) -> Counter[str]:
    """Counts of character n-grams, case kept, each text padded with a space at both ends."""
    profile: Counter[str] = Counter()
    for text in texts:
        padded = f" {text} "
        profile.update(padded[i : i + n] for i in range(len(padded) - n + 1))
    return profile


def profile_cosine(a: Counter[str], b: Counter[str]) -> float:
    """Cosine similarity of two count profiles; two empty profiles are identical (1)."""
    if not a and not b:
        return 1.0
    dot = sum(count * b[key] for key, count in a.items() if key in b)
    norm = math.sqrt(sum(v * v for v in a.values())) * math.sqrt(sum(v * v for v in b.values()))
    return dot / norm if norm else 0.0


@dataclass(frozen=True)
class StyleProfile:
    """What a set of replies looks like."""

    texts: int
    mean_words: float
    median_words: float
    lowercase_start_rate: float
    all_caps_rate: float
    punctuation_rate: float
    ending_period_rate: float
    emoji_rate: float
    distinct_words_ratio: float

    def as_dict(self) -> dict[str, float]:
        return {k: float(v) for k, v in asdict(self).items()}


def style_profile(texts: Sequence[str]) -> StyleProfile:
    texts = [str(t) for t in texts]
    lengths = word_counts(texts)
    return StyleProfile(
        texts=len(texts),
        mean_words=float(lengths.mean()) if len(texts) else 0.0,
        median_words=float(np.median(lengths)) if len(texts) else 0.0,
        lowercase_start_rate=lowercase_start_rate(texts),
        all_caps_rate=all_caps_rate(texts),
        punctuation_rate=punctuation_rate(texts),
        ending_period_rate=ending_period_rate(texts),
        emoji_rate=emoji_rate(texts),
        distinct_words_ratio=distinct_words_ratio(texts),
    )


def _relative_difference(a: float, b: float, floor: float = 0.0) -> float:
    """|a - b| / max(a, b, floor), in [0, 1] for non-negative rates.

    Relative, so small rates (punctuation per character) count as much as large ones; the
    floor stops two tiny rates (0.01 against 0.02) from reading as a big difference.
    """
    top = max(abs(a), abs(b), floor)
    return abs(a - b) / top if top else 0.0


@dataclass(frozen=True)
class StyleComparison:
    """Distances from the real replies (reference) to generated ones (candidate).

    Every ``*_distance`` is in [0, 1]; ``style_distance`` is their mean. ``length_wasserstein``
    is in words and stays out of the mean (it has no upper bound).
    """

    length_wasserstein: float
    length_ks: float
    lowercase_start_distance: float
    all_caps_distance: float
    punctuation_distance: float
    ending_period_distance: float
    emoji_distance: float
    distinct_words_distance: float
    top_words_jaccard: float
    char_ngram_cosine: float
    style_distance: float

    def as_dict(self) -> dict[str, float]:
        return {k: float(v) for k, v in asdict(self).items()}


def compare_style(
    reference: Sequence[str], candidate: Sequence[str], *, top_k: int = TOP_K_WORDS
) -> StyleComparison:
    """How far ``candidate`` replies are from ``reference`` replies, feature by feature."""
    reference, candidate = [str(t) for t in reference], [str(t) for t in candidate]
    if not reference or not candidate:
        raise ValueError("compare_style needs at least one text on each side")
    ref, cand = style_profile(reference), style_profile(candidate)
    ref_lengths, cand_lengths = word_counts(reference), word_counts(candidate)
    overlap = jaccard(top_words(reference, top_k), top_words(candidate, top_k))
    cosine = profile_cosine(char_ngram_profile(reference), char_ngram_profile(candidate))
    components = {
        "length_ks": ks_statistic(ref_lengths, cand_lengths),
        "lowercase_start_distance": abs(ref.lowercase_start_rate - cand.lowercase_start_rate),
        "all_caps_distance": abs(ref.all_caps_rate - cand.all_caps_rate),
        "punctuation_distance": _relative_difference(
            ref.punctuation_rate, cand.punctuation_rate, PUNCTUATION_FLOOR
        ),
        "ending_period_distance": abs(ref.ending_period_rate - cand.ending_period_rate),
        "emoji_distance": abs(ref.emoji_rate - cand.emoji_rate),
        "distinct_words_distance": _relative_difference(
            ref.distinct_words_ratio, cand.distinct_words_ratio
        ),
    }
    parts = [*components.values(), 1.0 - overlap, 1.0 - cosine]
    return StyleComparison(
        length_wasserstein=wasserstein_1d(ref_lengths, cand_lengths),
        top_words_jaccard=overlap,
        char_ngram_cosine=cosine,
        style_distance=float(np.mean(parts)),
        **components,
    )
