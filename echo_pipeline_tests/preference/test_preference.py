"""The preference stage's core: pairs, the rating file, the DPO objective and its loop.

The objective is checked against numbers worked out by hand; the loop on the real base model
with a tiny fresh adapter and a few hundred tokens (a fresh LoRA starts equal to the base, so
the reference is the base itself).
"""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from echo_pipeline.infra.schemas import PREFERENCE_PAIRS
from echo_pipeline.preference import dpo as pref
from echo_pipeline.training.packing import IGNORE_INDEX, pack_examples

NOW = datetime(2026, 12, 6, 6, 0, tzinfo=UTC)


def _row(pair_id: str, chosen: str, rejected: str, source: str = "human_rating") -> dict:
    return {
        "pair_id": pair_id,
        "context": [{"speaker": "sam", "text": "hey"}],
        "prompt_author": "sam",
        "prompt": "dinner at 7?",
        "chosen": chosen,
        "rejected": rejected,
        "source": source,
        "adapter": "demo|chatml",
        "created_at": NOW,
    }


def test_dpo_loss_equals_the_hand_computed_value():
    import torch

    # pair 1: chosen gained 1 nat over the reference, rejected lost 1: margin 0.5 * 2 = 1.0
    # pair 2: chosen unchanged, rejected gained 1: margin 0.5 * -1 = -0.5
    loss, rewards = pref.dpo_loss(
        torch.tensor([-10.0, -5.0]),
        torch.tensor([-12.0, -4.0]),
        torch.tensor([-11.0, -5.0]),
        torch.tensor([-11.0, -5.0]),
        beta=0.5,
    )
    expected = (math.log1p(math.exp(-1.0)) + math.log1p(math.exp(0.5))) / 2
    assert float(loss) == pytest.approx(expected, abs=1e-6)  # 0.64367
    assert rewards["margin"].tolist() == pytest.approx([1.0, -0.5])
    assert rewards["chosen"].tolist() == pytest.approx([0.5, 0.0])


def test_pair_rows_drop_a_sample_equal_to_my_reply_and_repeated_draws():
    records = [
        {"pair_id": "a", "context": [], "prompt_author": "sam", "prompt": "hi", "reply": "yo  sup"},
        {"pair_id": "b", "context": [], "prompt_author": "sam", "prompt": "7?", "reply": "ok"},
    ]
    draws = [["yo sup", "sure"], ["hello there", "sure "]]
    table, counts = pref.pair_rows(records, draws, adapter="chatml|demo", created=NOW)
    assert table.schema == PREFERENCE_PAIRS
    assert [(r["pair_id"], r["rejected"]) for r in table.to_pylist()] == [
        ("a", "hello there"),
        ("b", "sure"),
    ]
    assert counts == {"sampled": 4, "kept": 2, "equal_to_real": 1, "repeated_draw": 1}
    assert set(table.column("source").to_pylist()) == {"self_sample"}


def test_a_rating_file_is_read_as_jsonl_or_parquet(tmp_path):
    jsonl = tmp_path / "ratings.jsonl"
    record = _row("p1", "real one", "bot one") | {"created_at": "2026-12-06T06:00:00Z"}
    jsonl.write_text(json.dumps(record) + "\n\n", encoding="utf-8")
    table = pref.read_preference_file(jsonl)
    assert table.schema == PREFERENCE_PAIRS
    assert table.to_pylist()[0]["created_at"] == NOW
    assert pref.source_counts(table) == {"self_sample": 0, "human_rating": 1, "human_choice": 0}

    parquet = tmp_path / "ratings.parquet"
    pq.write_table(pa.Table.from_pylist([_row("p1", "a", "b", "human_choice")]), parquet)
    assert pref.read_preference_file(parquet).column("source").to_pylist() == ["human_choice"]


def test_a_bad_rating_file_fails_on_one_line_naming_it(tmp_path):
    wrong = tmp_path / "wrong.jsonl"
    wrong.write_text(
        json.dumps(_row("p1", "a", "b", "thumbs_up") | {"created_at": "2026-12-06T06:00:00"})
    )
    with pytest.raises(ValueError, match=r"wrong\.jsonl: unknown source 'thumbs_up'"):
        pref.read_preference_file(wrong)
    lacking = tmp_path / "lacking.parquet"
    pq.write_table(pa.table({"pair_id": ["p1"]}), lacking)
    with pytest.raises(ValueError, match=r"lacking\.parquet: .*missing columns context"):
        pref.read_preference_file(lacking)
    broken = tmp_path / "broken.jsonl"
    broken.write_text("{not json\n")
    with pytest.raises(ValueError, match=r"broken\.jsonl: .*line 1 is not JSON") as error:
        pref.read_preference_file(broken)
    assert "\n" not in str(error.value)


