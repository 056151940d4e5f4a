"""Packing: whole examples per row, isolated from each other, and the same logits as alone."""

from __future__ import annotations

import math
import random

import pytest
import torch

from echo_pipeline.training.packing import (
    IGNORE_INDEX,
    PackedBatch,
    pack_examples,
    padded_batches,
    padding_waste,
)


def make_examples(count: int, *, seed: int = 0, mean_tokens: float = 90.0, vocab: int = 1000):
    """Chat-like examples: lognormal lengths, the first ~60% of each is a masked prompt."""
    rng = random.Random(seed)
    sigma = 0.8
    mu = math.log(mean_tokens) - sigma**2 / 2
    examples = []
    for _ in range(count):
        length = min(1024, max(4, int(rng.lognormvariate(mu, sigma))))
        ids = [rng.randrange(3, vocab) for _ in range(length)]
        prompt = max(1, int(length * 0.6))
        examples.append({"input_ids": ids, "labels": [IGNORE_INDEX] * prompt + ids[prompt:]})
    return examples


def segments(row: PackedBatch):
    """(example index, start, end) for each real example in the row."""
    bounds = row.cu_seqlens
    return [(ex, bounds[i], bounds[i + 1]) for i, ex in enumerate(row.example_indices)]


@pytest.fixture(scope="module")
def chat_examples():
    return make_examples(2000)


def test_every_example_appears_exactly_once_in_rows_that_fit(chat_examples):
    rows = pack_examples(chat_examples, max_tokens=1024, seed=1, shuffle=True)

    placed = sorted(index for row in rows for index in row.example_indices)
    assert placed == list(range(len(chat_examples)))
    assert all(row.num_tokens <= 1024 for row in rows)
    for row in rows:
        for index, start, end in segments(row):
            assert row.input_ids[start:end] == chat_examples[index]["input_ids"]


def test_position_ids_restart_at_every_example(chat_examples):
    rows = pack_examples(chat_examples[:300], max_tokens=512, seed=1, shuffle=True)

    for row in rows:
        assert row.cu_seqlens[-1] == row.num_tokens == len(row.position_ids) == len(row.labels)
        for _, start, end in segments(row):
            assert row.position_ids[start:end] == list(range(end - start))


def test_no_label_crosses_an_example_boundary(chat_examples):
    rows = pack_examples(chat_examples[:300], max_tokens=512, seed=1, shuffle=True)

    for row in rows:
        for index, start, end in segments(row):
            # The model predicts labels[t + 1] from position t: a sample's first label would be
            # predicted from the previous sample's last token, so it must carry no loss.
            assert row.labels[start] == IGNORE_INDEX
            assert row.labels[start + 1 : end] == chat_examples[index]["labels"][1:]
        # Every target, seen from the position that predicts it, lies in that position's sample.
        owner = [i for i, length in enumerate(row.seq_lens) for _ in range(length)]
        for t in range(row.num_tokens - 1):
            if row.labels[t + 1] != IGNORE_INDEX:
                assert owner[t] == owner[t + 1]


def test_rows_are_nearly_full_on_chat_length_examples(chat_examples):
    """Padded to a fixed 1024 (static shapes), best-fit rows waste under 5% of the compute."""
    rows = pack_examples(chat_examples, max_tokens=1024, seed=0, pad_to_max_tokens=True)
    baseline = padded_batches(chat_examples, cutoff=256, micro_batch=4)

    assert all(row.num_tokens == 1024 for row in rows)
    assert padding_waste(rows) <= 0.05
    assert padding_waste(pack_examples(chat_examples, max_tokens=1024, seed=0)) == 0.0
    assert padding_waste(baseline) > 0.5  # the naive recipe spends most of its compute on padding


def test_padding_segment_has_its_own_positions_and_no_loss():
    examples = make_examples(5, mean_tokens=20)
    (row,) = pack_examples(examples, max_tokens=200, seed=0, pad_to_max_tokens=True)

    pad = row.pad_tokens
    assert pad == 200 - sum(len(e["input_ids"]) for e in examples) > 0
    assert row.seq_lens[-1] == pad and len(row.seq_lens) == len(examples) + 1
    assert row.position_ids[-pad:] == list(range(pad))
    assert set(row.labels[-pad:]) == {IGNORE_INDEX}


def test_packing_is_deterministic_under_a_seed(chat_examples):
    first = pack_examples(chat_examples[:500], max_tokens=1024, seed=7, shuffle=True)
    again = pack_examples(chat_examples[:500], max_tokens=1024, seed=7, shuffle=True)
    other = pack_examples(chat_examples[:500], max_tokens=1024, seed=8, shuffle=True)

    assert first == again
    assert [r.example_indices for r in first] != [r.example_indices for r in other]


def test_an_example_longer_than_a_row_is_an_error():
    examples = [{"input_ids": [5] * 65, "labels": [5] * 65}]
    with pytest.raises(ValueError, match="example 0 has 65 tokens"):
        pack_examples(examples, max_tokens=64, seed=0, shuffle=False)


def test_objects_with_attributes_pack_like_mappings():
    class Tokenized:
        def __init__(self, input_ids, labels):
            self.input_ids, self.labels = input_ids, labels

    examples = make_examples(20, mean_tokens=30)
    as_objects = [Tokenized(e["input_ids"], e["labels"]) for e in examples]

    assert pack_examples(as_objects, max_tokens=128, seed=3) == pack_examples(
        examples, max_tokens=128, seed=3
    )


