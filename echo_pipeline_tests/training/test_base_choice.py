"""`--base-model auto`: bits per character on my own replies, the choice rule, and its cache."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from echo_pipeline.training.base_choice import (
    CHOICE_FILE,
    DEFAULT_MARGIN,
    bits_per_character,
    choose,
    choose_base_for_pairs,
    sample_texts,
)
from echo_pipeline.training.base_model import DEFAULT_BASE_MODEL, GEMMA3_270M, BaseModelError


def test_the_default_stays_unless_another_base_saves_the_margin():
    assert choose({DEFAULT_BASE_MODEL: 3.0, GEMMA3_270M: 2.8})[0] == DEFAULT_BASE_MODEL
    chosen, reason = choose({DEFAULT_BASE_MODEL: 3.67, GEMMA3_270M: 2.98})
    assert chosen == GEMMA3_270M
    assert "fewer" in reason
    assert choose({DEFAULT_BASE_MODEL: 2.0, GEMMA3_270M: 2.5})[0] == DEFAULT_BASE_MODEL
    assert choose({GEMMA3_270M: 2.5})[0] == GEMMA3_270M
    with pytest.raises(ValueError):
        choose({})
    assert 0 < DEFAULT_MARGIN < 0.5


def test_the_sample_is_deterministic_bounded_and_skips_blanks():
    texts = [f"reply number {i}" for i in range(100)] + ["", "   "]
    first = sample_texts(texts, max_chars=200)
    assert first == sample_texts(texts, max_chars=200)
    assert "" not in first and sum(map(len, first)) < 200 + 20
    assert first != texts[: len(first)]  # shuffled, not the first replies of the export


def test_english_scores_better_than_noise_on_the_real_base(base_model):
    english = ["sounds good, see you at seven", "did you finish the game yesterday?"]
    noise = ["xq zvrr kpl wq jjx ttrq", "mmz qqv brr xzzk ppq lv"]
    assert bits_per_character(base_model, english) < bits_per_character(base_model, noise)


def _pairs(path, replies):
    table = pa.table(
        {"reply": replies, "split": ["train"] * (len(replies) - 1) + ["test"]},
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)


def test_auto_is_chosen_once_from_train_replies_and_cached(tmp_path, base_model):
    pairs = tmp_path / "conversation_pairs.parquet"
    _pairs(pairs, ["ok see you then", "haha yes that one", "SECRET HELD OUT REPLY"])
    resolved, choice = choose_base_for_pairs(pairs, candidates=[DEFAULT_BASE_MODEL])
    assert resolved.fingerprint == base_model.fingerprint
    assert choice.chosen == DEFAULT_BASE_MODEL
    assert choice.chars_scored == len("ok see you then") + len("haha yes that one")
    cached = json.loads((tmp_path / CHOICE_FILE).read_text())
    assert cached["bits_per_char"] == choice.bits_per_char

    # The same pairs: the cached choice, no forward pass (a tampered score proves it was read).
    cached["bits_per_char"][DEFAULT_BASE_MODEL] = 1.23
    (tmp_path / CHOICE_FILE).write_text(json.dumps(cached))
    assert choose_base_for_pairs(pairs, candidates=[DEFAULT_BASE_MODEL])[1].bits_per_char == {
        DEFAULT_BASE_MODEL: 1.23
    }
    # New pairs: scored again.
    _pairs(pairs, ["a different reply", "and another", "held out"])
    again = choose_base_for_pairs(pairs, candidates=[DEFAULT_BASE_MODEL])[1]
    assert again.bits_per_char[DEFAULT_BASE_MODEL] != 1.23


def test_auto_before_the_pairs_exist_says_what_to_do(tmp_path):
    with pytest.raises(BaseModelError, match="materialise conversation_pairs first"):
        choose_base_for_pairs(tmp_path / "conversation_pairs.parquet")


def test_auto_is_not_a_hub_id():
    from echo_pipeline.training.base_model import resolve_base_model

    with pytest.raises(BaseModelError, match="chosen from my train replies"):
        resolve_base_model("auto")


def test_a_hinglish_chat_gets_the_multilingual_base(base_model, gemma3_base):
    """Measured here: SmolLM2 3.89 and Gemma 3 270M 2.70 bits per character on these lines."""
    hinglish = [
        "haan yaar kal milte hai, abhi thoda kaam hai",
        "arre tu bhi na, itna kyu soch raha hai",
        "theek hai bhai, shaam ko call karta hu",
    ]
    scores = {
        DEFAULT_BASE_MODEL: bits_per_character(base_model, hinglish),
        GEMMA3_270M: bits_per_character(gemma3_base, hinglish),
    }
    assert choose(scores)[0] == GEMMA3_270M, scores
