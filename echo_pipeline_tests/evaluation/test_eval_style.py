"""Style metrics on hand-made replies whose right answers are known."""

from __future__ import annotations

import pytest

from echo_pipeline.evaluation.style import (
    all_caps_rate,
    char_ngram_profile,
    compare_style,
    distinct_words_ratio,
    emoji_rate,
    ending_period_rate,
    jaccard,
    ks_statistic,
    lowercase_start_rate,
    profile_cosine,
    punctuation_rate,
    style_profile,
    top_words,
    wasserstein_1d,
    word_counts,
)

ME = [
    "lol yeah same",
    "nah im good tbh",
    "ok see u there 😂",
    "omg yes",
    "mine lol\nforgot a config thing",
]
THEM = [
    "Hello! How are you doing today?",
    "That sounds wonderful, thank you.",
    "Are you coming to dinner tonight?",
    "I have to run, my bus is here.",
    "WHAT a surprise, I did not expect that!",
]


def test_identical_replies_are_at_zero_style_distance():
    comparison = compare_style(ME, list(ME))
    assert comparison.style_distance == pytest.approx(0.0, abs=1e-12)
    assert comparison.length_wasserstein == 0.0 and comparison.length_ks == 0.0
    assert comparison.top_words_jaccard == 1.0
    assert comparison.char_ngram_cosine == pytest.approx(1.0)


def test_my_replies_are_closer_to_mine_than_to_someone_elses():
    other_me = ["yeah lol", "nah tbh", "ok 😂", "omg same lol", "im good"]
    assert compare_style(ME, other_me).style_distance < compare_style(ME, THEM).style_distance
    assert 0 < compare_style(ME, THEM).style_distance <= 1


def test_wasserstein_and_ks_on_known_distributions():
    # Moving every value by 2 costs 2; the CDFs never overlap, so KS is 1.
    assert wasserstein_1d([1, 2, 3], [3, 4, 5]) == pytest.approx(2.0)
    assert ks_statistic([1, 2, 3], [10, 11, 12]) == 1.0
    # Half the mass moves from 0 to 1: W1 = 0.5; largest CDF gap 0.5.
    assert wasserstein_1d([0, 0], [0, 1]) == pytest.approx(0.5)
    assert ks_statistic([0, 0], [0, 1]) == pytest.approx(0.5)
    # Different sample sizes: {0, 1} against {0, 0, 1, 1} is the same distribution.
    assert wasserstein_1d([0, 1], [0, 0, 1, 1]) == 0.0
    assert ks_statistic([0, 1], [0, 0, 1, 1]) == 0.0
    with pytest.raises(ValueError, match="at least one value"):
        ks_statistic([], [1])


def test_word_counts_are_whitespace_tokens():
    assert word_counts(["a b  c", "", "one\ntwo"]).tolist() == [3, 0, 2]


def test_casing_rates():
    assert lowercase_start_rate(["hi", "Hi", "123 ok", "😂"]) == pytest.approx(
        2 / 3
    )  # emoji-only left out
    assert all_caps_rate(["LOL that is WILD", "I am"]) == pytest.approx(
        2 / 5
    )  # "I" is too short to shout
    assert lowercase_start_rate([]) == 0.0 and all_caps_rate([""]) == 0.0


def test_punctuation_period_and_emoji_rates():
    assert punctuation_rate(["a.b", "c!"]) == pytest.approx(2 / 5)
    assert ending_period_rate(["done.", "ok", "well...", "  "]) == pytest.approx(2 / 3)
    assert emoji_rate(["lol 😂", "nice :thumbsup:", "plain", ""]) == pytest.approx(2 / 3)
    assert emoji_rate(["at 10:30 ok"]) == 0.0  # a time is not a :custom: emoji


def test_vocabulary_measures():
    assert distinct_words_ratio(["a a b", "b c"]) == pytest.approx(3 / 5)
    assert top_words(["b a a", "c b a"], k=2) == ["a", "b"]
    assert top_words(["z y"], k=5) == ["y", "z"]  # ties: alphabetical, reproducible
    assert jaccard(["a", "b"], ["b", "c"]) == pytest.approx(1 / 3)
    assert jaccard([], []) == 1.0


def test_char_ngram_profile_cosine():
    profile = char_ngram_profile(["ab"])
    assert profile == {" ab": 1, "ab ": 1}
    assert profile_cosine(profile, profile) == pytest.approx(1.0)
    assert profile_cosine(char_ngram_profile(["abc"]), char_ngram_profile(["xyz"])) == 0.0
    assert (
        profile_cosine(char_ngram_profile(["Hi"]), char_ngram_profile(["hi"])) == 0.0
    )  # case matters


def test_profile_of_empty_generations_still_compares():
    profile = style_profile(["", ""])
    assert profile.mean_words == 0 and profile.lowercase_start_rate == 0
    assert compare_style(ME, ["", ""]).style_distance > compare_style(ME, ME[::-1]).style_distance
    with pytest.raises(ValueError, match="at least one text"):
        compare_style(ME, [])