def test_padded_baseline_truncates_and_pads_to_the_cutoff():
    examples = [{"input_ids": [7] * n, "labels": [7] * n} for n in (10, 300, 50)]
    batches = padded_batches(examples, cutoff=256, micro_batch=2)

    assert [b.example_indices for b in batches] == [[0, 1], [2]]
    assert all(len(row) == 256 for b in batches for row in b.input_ids)
    assert batches[0].attention_mask[0] == [1] * 10 + [0] * 246
    assert batches[0].pad_tokens == 246 and batches[1].pad_tokens == 206
    assert padding_waste(batches) == pytest.approx((246 + 206) / (3 * 256))


# --- equivalence on a real (tiny, random) transformers model ---------------------------------


@pytest.fixture(autouse=True)
def one_torch_thread():
    """These models are small: one thread costs little alone and saves a lot on a busy CPU."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def tiny_llama(attn_implementation: str = "sdpa"):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=1000,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        attn_implementation=attn_implementation,
    )
    torch.manual_seed(0)
    return LlamaForCausalLM(config).eval()


def packed_and_solo_logits(model, examples, **forward_kwargs):
    (row,) = pack_examples(examples, max_tokens=4096, seed=0, shuffle=False)
    ids = torch.tensor([row.input_ids])
    with torch.no_grad():
        packed = model(input_ids=ids, **forward_kwargs).logits[0]
        pairs = []
        for index, start, end in segments(row):
            alone = torch.tensor([examples[index]["input_ids"]])
            pairs.append((packed[start:end], model(input_ids=alone, use_cache=False).logits[0]))
    return row, pairs


@pytest.mark.parametrize("attn_implementation", ["sdpa", "eager"])
def test_each_packed_example_has_the_logits_it_has_alone(attn_implementation):
    model = tiny_llama(attn_implementation)
    examples = make_examples(6, mean_tokens=40, seed=3)
    (row,) = pack_examples(examples, max_tokens=4096, seed=0, shuffle=False)
    _, pairs = packed_and_solo_logits(
        model, examples, position_ids=torch.tensor([row.position_ids]), use_cache=False
    )

    assert len(pairs) == 6
    for packed, alone in pairs:
        torch.testing.assert_close(packed, alone, atol=1e-4, rtol=0)


@pytest.mark.parametrize(
    "mistake",
    [{"use_cache": True}, {"use_cache": False, "position_ids": None}],
    ids=["with-kv-cache", "without-position-ids"],
)
def test_negative_control_packed_examples_leak_without_the_right_call(mistake):
    """The isolation test above can fail: the same comparison with a wrong call sees leakage."""
    model = tiny_llama("sdpa")
    examples = make_examples(6, mean_tokens=40, seed=3)
    (row,) = pack_examples(examples, max_tokens=4096, seed=0, shuffle=False)
    kwargs = {"position_ids": torch.tensor([row.position_ids])} | mistake
    if kwargs["position_ids"] is None:
        del kwargs["position_ids"]
    _, pairs = packed_and_solo_logits(model, examples, **kwargs)

    first_packed, first_alone = pairs[0]
    torch.testing.assert_close(first_packed, first_alone, atol=1e-4, rtol=0)  # nothing before it
    worst = max((packed - alone).abs().max().item() for packed, alone in pairs[1:])
    assert worst > 1e-2


def test_packed_reply_loss_equals_the_padded_per_example_loss():
    from echo_pipeline.training.losses import reply_loss

    model = tiny_llama("sdpa")
    examples = make_examples(10, mean_tokens=40, seed=5)

    packed = reply_loss(model, examples, batch_tokens=128)

    total, count = 0.0, 0
    with torch.no_grad():
        for batch in padded_batches(examples, cutoff=256, micro_batch=4):
            logits = model(
                input_ids=torch.tensor(batch.input_ids),
                attention_mask=torch.tensor(batch.attention_mask),
                use_cache=False,
            ).logits
            targets = torch.tensor(batch.labels)[:, 1:]
            keep = targets != IGNORE_INDEX
            total += torch.nn.functional.cross_entropy(
                logits[:, :-1][keep], targets[keep], reduction="sum"
            ).item()
            count += int(keep.sum())
    assert packed == pytest.approx(total / count, abs=1e-5)


def test_smollm2_packed_segments_match_alone(base_model):
    """The same isolation on the real base model (the suite's default base, never skipped)."""
    from echo_pipeline.training.base_model import load_causal_lm

    model = load_causal_lm(base_model, dtype="float32", quantization="none", device="cpu").eval()
    examples = make_examples(3, mean_tokens=24, seed=11, vocab=10_000)
    (row,) = pack_examples(examples, max_tokens=4096, seed=0, shuffle=False)

    position_ids = torch.tensor([row.position_ids])
    _, pairs = packed_and_solo_logits(model, examples, position_ids=position_ids, use_cache=False)
    _, leaky = packed_and_solo_logits(model, examples, position_ids=position_ids, use_cache=True)

    for packed, alone in pairs:  # logits reach about 35 here; fp32 noise is about 5e-5
        torch.testing.assert_close(packed, alone, atol=1e-4, rtol=0)
    assert max((packed - alone).abs().max().item() for packed, alone in leaky[1:]) > 1.0
