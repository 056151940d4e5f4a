"""Per-sample attention over packed rows: the same logits as each sample alone, only inside
its block, and the same training run as the model's own (dense-mask) attention."""

from __future__ import annotations

import pytest
import torch
from test_packing import make_examples, packed_and_solo_logits, segments, tiny_llama

from echo_pipeline.training.config import TrainingConfig
from echo_pipeline.training.loop import train_lora
from echo_pipeline.training.losses import reply_loss
from echo_pipeline.training.packed_attention import (
    ATTENTION_NAME,
    segment_attention,
    segment_bounds,
)
from echo_pipeline.training.packing import pack_examples


def test_segment_bounds_start_at_every_position_restart():
    position_ids = torch.tensor([[0, 1, 2, 0, 1, 0, 0, 1, 2, 3], [5, 6, 7, 8, 0, 1, 2, 3, 4, 5]])

    assert segment_bounds(position_ids) == [
        [(0, 3), (3, 5), (5, 6), (6, 10)],
        [(0, 4), (4, 10)],  # a row may start mid-sequence: it is one segment until the restart
    ]


@pytest.mark.parametrize("attn_implementation", ["sdpa", "eager"])
def test_packed_samples_get_the_logits_they_get_alone(attn_implementation):
    model = tiny_llama(attn_implementation)
    examples = make_examples(6, mean_tokens=40, seed=3)
    (row,) = pack_examples(examples, max_tokens=4096, seed=0, shuffle=False)

    with segment_attention(model) as switched:
        assert switched and model.config._attn_implementation == ATTENTION_NAME
        _, pairs = packed_and_solo_logits(
            model, examples, position_ids=torch.tensor([row.position_ids]), use_cache=False
        )

    assert model.config._attn_implementation == attn_implementation  # restored
    assert len(pairs) == 6
    for packed, alone in pairs:
        torch.testing.assert_close(packed, alone, atol=1e-5, rtol=0)


def test_on_smollm2_packed_samples_get_the_logits_they_get_alone(base_model):
    """The same on the real base model (9 query heads sharing 3 key/value heads)."""
    from echo_pipeline.training.base_model import load_causal_lm

    model = load_causal_lm(base_model, dtype="float32", quantization="none", device="cpu").eval()
    examples = make_examples(4, mean_tokens=24, seed=11, vocab=10_000)
    (row,) = pack_examples(examples, max_tokens=4096, seed=0, shuffle=False)

    with segment_attention(model) as switched:
        assert switched
        _, pairs = packed_and_solo_logits(
            model, examples, position_ids=torch.tensor([row.position_ids]), use_cache=False
        )

    assert model.config._attn_implementation == "sdpa"
    for packed, alone in pairs:  # logits reach about 35: fp32 noise is about 5e-5
        torch.testing.assert_close(packed, alone, atol=1e-4, rtol=0)


def test_without_restarting_positions_the_row_is_one_causal_sequence():
    """Negative control: the comparison above sees leakage when the row is not cut."""
    model = tiny_llama("sdpa")
    examples = make_examples(4, mean_tokens=40, seed=4)
    (row,) = pack_examples(examples, max_tokens=4096, seed=0, shuffle=False)
    positions = torch.arange(len(row.input_ids))[None]

    with segment_attention(model):
        _, pairs = packed_and_solo_logits(model, examples, position_ids=positions, use_cache=False)

    worst = max((packed - alone).abs().max().item() for packed, alone in pairs[1:])
    assert worst > 1e-2


def test_generation_inside_the_block_is_refused_and_outside_it_works():
    model = tiny_llama("sdpa")
    ids = torch.tensor([[5, 6, 7, 8]])
    with segment_attention(model), pytest.raises(RuntimeError, match="packed training rows"):
        model.generate(ids, attention_mask=torch.tensor([[0, 1, 1, 1]]), max_new_tokens=2)

    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=2)
    assert out.shape == (1, 6)


def test_implementations_that_already_isolate_packed_samples_are_left_alone():
    model = tiny_llama("sdpa")
    model.config._attn_implementation_internal = "flex_attention"
    with segment_attention(model) as isolated:
        assert isolated and model.config._attn_implementation == "flex_attention"
    with segment_attention(tiny_llama("sdpa"), enabled=False) as isolated:
        assert not isolated


