"""Batched generation on SmolLM2 with a freshly initialised (zero-effect) LoRA adapter."""

from __future__ import annotations

import pytest

from echo_pipeline.serving.generation import (
    GenerationSettings,
    adapter_disabled,
    generate_replies,
    model_generate_kwargs,
    stop_rate,
    torch_threads,
)

CONTEXT = [
    {"speaker": "sam", "text": "Did you see the game last night?", "is_me": False},
    {"speaker": "me", "text": "yeah it was wild", "is_me": True},
]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The test machine's 2 cores are shared: 2 OpenMP threads can be 50x slower than 1 there."""
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def session(base_model, tmp_path_factory):
    from untrained import write_untrained_adapter

    from echo_pipeline.serving.chat import ChatSession

    adapter = write_untrained_adapter(
        base_model, tmp_path_factory.mktemp("adapter"), template="chatml"
    )
    return ChatSession.from_adapter(adapter, base_model=base_model)


@pytest.fixture(scope="module")
def prompt_ids(session):
    from echo_pipeline.datasets.tokenization import tokenize_inference_prompt

    def ids(context, prompt):
        return tokenize_inference_prompt(
            session.template, session.tokenizer, context, prompt, "", prompt_author="sam"
        )

    # Different lengths, so the shorter one is left-padded in the batch.
    prompts = [ids([], "Hi!"), ids(CONTEXT, "Are you coming to dinner tonight or not?")]
    assert len(prompts[0]) < len(prompts[1])
    return prompts


def test_batched_greedy_equals_one_by_one(session, prompt_ids):
    batched = generate_replies(
        session, prompt_ids, GenerationSettings(max_new_tokens=8, batch_size=2, do_sample=False)
    )
    single = generate_replies(
        session, prompt_ids, GenerationSettings(max_new_tokens=8, batch_size=1, do_sample=False)
    )
    assert batched.texts == single.texts
    assert batched.stopped == single.stopped
    assert all(batched.texts) and batched.generations_per_s > 0


def test_a_zero_effect_adapter_writes_what_the_base_writes(session, prompt_ids):
    from echo_pipeline.training.losses import reply_loss

    settings = GenerationSettings(max_new_tokens=8, batch_size=2)
    adapter = generate_replies(session, prompt_ids, settings)
    example = {
        "input_ids": prompt_ids[0] + [28, 29, 2],
        "labels": [-100] * len(prompt_ids[0]) + [28, 29, 2],
    }
    adapter_loss = reply_loss(session.model, [example])
    with adapter_disabled(session.model):
        base = generate_replies(session, prompt_ids, settings)
        base_loss = reply_loss(session.model, [example])
    assert base.texts == adapter.texts
    assert base_loss == pytest.approx(adapter_loss, rel=1e-5)
    from peft.tuners.lora import LoraLayer

    layers = [m for m in session.model.modules() if isinstance(m, LoraLayer)]
    assert layers and not any(layer.disable_adapters for layer in layers)  # back on after the block


def test_stop_rate_and_settings():
    assert stop_rate([True, False, True, True]) == 0.75
    assert stop_rate([]) == 0.0
    # People chat with sampling: that is the default, with a repetition guard.
    assert GenerationSettings().generate_kwargs() == {
        "max_new_tokens": 48,
        "do_sample": True,
        "temperature": 1.0,
        "top_p": 0.9,
        "reply_repetition_penalty": 1.1,
    }
    greedy = GenerationSettings(do_sample=False, repetition_penalty=1.0)
    assert greedy.generate_kwargs() == {"max_new_tokens": 48, "do_sample": False}
    assert "greedy" in greedy.describe() and "temperature 1.0" in GenerationSettings().describe()
    sampled = GenerationSettings(do_sample=True, temperature=0.9, top_p=0.8).generate_kwargs()
    assert sampled["temperature"] == 0.9 and sampled["top_p"] == 0.8
    for bad in ({"batch_size": 0}, {"repetition_penalty": 0.9}, {"temperature": 0.0}):
        with pytest.raises(ValueError):
            GenerationSettings(**bad)
    # Unset, the temperature is the adapter's own; one that was set stays.
    assert GenerationSettings().for_adapter(1.04).generate_kwargs()["temperature"] == 1.04
    assert "temperature 1.04" in GenerationSettings().for_adapter(1.04).describe()
    assert GenerationSettings(temperature=0.5).for_adapter(1.04).temperature == 0.5
    assert GenerationSettings().for_adapter(None).sampling_temperature == 1.0


def test_sampled_draws_are_reproducible_per_seed(session, prompt_ids):
    settings = GenerationSettings(max_new_tokens=8, batch_size=2, seed=5)
    first = generate_replies(session, prompt_ids, settings)
    again = generate_replies(session, prompt_ids, settings)
    assert first.texts == again.texts


def test_a_penalty_on_the_reply_leaves_the_prompts_words_and_stop_token_alone():
    import torch

    reply = GenerationSettings(repetition_penalty=2.0, penalty_scope="reply").generate_kwargs()
    assert (
        "repetition_penalty" not in reply
        and "reply" in GenerationSettings(penalty_scope="reply").describe()
    )
    kwargs = model_generate_kwargs(reply, prompt_width=3)
    assert "reply_repetition_penalty" not in kwargs
    (processor,) = kwargs["logits_processor"]
    # prompt: padding 0, then 5 and 6 (5 is the template's stop token); reply so far: 7
    scores = processor(torch.tensor([[0, 5, 6, 7]]), torch.full((1, 10), 2.0))
    assert scores[0, 5] == scores[0, 6] == 2.0  # the prompt's tokens: untouched
    assert scores[0, 7] == 1.0  # the reply's own: penalised
    # The old scope is transformers' own: no processor of ours.
    prompt = GenerationSettings(repetition_penalty=2.0, penalty_scope="prompt").generate_kwargs()
    assert model_generate_kwargs(prompt, prompt_width=3) == prompt
    with pytest.raises(ValueError, match="penalty_scope"):
        GenerationSettings(penalty_scope="all")


def test_a_reply_scoped_penalty_cannot_change_a_first_token(session, prompt_ids):
    """Nothing of the reply is written before its first token, so a reply-scoped penalty, however
    hard, leaves it as unpenalised greedy decoding has it (through ChatSession.generate)."""

    def first_tokens(**penalty):
        settings = GenerationSettings(max_new_tokens=1, batch_size=2, do_sample=False, **penalty)
        return generate_replies(session, prompt_ids, settings).texts

    plain = first_tokens(repetition_penalty=1.0)
    assert first_tokens(repetition_penalty=50.0, penalty_scope="reply") == plain


def test_adapter_disabled_refuses_a_plain_model():
    with pytest.raises(TypeError, match="not a PEFT model"), adapter_disabled(object()):
        pass
