"""Reply memory: which past exchanges a prompt is shown, and that the choice is reproducible.

The retrieval rules are tested with a plain bag-of-words encoder (exact, and readable: which
prompt is nearest is obvious); the shipped MiniLM is tested for what the rules rely on, that a
text embedded alone gets the very bits it gets in a batch, and for finding a paraphrase.
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest

from echo_pipeline.pairs.memory import (
    EXAMPLE_CHARS,
    Example,
    MemoryIndex,
    ReplyMemory,
    build_index,
    clip,
    fixed_shape_encoder,
    nearest,
)

VOCABULARY = ["dinner", "tonight", "pizza", "risc", "vector", "cache", "gym", "tomorrow", "cat"]


def bag_of_words(texts):
    """Unit vectors of word counts over VOCABULARY (a real, if tiny, sentence encoder)."""
    rows = np.zeros((len(texts), len(VOCABULARY)), np.float32)
    for i, text in enumerate(texts):
        for word in re.findall(r"[a-z]+", str(text).lower()):
            if word in VOCABULARY:
                rows[i, VOCABULARY.index(word)] += 1
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    return rows / np.where(norms == 0, 1, norms)


def pairs_frame() -> pd.DataFrame:
    rows = [  # pair_id, session, split, prompt, reply
        ("p1", "s1", "train", "dinner tonight?", "yes, pizza"),
        ("p2", "s1", "train", "pizza for dinner tonight", "always"),
        ("p3", "s2", "train", "dinner tonight with pizza?", "sure thing"),
        ("p4", "s3", "train", "risc vector cache question", "read the spec"),
        ("p5", "s4", "train", "gym tomorrow", "maybe"),
        ("p6", "s5", "test", "dinner tonight pizza", "held-out reply: never an example"),
        ("p7", "s6", "val", "pizza dinner", "held-out too"),
        ("p8", "s7", "train", "   ", "empty prompt: not indexed"),
    ]
    frame = pd.DataFrame(rows, columns=["pair_id", "session_id", "split", "prompt", "reply"])
    frame["prompt_author"] = "bob"
    return frame


@pytest.fixture(scope="module")
def index() -> MemoryIndex:
    return build_index(pairs_frame(), bag_of_words)


def test_the_index_holds_train_pairs_only(index):
    assert index.pair_ids == ("p1", "p2", "p3", "p4", "p5")
    assert "held-out" not in " ".join(index.replies)
    assert index.vectors.shape == (5, len(VOCABULARY))


def test_a_train_prompt_never_sees_itself_or_its_own_session(index):
    memory = ReplyMemory(index, bag_of_words, k=2)
    (shown,) = memory.examples_for(["dinner tonight?"], ["s1"])
    # p1 (itself) and p2 (same session) are the two nearest, and both are excluded
    # p1 (itself) and p2 (same session) are the nearest two; next come p3, then p4 and p5 tied
    # at 0 (the tie to the earlier, p4)
    assert [e.reply for e in shown] == ["read the spec", "sure thing"]
    assert shown[-1] == Example("dinner tonight with pizza?", "sure thing", "bob")  # best last


def test_a_new_message_sees_the_nearest_exchanges_least_similar_first(index):
    memory = ReplyMemory(index, bag_of_words, k=3)
    (shown,) = memory.examples_for(["pizza dinner tonight"])
    assert [e.reply for e in shown] == ["yes, pizza", "sure thing", "always"]
    assert memory.examples_for(["risc cache"], sessions=[None])[0][-1].reply == "read the spec"


def test_held_out_prompts_only_ever_get_train_examples(index):
    frame = pairs_frame()
    held = frame[frame["split"] != "train"]
    memory = ReplyMemory(index, bag_of_words, k=4)
    for shown in memory.examples_for(held["prompt"].tolist(), held["session_id"].tolist()):
        assert len(shown) == 4
        assert all("held-out" not in e.reply for e in shown)


def test_ties_go_to_the_earlier_pair_and_k_zero_shows_nothing(index):
    query = bag_of_words(["dinner"])[0]
    assert nearest(index, query, 1) == [0]  # p1, p2 and p3 share "dinner"; p1 comes first
    assert ReplyMemory(index, bag_of_words, k=0).examples_for(["dinner"]) == [()]
    assert nearest(index, query, 10, exclude_session="s1")[-1] == 2  # fewer than k: all left


def test_the_index_survives_parquet_and_its_digest_follows_its_content(index, tmp_path):
    import pyarrow.parquet as pq

    path = tmp_path / "reply_memory.parquet"
    pq.write_table(index.to_table(), path)
    loaded = MemoryIndex.load(path)
    assert loaded.pair_ids == index.pair_ids and np.array_equal(loaded.vectors, index.vectors)
    assert loaded.digest() == index.digest()
    changed = build_index(pairs_frame().replace({"always": "never"}), bag_of_words)
    assert changed.digest() != index.digest()
    with pytest.raises(FileNotFoundError, match="materialise reply_memory"):
        MemoryIndex.load(tmp_path / "missing.parquet")


def test_long_examples_are_cut_at_a_word():
    text = "word " * 200
    assert len(clip(text)) <= EXAMPLE_CHARS + 1 and clip(text).endswith("word…")
    assert clip("  short\r\nreply ") == "short\nreply"


@pytest.fixture(scope="module")
def minilm():
    from echo_pipeline.pairs.embedder import SentenceEmbedder

    return fixed_shape_encoder(SentenceEmbedder.load())


def test_minilm_gives_a_text_the_same_bits_alone_as_in_any_batch(minilm):
    texts = [
        "are you coming to dinner tonight?",
        "the vector unit stalls on a cache miss",
        "ok",
        "what time does the gym open tomorrow morning, do you know",
        "lol",
        "did you read the new spec draft",
        "is the cat ok?",
        "pizza or sushi",
        "one more to spill into a second batch",
    ]
    together = minilm(texts)
    alone = np.stack([minilm([t])[0] for t in texts[:3]])
    assert np.array_equal(together[:3], alone)  # bit for bit, not just close
    assert np.allclose(np.linalg.norm(together, axis=1), 1, atol=1e-5)


def test_minilm_memory_finds_a_paraphrase(minilm):
    frame = pd.DataFrame(
        {
            "pair_id": ["a", "b", "c"],
            "session_id": ["1", "2", "3"],
            "split": "train",
            "prompt": [
                "what time should we meet for dinner?",
                "the RISC-V vector extension is confusing",
                "my cat knocked over a plant",
            ],
            "reply": ["8 works", "read chapter 31", "classic"],
            "prompt_author": "bob",
        }
    )
    memory = ReplyMemory(build_index(frame, minilm), minilm, k=1)
    (shown,) = memory.examples_for(["when are we eating tonight?"])
    assert shown[0].reply == "8 works"
