"""The echo-quality measures and the verdict, on constructed reply sets.

Each failure a real chat showed (a clone answering "Ha" to everything, pseudo-word babble,
the prompt said back, generic replies, fluent text that is not mine) gets a set built to show
exactly that failure, and must get its own verdict; a set that reads like me must pass.
"""

from __future__ import annotations

import numpy as np
import pytest

from echo_pipeline.evaluation.attribution import hashed_char_ngrams
from echo_pipeline.evaluation.echo_quality import (
    BABBLING,
    COLLAPSED,
    MEMORISED,
    OFF_TOPIC,
    PARROTING,
    SOUNDS_LIKE_YOU,
    UNLIKE_YOU,
    VERDICTS,
    TrainReplyIndex,
    auc_interval,
    bigram_vocabulary,
    bootstrap_mean,
    copied_from_prompt,
    discriminator_auc,
    discriminator_interval,
    draw_metrics,
    in_context_interval,
    in_context_shares,
    known_bigram_rate,
    known_word_rate,
    loops,
    mean_over_draws,
    memorised_share,
    relevance_gains,
    relevance_interval,
    roc_auc,
    top_reply_share,
    verdict,
    vocabulary,
    with_dense,
)
from echo_pipeline.evaluation.evaluate import similarity_matrix

TOPICS = [
    ("did you fix the build on the ci box", "yeah the cache was stale, wiped it and its green now"),
    ("are we still on for pizza tonight", "ya def, 8ish? ill grab the drinks"),
    ("what did you think of the new album", "honestly the second half drags but track 3 slaps"),
    (
        "can you send me the slides from monday",
        "sure sending in a sec, they're on the shared drive too",
    ),
    ("how was the hike", "brutal lol my legs are dead but the view was worth it"),
    ("is the exam open book", "nope closed book, only one cheat sheet allowed"),
    ("should i buy the red or the blue one", "blue for sure, red looked kinda cheap in the pics"),
    ("did the landlord reply", "not yet, ill call him tomorrow if nothing by then"),
    ("who won the match last night", "they lost 2-1, ref was awful tbh"),
    ("want to play some coop later", "yes pls after 9, need to finish dinner first"),
    ("how do i reset the router", "hold the back button like 10s till the lights blink"),
    ("are you coming to sams party", "maybe, depends if i finish this report lol"),
    ("what time does the train leave", "7:40 from platform 2, dont be late this time"),
    ("did you watch the finale", "YES that ending tho, still thinking about it"),
    ("can you review my pr", "on it, left a couple of nits but looks good overall"),
    ("is it going to rain tomorrow", "forecast says light rain in the afternoon, bring a jacket"),
]
PROMPTS = [p for p, _ in TOPICS]
REAL = [r for _, r in TOPICS]
TRAIN_REPLIES = [
    *REAL,
    "lol yeah", "ill check tomorrow", "the build is green again", "sending the slides now",
    "honestly not sure", "def coming, after dinner", "that ending was wild", "call him tomorrow",
    "bring a jacket", "the view was worth it", "looks good overall", "after 9 works for me",
]  # fmt: skip
KNOWN = vocabulary(TRAIN_REPLIES)


def _overlap_similarity(left, right):
    """A transparent similarity for tests: Jaccard of word sets."""
    sets_l = [set(t.lower().split()) for t in left]
    sets_r = [set(t.lower().split()) for t in right]
    return np.array([[len(a & b) / max(1, len(a | b)) for b in sets_r] for a in sets_l])


def _metrics(side_draws, *, auc=0.6, attributed=0.8, stop=1.0):
    """The flat metrics an evaluation would produce for the adapter's ``side_draws``."""
    metrics = {f"real_{k}": v for k, v in draw_metrics(REAL, PROMPTS, KNOWN).items()}
    metrics["real_attributed_share"] = 0.8
    metrics |= {f"adapter_{k}": v for k, v in mean_over_draws(side_draws, PROMPTS, KNOWN).items()}
    gain = relevance_interval(side_draws, REAL, _overlap_similarity)
    metrics |= {"adapter_relevance_gain": gain.mean, "adapter_relevance_gain_low": gain.low}
    metrics |= {"adapter_discriminator_auc": auc, "adapter_attributed_share": attributed}
    metrics["adapter_stop_rate"] = stop
    return metrics