def _dataset(tokenizer, rows):
    """A template-dataset frame (train and test rows) rendered by the training code."""
    import pandas as pd

    from echo_pipeline.datasets.templates import ChatPair
    from echo_pipeline.datasets.tokenization import tokenize_pair

    records = []
    for pair_id, split, prompt, reply in rows:
        example = tokenize_pair("chatml", tokenizer, ChatPair((), prompt, reply, "sam"))
        records.append(
            {
                "pair_id": pair_id,
                "split": split,
                "input_ids": example.input_ids,
                "labels": example.labels,
                "prompt_len": example.prompt_len,
            }
        )
    return pd.DataFrame(records)


def test_examples_reuse_the_dataset_prompt_and_never_a_heldout_pair(smollm2_tokenizer):
    frame = _dataset(
        smollm2_tokenizer,
        [("p1", "train", "dinner at 7?", "sure, see you"), ("p2", "test", "movie?", "nah")],
    )
    pairs = pa.Table.from_pylist(
        [
            _row("p1", "sure, see you", "I am an AI assistant."),
            _row("p2", "nah", "yes"),  # held out: the evaluation asks this prompt
            _row("p9", "x", "y"),  # not in the dataset at all
            _row("p1", "same", " same "),
        ],
        schema=PREFERENCE_PAIRS,
    )
    examples, skipped = pref.preference_examples(pairs, frame, "chatml", smollm2_tokenizer)
    assert skipped == {
        "heldout_pair": 1,
        "unknown_pair": 1,
        "equal_replies": 1,
        "heldout_prompt": 0,
    }
    (example,) = examples
    first = frame.iloc[0]
    # chosen is exactly the dataset row: same prompt ids, same labelled reply and EOS
    assert example.chosen["input_ids"] == list(first["input_ids"])
    assert example.chosen["labels"] == list(first["labels"])
    prompt_len = int(first["prompt_len"])
    assert example.rejected["input_ids"][:prompt_len] == example.chosen["input_ids"][:prompt_len]
    eos = smollm2_tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert example.rejected["labels"][:prompt_len] == [IGNORE_INDEX] * prompt_len
    assert example.rejected["labels"][-1] == eos


def test_a_message_typed_on_the_chat_page_trains_as_the_chat_rendered_it(smollm2_tokenizer):
    from echo_pipeline.datasets.tokenization import tokenize_inference_prompt

    frame = _dataset(smollm2_tokenizer, [("p1", "train", "dinner at 7?", "sure, see you")])
    typed = _row("t1", "ya ok", "I would be delighted to assist you.") | {"prompt": "pizza?"}
    heldout = _row("t2", "nah", "Certainly!") | {"prompt": "  Movie tonight? "}
    pairs = pa.Table.from_pylist([typed, heldout], schema=PREFERENCE_PAIRS)

    def render(row):
        return tokenize_inference_prompt(
            "chatml", smollm2_tokenizer, row["context"], row["prompt"], prompt_author="sam"
        )

    examples, skipped = pref.preference_examples(
        pairs,
        frame,
        "chatml",
        smollm2_tokenizer,
        typed_prompt=render,
        heldout_prompts=["movie tonight?"],
    )
    assert skipped["heldout_prompt"] == 1 and skipped["unknown_pair"] == 0
    (example,) = examples
    prompt = render(typed)
    assert example.pair_id == "t1" and example.chosen["input_ids"][: len(prompt)] == prompt
    assert example.rejected["input_ids"][: len(prompt)] == prompt
    assert smollm2_tokenizer.decode(example.chosen["input_ids"][len(prompt) :]).startswith("ya ok")


@pytest.fixture(scope="module")
def tiny_model(base_model):
    """The real base model with a fresh rank-4 LoRA (equal to the base until trained)."""
    from echo_pipeline.training.base_model import load_causal_lm
    from echo_pipeline.training.config import TrainingConfig
    from echo_pipeline.training.lora import attach_lora

    model = load_causal_lm(base_model, dtype="float32")
    return attach_lora(model, TrainingConfig(lora_r=4, lora_alpha=8))