def test_training_with_segments_matches_the_dense_mask_run(tmp_path):
    examples = make_examples(24, mean_tokens=30, seed=7)
    runs = {}
    for kernel in ("segments", "model"):
        config = TrainingConfig(
            lora_r=4, max_steps=4, pack_tokens=128, eval_every=0, packed_attention=kernel
        )
        result = train_lora(tiny_llama("sdpa"), None, examples, [], config, tmp_path / kernel)
        runs[kernel] = result
        assert result.model.get_base_model().config._attn_implementation == "sdpa"

    torch.testing.assert_close(
        torch.tensor(runs["segments"].train_losses),
        torch.tensor(runs["model"].train_losses),
        atol=1e-5,
        rtol=0,
    )
    assert runs["segments"].fingerprint == runs["model"].fingerprint
    held_out = make_examples(5, mean_tokens=30, seed=8)
    assert reply_loss(runs["segments"].model, held_out) == pytest.approx(
        reply_loss(runs["model"].model, held_out), abs=1e-5
    )


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the flash varlen kernel needs CUDA")
def test_on_a_gpu_in_bf16_the_varlen_kernel_gives_each_sample_its_own_logits():
    from echo_pipeline.training import packed_attention

    model = tiny_llama("sdpa").to("cuda", torch.bfloat16)
    examples = make_examples(6, mean_tokens=40, seed=3)
    (row,) = pack_examples(examples, max_tokens=4096, seed=0, shuffle=False)
    query = torch.zeros(1, 4, 8, 16, device="cuda", dtype=torch.bfloat16)
    if not packed_attention._can_use_varlen(query, 0.0, 1):
        pytest.skip("this torch has no flash varlen kernel with a softmax scale")
    ids = torch.tensor([row.input_ids], device="cuda")
    positions = torch.tensor([row.position_ids], device="cuda")
    with torch.no_grad(), segment_attention(model):
        packed = model(input_ids=ids, position_ids=positions, use_cache=False).logits[0].float()
    start = 0
    for index in row.example_indices:
        alone_ids = torch.tensor([examples[index]["input_ids"]], device="cuda")
        with torch.no_grad():
            alone = model(input_ids=alone_ids, use_cache=False).logits[0].float()
        segment = packed[start : start + alone.shape[0]]
        torch.testing.assert_close(segment, alone, atol=3e-2, rtol=3e-2)  # bf16 rounding
        start += alone.shape[0]


def tiny_gemma3(sliding_window: int = 8, attn_implementation: str = "sdpa"):
    """Gemma 3's shape in miniature: sliding-window layers around a global one, one key/value
    head for four query heads, tied embeddings."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    config = Gemma3TextConfig(
        vocab_size=1000,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=1,
        head_dim=16,
        query_pre_attn_scalar=16,
        sliding_window=sliding_window,
        layer_types=["sliding_attention", "full_attention", "sliding_attention"],
        max_position_embeddings=512,
        attn_implementation=attn_implementation,
    )
    torch.manual_seed(0)
    return Gemma3ForCausalLM(config).eval()


@pytest.mark.parametrize("attn_implementation", ["sdpa", "eager"])
def test_gemma3_sliding_window_layers_keep_their_window_in_packed_rows(attn_implementation):
    """Samples several times longer than the window: each still sees only its last 8 tokens."""
    model = tiny_gemma3(sliding_window=8, attn_implementation=attn_implementation)
    examples = make_examples(5, mean_tokens=40, seed=5)
    assert max(len(e["input_ids"]) for e in examples) > 3 * 8
    (row,) = pack_examples(examples, max_tokens=4096, seed=0, shuffle=False)

    ids, positions = torch.tensor([row.input_ids]), torch.tensor([row.position_ids])
    with torch.no_grad():
        with segment_attention(model) as switched:
            assert switched
            packed = model(input_ids=ids, position_ids=positions, use_cache=False).logits[0]
        assert model.config._attn_implementation == attn_implementation
        for index, start, end in segments(row):  # alone: the model's own sliding-window masks
            alone_ids = torch.tensor([examples[index]["input_ids"]])
            alone = model(input_ids=alone_ids, use_cache=False).logits[0]
            torch.testing.assert_close(packed[start:end], alone, atol=1e-5, rtol=0)


def test_gemma3_window_matters_so_the_comparison_above_can_fail():
    """Negative control: the same weights with a window wider than every sample differ."""
    examples = make_examples(3, mean_tokens=40, seed=5)
    ids = torch.tensor([examples[0]["input_ids"]])
    with torch.no_grad():
        narrow = tiny_gemma3(sliding_window=8)(input_ids=ids, use_cache=False).logits
        wide = tiny_gemma3(sliding_window=4096)(input_ids=ids, use_cache=False).logits
    assert (narrow - wide).abs().max().item() > 1e-2


def test_models_that_soft_cap_attention_keep_their_own_implementation():
    model = tiny_gemma3()
    model.config.attn_logit_softcapping = 50.0
    with segment_attention(model) as isolated:
        assert not isolated and model.config._attn_implementation == "sdpa"
