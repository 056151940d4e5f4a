"""Relevance: MiniLM similarity offline, and distinct-n repetition."""

from __future__ import annotations

import numpy as np
import pytest

from echo_pipeline.evaluation.relevance import CachedEmbedder, distinct_n
from echo_pipeline.pairs.embedder import SentenceEmbedder, minilm_path


def test_distinct_n_on_known_texts():
    assert distinct_n(["a b c"], 2) == 1.0  # (a b), (b c): all distinct
    assert distinct_n(["a b a b"], 2) == pytest.approx(2 / 3)  # (a b), (b a), (a b)
    assert distinct_n(["lol lol", "lol lol"], 2) == 0.5  # the same bigram in both replies
    assert distinct_n(["a a a"], 1) == pytest.approx(1 / 3)
    assert distinct_n(["one", ""], 2) == 0.0  # no bigram at all


@pytest.fixture(scope="module")
def embedder():
    return SentenceEmbedder.load()


def test_minilm_loads_offline_from_its_package(embedder):
    assert (minilm_path() / "model.safetensors").exists()
    vectors = embedder.encode(["hello there", "how are you"])
    assert vectors.shape == (2, 384)
    assert (vectors**2).sum(axis=1) == pytest.approx([1.0, 1.0], abs=1e-5)


def test_a_paraphrase_is_closer_than_an_unrelated_sentence(embedder):
    anchor = "Are you coming to dinner tonight?"
    paraphrase, unrelated = (
        "Will you join us for dinner this evening?",
        "The GPU driver crashed again.",
    )
    to_paraphrase, to_unrelated = embedder.paired_similarity(
        [anchor, anchor], [paraphrase, unrelated]
    )
    assert to_paraphrase > to_unrelated + 0.3
    assert embedder.paired_similarity([""], [anchor])[0] == 0.0  # an empty reply is about nothing


def test_cached_embedder_encodes_each_distinct_text_once():
    class Counting:
        """Embeds a text as its length and vowel count; remembers what it was asked."""

        def __init__(self):
            self.seen: list[str] = []

        def encode(self, texts):
            self.seen.extend(texts)
            return np.array([[len(t), sum(c in "aeiou" for c in t)] for t in texts], float)

    inner = Counting()
    cached = CachedEmbedder(inner)
    first = cached.encode(["hello", "hi", "hello"])
    again = cached.encode(["hi", "hey"])
    assert inner.seen == ["hello", "hi", "hey"]
    assert first.tolist() == [[5, 2], [2, 1], [5, 2]] and again.tolist() == [[2, 1], [3, 1]]
    assert cached.paired_similarity(["hi", ""], ["hi", "hey"])[1] == 0.0  # empty: about nothing