@pytest.fixture(scope="module")
def tiny_examples(smollm2_tokenizer):
    talk = [
        ("p1", "dinner at 7?", "ya 7 works, pick u up", "I would be delighted to join you."),
        ("p2", "did u finish the set", "nope lol, tmrw", "As an AI, I do not do homework."),
        ("p3", "game tonight?", "ya im in", "Certainly! Games are a great way to relax."),
        ("p4", "u up?", "ya whats up", "Hello! How can I assist you today?"),
    ]
    frame = _dataset(smollm2_tokenizer, [(p, "train", q, a) for p, q, a, _ in talk])
    pairs = pa.Table.from_pylist(
        [_row(p, a, r, "self_sample") for p, _, a, r in talk], schema=PREFERENCE_PAIRS
    )
    examples, _ = pref.preference_examples(pairs, frame, "chatml", smollm2_tokenizer)
    return examples


def _snapshot(model):
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def _restore(model, snapshot):
    import torch

    with torch.no_grad():
        for n, p in model.named_parameters():
            if n in snapshot:
                p.copy_(snapshot[n])


def test_packed_logprobs_equal_each_sequence_alone(tiny_model, tiny_examples):
    import torch

    from echo_pipeline.training.losses import packed_logprobs

    sequences = [e.chosen for e in tiny_examples[:2]] + [tiny_examples[0].rejected]
    with torch.inference_mode():
        packed = pref.sequence_logprobs(tiny_model, sequences, pack_tokens=1024)
        for index, sequence in enumerate(sequences):
            (row,) = pack_examples([sequence], max_tokens=1024, shuffle=False)
            alone = packed_logprobs(tiny_model, row, "cpu")
            assert float(packed[index]) == pytest.approx(float(alone[0]), abs=1e-3)
            assert float(alone[0]) < 0


def test_dpo_steps_lower_the_loss_and_widen_the_margin(tiny_model, tiny_examples, tmp_path):
    start = _snapshot(tiny_model)
    config = pref.PreferenceConfig(
        max_steps=6, pairs_per_step=4, learning_rate=2e-3, warmup_steps=0, checkpoint_every=0
    )
    try:
        result = pref.train_preference(
            tiny_model, tiny_examples, config, tmp_path, fingerprint="t1"
        )
    finally:
        _restore(tiny_model, start)
    assert result.completed and result.steps == 6
    assert result.losses[0] == pytest.approx(math.log(2), abs=1e-3)  # policy == reference
    assert result.losses[-1] < result.losses[0] - 0.05
    assert result.margins[-1] > result.margins[0] + 0.5
    # the reference was computed once and cached beside the checkpoints
    cached = json.loads((tmp_path / pref.REFERENCE_FILE).read_text())
    assert cached["key"] == "t1" and len(cached["values"]) == len(tiny_examples)


def test_a_stopped_run_resumes_to_the_same_weights(tiny_model, tiny_examples, tmp_path):
    start = _snapshot(tiny_model)
    config = pref.PreferenceConfig(
        max_steps=4, pairs_per_step=2, learning_rate=1e-3, warmup_steps=1, checkpoint_every=0
    )
    try:
        straight = pref.train_preference(
            tiny_model, tiny_examples, config, tmp_path / "a", fingerprint="r"
        )
        straight_weights = _snapshot(tiny_model)
        _restore(tiny_model, start)
        stopped = pref.train_preference(
            tiny_model,
            tiny_examples,
            config,
            tmp_path / "b",
            fingerprint="r",
            should_stop=lambda step: step == 2,
        )
        assert not stopped.completed and stopped.steps == 2
        _restore(tiny_model, start)  # a new process: the weights come from the checkpoint
        resumed = pref.train_preference(
            tiny_model, tiny_examples, config, tmp_path / "b", fingerprint="r"
        )
        resumed_weights = _snapshot(tiny_model)
    finally:
        _restore(tiny_model, start)
    assert resumed.resumed_from_step == 2 and resumed.completed
    assert resumed.losses == pytest.approx(straight.losses, abs=1e-5)
    for name, value in straight_weights.items():
        assert (resumed_weights[name] - value).abs().max() < 1e-6, name
