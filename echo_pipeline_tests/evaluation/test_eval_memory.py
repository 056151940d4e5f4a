"""Evaluation prompts the adapter as it was trained: with its reply-memory examples."""

from __future__ import annotations

from types import SimpleNamespace

import pandas as pd

from echo_pipeline.datasets.prompt import PromptSpec
from echo_pipeline.datasets.tokenization import tokenize_inference_prompt
from echo_pipeline.evaluation.evaluate import _inference_prompts
from echo_pipeline.pairs.memory import ReplyMemory, build_index
from echo_pipeline_tests.pairs.test_memory import bag_of_words, pairs_frame

SYSTEM = "You are ana."


def test_held_out_and_train_prompts_get_their_examples_never_from_their_own_session(
    smollm2_tokenizer,
):
    pairs = pairs_frame()
    pairs["context"] = [[] for _ in range(len(pairs))]
    memory = ReplyMemory(build_index(pairs, bag_of_words), bag_of_words, k=2)
    session = SimpleNamespace(
        prompt=PromptSpec("chatml", SYSTEM), tokenizer=smollm2_tokenizer, memory=memory
    )
    rows = pairs[pairs["pair_id"].isin(["p1", "p6"])]  # a train prompt and a held-out one
    ids = _inference_prompts(session, rows)
    shown = memory.examples_for(rows["prompt"].tolist(), rows["session_id"].tolist())
    for row, got, examples in zip(rows.itertuples(), ids, shown, strict=True):
        assert got == tokenize_inference_prompt(
            "chatml",
            smollm2_tokenizer,
            [],
            row.prompt,
            SYSTEM,
            prompt_author=row.prompt_author,
            max_tokens=512,
            examples=examples,
        )
    train_prompt = smollm2_tokenizer.decode(ids[0])
    assert "yes, pizza" not in train_prompt and "always" not in train_prompt  # its own session
    assert "sure thing" in train_prompt
    assert "always" in smollm2_tokenizer.decode(ids[1])  # held out: any train session, s1 too

    without = SimpleNamespace(**{**vars(session), "memory": None})
    plain = _inference_prompts(without, pd.DataFrame(rows))
    assert all(len(p) < len(m) for p, m in zip(plain, ids, strict=True))
