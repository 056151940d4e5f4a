"""Batched generation on SmolLM2 with a freshly initialised (zero-effect) LoRA adapter."""

from __future__ import annotations

import pytest

from echo_pipeline.evaluation.generation import (
    GenerationSettings,
    adapter_disabled,
    generate_replies,
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

    from echo_pipeline.chat import ChatSession

    adapter = write_untrained_adapter(
        base_model, tmp_path_factory.mktemp("adapter"), template="chatml"
    )
    return ChatSession.from_adapter(adapter, base_model=base_model)


@pytest.fixture(scope="module")
def prompt_ids(session):
    from echo_pipeline.tokenization import tokenize_inference_prompt

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
    from echo_pipeline.training import reply_loss

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
        "temperature": 0.7,
        "top_p": 0.9,
        "repetition_penalty": 1.1,
    }
    greedy = GenerationSettings(do_sample=False, repetition_penalty=1.0)
    assert greedy.generate_kwargs() == {"max_new_tokens": 48, "do_sample": False}
    assert "greedy" in greedy.describe() and "temperature 0.7" in GenerationSettings().describe()
    sampled = GenerationSettings(do_sample=True, temperature=0.9, top_p=0.8).generate_kwargs()
    assert sampled["temperature"] == 0.9 and sampled["top_p"] == 0.8
    for bad in ({"batch_size": 0}, {"repetition_penalty": 0.9}, {"temperature": 0.0}):
        with pytest.raises(ValueError):
            GenerationSettings(**bad)


def test_sampled_draws_are_reproducible_per_seed(session, prompt_ids):
    settings = GenerationSettings(max_new_tokens=8, batch_size=2, seed=5)
    first = generate_replies(session, prompt_ids, settings)
    again = generate_replies(session, prompt_ids, settings)
    assert first.texts == again.texts


def test_adapter_disabled_refuses_a_plain_model():
    with pytest.raises(TypeError, match="not a PEFT model"), adapter_disabled(object()):
        pass