def _like_me(seed: int) -> list[str]:
    """Replies like mine: my real reply to the same prompt with a word or two changed."""
    rng = np.random.default_rng(seed)
    fillers = ["lol", "tbh", "ya", "honestly"]
    out = []
    for reply in REAL:
        tokens = reply.split()
        tokens.insert(int(rng.integers(0, len(tokens))), str(rng.choice(fillers)))
        out.append(" ".join(tokens))
    return out


def test_replies_that_read_like_mine_sound_like_you():
    judged = verdict(_metrics([_like_me(0), _like_me(1), _like_me(2)]), "adapter")
    assert judged.label == SOUNDS_LIKE_YOU, judged.reasons
    assert judged.ok and not judged.reasons


def test_the_same_short_reply_to_everything_is_collapsed():
    collapsed = [["Ha"] * 13 + ["[image]", "ok", "Ha"] for _ in range(3)]
    judged = verdict(_metrics(collapsed), "adapter")
    assert judged.label == COLLAPSED
    assert any("top_reply_share" in r for r in judged.reasons)
    assert any("distinct_2" in r for r in judged.reasons)


def test_looping_replies_are_collapsed_even_when_varied():
    looping = [[f"{r}\n{r}\n{r}" for r in _like_me(k)] for k in range(3)]
    judged = verdict(_metrics(looping), "adapter")
    assert judged.label == COLLAPSED
    assert any("loop_share" in r for r in judged.reasons)


def test_pseudo_words_are_babbling():
    rng = np.random.default_rng(7)
    syllables = ["tha", "kko", "ree", "bol", "ange", "nku", "zeh", "gon", "mar", "thik"]

    def pseudo_word():
        return "".join(rng.choice(syllables, size=int(rng.integers(2, 4))))

    babble = [
        [" ".join(pseudo_word() for _ in range(int(rng.integers(3, 8)))) for _ in REAL]
        for _ in range(3)
    ]
    judged = verdict(_metrics(babble), "adapter")
    assert judged.label == BABBLING
    assert any("known_word_rate" in r for r in judged.reasons)


def test_replies_that_never_stop_are_babbling():
    judged = verdict(_metrics([_like_me(0)], stop=0.5), "adapter")
    assert judged.label == BABBLING


def test_the_stop_rate_limit_allows_for_my_own_long_replies():
    # A fifth of my real replies would not fit the bound either: 0.75 is fine, 0.6 is not.
    metrics = _metrics([_like_me(0)], stop=0.75) | {"real_stop_rate": 0.8}
    assert verdict(metrics, "adapter").label == SOUNDS_LIKE_YOU
    metrics = _metrics([_like_me(0)], stop=0.6) | {"real_stop_rate": 0.8}
    assert verdict(metrics, "adapter").label == BABBLING


def test_the_prompt_said_back_is_parroting():
    parrot = [[f"{p} ?" for p in PROMPTS] for _ in range(3)]
    judged = verdict(_metrics(parrot), "adapter")
    assert judged.label == PARROTING
    assert any("parrot_share" in r for r in judged.reasons)


def test_generic_replies_that_fit_any_prompt_are_off_topic():
    # Varied, my words, stops, no copying: but unrelated to the prompt it answers.
    rng = np.random.default_rng(3)
    generic = [list(rng.permutation(REAL)) for _ in range(3)]
    judged = verdict(_metrics(generic), "adapter")
    assert judged.label == OFF_TOPIC


def test_fluent_text_a_discriminator_tells_apart_is_unlike_you():
    judged = verdict(_metrics([_like_me(0)], auc=0.97), "adapter")
    assert judged.label == UNLIKE_YOU
    judged = verdict(_metrics([_like_me(0)], attributed=0.1), "adapter")
    assert judged.label == UNLIKE_YOU


