"""Authorship attribution: a lowercase, unpunctuated writer against a Capitalised, punctuated one."""

from __future__ import annotations

import numpy as np
import pytest

from echo_pipeline.evaluation.attribution import (
    AuthorshipClassifier,
    LogisticRegression,
    SparseRows,
    attributed_share,
    balanced_accuracy,
    hashed_char_ngrams,
)

TOPICS = [
    "going to the gym later",
    "the movie was really good",
    "dinner at seven works",
    "my bus is late again",
    "that game last night was wild",
    "need coffee before the meeting",
    "the weather is nice today",
    "finished the book yesterday",
    "want to grab lunch",
    "forgot my keys at home",
    "the new album is out",
    "work was long today",
]


def lowercase_writer(topic: str) -> str:
    return f"lol {topic} tbh"


def capitalised_writer(topic: str) -> str:
    return f"Honestly, {topic[0].upper()}{topic[1:]}!"


@pytest.fixture(scope="module")
def classifier():
    train = TOPICS[:8]
    return AuthorshipClassifier.fit(
        [lowercase_writer(t) for t in train], [capitalised_writer(t) for t in train]
    )


def test_unseen_texts_are_attributed_to_the_right_writer(classifier):
    unseen = TOPICS[8:]
    p_mine = classifier.p_me([lowercase_writer(t) for t in unseen])
    p_theirs = classifier.p_me([capitalised_writer(t) for t in unseen])
    assert attributed_share(p_mine) == 1.0
    assert attributed_share(p_theirs) == 0.0
    assert balanced_accuracy(p_mine, p_theirs) == 1.0


def test_style_not_topic_decides(classifier):
    # Same words, only the casing and punctuation differ.
    assert (
        classifier.p_me(["the weather is nice today"])[0]
        > classifier.p_me(["The weather is nice today."])[0]
    )


def test_training_is_deterministic_and_balanced():
    mine = [lowercase_writer(t) for t in TOPICS[:8]]
    others = [capitalised_writer(t) for t in TOPICS[:3]]  # fewer examples on one side
    first = AuthorshipClassifier.fit(mine, others)
    second = AuthorshipClassifier.fit(mine, others)
    assert np.array_equal(first.model.weights, second.model.weights)
    assert first.trained_on == {"mine": 8, "others": 3}
    # Balanced weights: an empty text (no evidence either way) is not pushed to the big class.
    assert 0.2 < first.p_me([""])[0] < 0.8


def test_fit_needs_both_sides():
    with pytest.raises(ValueError, match="both sides"):
        AuthorshipClassifier.fit(["lol"], ["", "  "])


def test_hashed_ngrams_are_normalised_and_stable_across_calls():
    rows = hashed_char_ngrams(["ab", "ab", "xyz"], ngram_range=(2, 3), n_features=1024)
    assert rows.n_rows == 3
    for i in range(3):
        values = rows.values[rows.indptr[i] : rows.indptr[i + 1]]
        assert np.sqrt((values**2).sum()) == pytest.approx(1.0)
    first = rows.indices[rows.indptr[0] : rows.indptr[1]]
    assert np.array_equal(first, rows.indices[rows.indptr[1] : rows.indptr[2]])
    # CRC-32, not Python's salted hash: the same buckets in every process.
    assert np.array_equal(
        first, hashed_char_ngrams(["ab"], ngram_range=(2, 3), n_features=1024).indices
    )


def test_logistic_regression_separates_a_separable_toy_problem():
    # One feature per row, value 1: feature 0 means class 1, feature 1 means class 0.
    X = SparseRows(np.arange(5), np.array([0, 0, 1, 1]), np.ones(4), 2)
    model = LogisticRegression(l2=1e-3).fit(X, [1, 1, 0, 0])
    assert model.predict_proba(X).round().tolist() == [1, 1, 0, 0]