def test_an_adapter_must_close_half_the_gap_from_its_base_to_a_coin_flip():
    # The base is told apart at 0.96: halfway to 0.5 is 0.73.
    metrics = _metrics([_like_me(0)], auc=0.8) | {"base_discriminator_auc": 0.96}
    judged = verdict(metrics, "adapter")
    assert judged.label == UNLIKE_YOU and "0.730" in judged.reasons[0]
    assert verdict(metrics | {"adapter_discriminator_auc": 0.7}, "adapter").ok


def test_the_worst_failure_names_the_verdict_and_every_failure_is_listed():
    collapsed_babble = [["zzkkoo"] * len(REAL)]
    judged = verdict(_metrics(collapsed_babble, auc=0.99), "adapter")
    assert judged.label == COLLAPSED
    families = {reason.split(":")[0] for reason in judged.reasons}
    assert {COLLAPSED, BABBLING, UNLIKE_YOU} <= families
    assert judged.rank() == VERDICTS.index(COLLAPSED) == len(VERDICTS) - 1


def test_loops_tells_a_stuck_decoder_from_speech():
    assert loops("Ha\nHa\nHa\nHa")
    assert loops("i think i think i think so")
    assert loops("no no no no no")
    assert not loops("no no no")
    assert not loops("yeah that works, see you at 8")
    assert not loops("ok\nsee you\nbye")
    assert loops("No,,,,,,,,,,,,,,,,,")
    assert not loops("soooo good!!!")


def test_top_reply_share_normalises_case_and_edge_punctuation():
    assert top_reply_share(["Ha", "ha!", "HA", "sure"]) == 0.75
    assert top_reply_share([]) == 0.0


def test_known_word_rate_counts_words_not_numbers():
    known = vocabulary(["the cat sat", "on the mat"])
    assert known_word_rate(["the cat", "blorf mat"], known) == pytest.approx(0.75)
    assert known_word_rate(["the 42 cat"], known) == 1.0
    assert known_word_rate(["🙂"], known) == 1.0


def test_copied_from_prompt_spares_short_replies():
    assert copied_from_prompt("are we still on for pizza", "are we still on for pizza tonight")
    assert not copied_from_prompt("yes", "yes or no?")
    assert not copied_from_prompt("ya def, 8ish? ill grab the drinks", PROMPTS[1])


def test_relevance_gain_is_zero_for_a_constant_reply_and_positive_for_the_right_one():
    constant = relevance_gains(_overlap_similarity(["the"] * len(REAL), REAL))
    assert np.allclose(constant.mean(), 0.0, atol=0.02)
    exact = relevance_gains(_overlap_similarity(REAL, REAL))
    assert exact.min() > 0.5
    with pytest.raises(ValueError):
        relevance_gains(np.zeros((1, 1)))


def test_bootstrap_interval_contains_the_mean_and_shrinks_with_more_data():
    rng = np.random.default_rng(0)
    small = bootstrap_mean(rng.normal(1.0, 1.0, 20))
    large = bootstrap_mean(rng.normal(1.0, 1.0, 2000))
    assert small.low < small.mean < small.high
    assert (large.high - large.low) < (small.high - small.low)
    assert large.above_zero()
    assert np.isnan(bootstrap_mean([]).mean)


def test_roc_auc_matches_its_definition():
    assert roc_auc([3, 4], [1, 2]) == 1.0
    assert roc_auc([1, 2], [3, 4]) == 0.0
    assert roc_auc([1, 1], [1, 1]) == 0.5
    assert roc_auc([2, 1], [1, 0]) == pytest.approx(0.875)


def test_discriminator_tells_a_different_register_apart_but_not_my_own_replies():
    rng = np.random.default_rng(1)
    mine = [f"{r} {s}" for r in REAL for s in ("lol", "tbh", "ya")]
    formal = [
        f"Certainly! Here is a detailed answer regarding item {i}. Please let me know if you need anything else."
        for i in range(len(mine))
    ]
    order = rng.permutation(len(mine))
    train, test = order[: len(mine) // 2], order[len(mine) // 2 :]
    pick = lambda texts, idx: [texts[i] for i in idx]  # noqa: E731
    apart = discriminator_auc(
        pick(mine, train), pick(formal, train), pick(mine, test), pick(formal, test)
    )
    assert apart > 0.95
    # My own replies against my own replies: nothing to learn.
    half = len(train) // 2
    alike = discriminator_auc(
        pick(mine, train[:half]),
        pick(mine, train[half:]),
        pick(mine, test[:half]),
        pick(mine, test[half:]),
    )
    assert 0.2 < alike < 0.8


def test_char_ngram_similarity_needs_no_model_and_zeroes_empty_texts():
    matrix = similarity_matrix(None)(["the build is green", ""], ["the build is green", "pizza"])
    assert matrix.shape == (2, 2)
    assert matrix[0, 0] == pytest.approx(1.0)
    assert matrix[0, 1] < 0.3
    assert (matrix[1] == 0).all()


def test_auc_interval_brackets_the_auc_and_is_reproducible():
    rng = np.random.default_rng(2)
    pos, neg = rng.normal(1.0, 1.0, 60), rng.normal(0.0, 1.0, 60)
    interval = auc_interval(pos, neg, seed=3)
    assert interval.low < interval.mean < interval.high
    assert interval.mean == roc_auc(pos, neg)
    assert auc_interval(pos, neg, seed=3) == interval
    assert np.isnan(auc_interval([], neg).mean)


# --- issue 22: word salad, memorising, in context, the harder reader --------------------------


def test_known_bigram_rate_tells_sentences_from_word_salad_of_the_same_words():
    known = bigram_vocabulary(TRAIN_REPLIES)
    assert known_bigram_rate(REAL, known) == 1.0
    rng = np.random.default_rng(5)
    vocabulary_words = [w for t in TRAIN_REPLIES for w in t.split()]
    salad = [" ".join(rng.choice(vocabulary_words, size=len(r.split()))) for r in REAL]
    assert known_bigram_rate(salad, known) < 0.3
    assert known_bigram_rate(["the build", "ok"], known, ["is the build green", "?"]) == 1.0
    assert known_bigram_rate(["ok", ""], known) == 1.0  # no bigrams: nothing to judge


def test_word_salad_of_my_own_words_is_babbling():
    rng = np.random.default_rng(11)
    vocabulary_words = [w for t in TRAIN_REPLIES for w in t.split()]
    salad = [
        [" ".join(rng.choice(vocabulary_words, size=len(r.split()) + 2)) for r in REAL]
        for _ in range(3)
    ]
    known_bigrams = bigram_vocabulary(TRAIN_REPLIES)
    metrics = _metrics(salad)
    assert metrics["adapter_known_word_rate"] == 1.0  # the single-word gate cannot see it
    metrics["real_known_bigram_rate"] = known_bigram_rate(REAL, known_bigrams, PROMPTS)
    metrics["adapter_known_bigram_rate"] = np.mean(
        [known_bigram_rate(draw, known_bigrams, PROMPTS) for draw in salad]
    )
    judged = verdict(metrics, "adapter")
    assert judged.label == BABBLING
    assert any("known_bigram_rate" in r for r in judged.reasons)
    like_me = _metrics([_like_me(0)]) | {
        "real_known_bigram_rate": metrics["real_known_bigram_rate"],
        "adapter_known_bigram_rate": known_bigram_rate(_like_me(0), known_bigrams, PROMPTS),
    }
    assert verdict(like_me, "adapter").ok


def test_train_reply_index_finds_exact_and_near_copies_only():
    index = TrainReplyIndex.build(
        ["yeah the cache was stale, wiped it and its green now", "lol yeah", ""]
    )
    assert index.copies("Yeah the cache was stale, wiped it and its green now!")
    assert index.copies("yeah the cache was stale, wiped it and it's green now")
    assert index.copies("LOL yeah")
    assert not index.copies("the cache was fine, the runner was stale")
    assert not index.copies("yeah lol") and not index.copies("")
    assert memorised_share(["lol yeah", "something new entirely"], index) == 0.5
    assert memorised_share([], index) == 0.0


def test_in_context_shares_are_one_for_the_right_reply_and_a_half_for_a_constant():
    exact = in_context_shares(_overlap_similarity(PROMPTS, PROMPTS))
    assert exact.min() == 1.0
    constant = in_context_shares(_overlap_similarity(PROMPTS, ["the same reply"] * len(PROMPTS)))
    assert np.allclose(constant, 0.5)
    with pytest.raises(ValueError):
        in_context_shares(np.zeros((1, 1)))
    mine = in_context_interval([REAL], PROMPTS, similarity_matrix(None))
    shuffled = in_context_interval(
        [list(np.random.default_rng(0).permutation(REAL))], PROMPTS, similarity_matrix(None)
    )
    assert mine.mean > shuffled.mean


def _gated(side_metrics):
    base = _metrics([_like_me(0)]) | {
        "real_memorised_share": 0.05,
        "real_in_context": 0.7,
        "real_in_context_low": 0.6,
    }
    return verdict(base | side_metrics, "adapter")


def test_memorised_and_out_of_context_replies_fail_their_own_gates():
    judged = _gated({"adapter_memorised_share": 1.0, "adapter_in_context": 0.68})
    assert judged.label == MEMORISED and "memorised_share" in judged.reasons[0]
    judged = _gated({"adapter_memorised_share": 0.1, "adapter_in_context": 0.52})
    assert judged.label == OFF_TOPIC and "in_context" in judged.reasons[0]
    assert _gated({"adapter_memorised_share": 0.1, "adapter_in_context": 0.66}).ok
    # Where my own replies are not told apart by the scorer, the gate judges nothing.
    unreadable = _gated({"adapter_in_context": 0.45, "real_in_context_low": 0.48})
    assert unreadable.ok


def test_the_harder_discriminator_judges():
    metrics = _metrics([_like_me(0)], auc=0.6) | {"adapter_hardest_discriminator_auc": 0.95}
    judged = verdict(metrics, "adapter")
    assert judged.label == UNLIKE_YOU and "harder discriminator AUC 0.950" in judged.reasons[0]
    metrics |= {"base_hardest_discriminator_auc": 0.99, "adapter_hardest_discriminator_auc": 0.7}
    assert verdict(metrics, "adapter").ok  # limit (0.99 + 0.5) / 2 = 0.745


def test_with_dense_keeps_rows_unit_bounded_and_embeddings_help_a_reader():
    rows = hashed_char_ngrams(["abc", "de"], ngram_range=(2, 3), n_features=64)
    joined = with_dense(rows, np.array([[3.0, 4.0], [0.0, 0.0]]))
    assert joined.n_features == 66 and joined.n_rows == 2
    norms = np.bincount(joined.row_ids, weights=joined.values**2)
    assert np.all(norms <= 1 + 1e-9) and norms[0] == pytest.approx(1.0)
    with pytest.raises(ValueError):
        with_dense(rows, np.zeros((3, 2)))

    # Texts whose spelling says nothing of their class, and an embedding that knows the class
    # (what a sentence embedding adds: meaning the n-grams do not show).
    rng = np.random.default_rng(4)
    vocabulary_words = [w for t in TRAIN_REPLIES for w in t.split()]
    texts = [" ".join(rng.choice(vocabulary_words, size=6)) for _ in range(160)]
    mine_flags = rng.random(len(texts)) < 0.5
    label = dict(zip(texts, mine_flags, strict=True))

    def embed(batch):
        return np.array([[1.0, 0.0] if label[t] else [0.0, 1.0] for t in batch])

    mine = [t for t in texts if label[t]]
    other = [t for t in texts if not label[t]]
    half_m, half_o = len(mine) // 2, len(other) // 2
    split = (mine[:half_m], other[:half_o], mine[half_m:], other[half_o:])
    plain = discriminator_auc(*split)
    stronger = discriminator_interval(*split, embed=embed).mean
    assert stronger > 0.95 and plain < 0.75
