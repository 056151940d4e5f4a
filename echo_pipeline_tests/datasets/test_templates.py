"""Prompt templates: exact seed formats, conversation shape, segments and markers."""

from __future__ import annotations

import json

import numpy as np
import pytest

from echo_pipeline.datasets.templates import (
    TEMPLATE_NAMES,
    ChatPair,
    ContextTurn,
    Special,
    conversation_messages,
    default_system_prompt,
    render,
    render_inference_prompt,
    render_training_text,
)
from echo_pipeline.pairs.conversations import infer_me_name
from echo_pipeline.pairs.memory import Example

# The two formats exactly as the seed blog post gives them (its JSON lines, verbatim).
SEED_LLAMA2 = r'{ "inputs": "<s>[INST] <<SYS>>\n{{ system_prompt }}\n<</SYS>>\n\n{{ user_message }} [/INST] {{ response }} </s>" }'
SEED_NOUS = (
    r'{ "inputs": "<s>### Instruction:\n{{ user_message }}\n\n### Response:\n{{ response }}</s>" }'
)


def seed(line: str, **values: str) -> str:
    text = json.loads(line)["inputs"]
    for key, value in values.items():
        text = text.replace("{{ " + key + " }}", value)
    return text


ONE_TURN = ChatPair((), "are you coming tonight?", "yeah, 8ish", "bob")
WITH_CONTEXT = ChatPair(
    (
        ContextTurn("ana", "morning!", True),  # my leading turn: dropped
        ContextTurn("bob", "hey", False),
        ContextTurn("bob", "you there?", False),
        ContextTurn("ana", "yep", True),
    ),
    "are you coming tonight?",
    "yeah, 8ish",
    "bob",
)
GROUP = ChatPair(
    (
        ContextTurn("bob", "pizza?", False),
        ContextTurn("cy", "sushi", False),
        ContextTurn("ana", "both", True),
    ),
    "ok who's ordering",
    "me lol",
    "cy",
)


def test_llama2_chat_is_the_seed_format_character_for_character():
    text = render_training_text("llama2_chat", ONE_TURN, system_prompt="You are ana.")
    assert text == seed(
        SEED_LLAMA2,
        system_prompt="You are ana.",
        user_message="are you coming tonight?",
        response="yeah, 8ish",
    )


def test_nous_hermes_is_the_seed_format_character_for_character():
    text = render_training_text("nous_hermes", ONE_TURN, system_prompt="")
    assert text == seed(SEED_NOUS, user_message="are you coming tonight?", response="yeah, 8ish")


def test_an_empty_system_prompt_leaves_the_system_block_out():
    assert render_training_text("llama2_chat", ONE_TURN) == (
        "<s>[INST] are you coming tonight? [/INST] yeah, 8ish </s>"
    )
    assert render_training_text("chatml", ONE_TURN) == (
        "<|im_start|>user\nare you coming tonight?<|im_end|>\n<|im_start|>assistant\nyeah, 8ish<|im_end|>"
    )


def test_nous_hermes_puts_the_system_prompt_before_the_first_instruction():
    assert render_training_text("nous_hermes", ONE_TURN, system_prompt="You are ana.") == (
        "<s>You are ana.\n\n### Instruction:\nare you coming tonight?\n\n### Response:\nyeah, 8ish</s>"
    )


def test_chatml_format():
    assert render_training_text("chatml", ONE_TURN, system_prompt="Be ana.") == (
        "<|im_start|>system\nBe ana.<|im_end|>\n"
        "<|im_start|>user\nare you coming tonight?<|im_end|>\n"
        "<|im_start|>assistant\nyeah, 8ish<|im_end|>"
    )


def test_context_renders_in_each_templates_own_multi_turn_convention():
    sys_prompt = "S"
    assert render_training_text("llama2_chat", WITH_CONTEXT, system_prompt=sys_prompt) == (
        "<s>[INST] <<SYS>>\nS\n<</SYS>>\n\nhey\nyou there? [/INST] yep </s>"
        "<s>[INST] are you coming tonight? [/INST] yeah, 8ish </s>"
    )
    assert render_training_text("nous_hermes", WITH_CONTEXT, system_prompt=sys_prompt) == (
        "<s>S\n\n### Instruction:\nhey\nyou there?\n\n### Response:\nyep</s>"
        "<s>### Instruction:\nare you coming tonight?\n\n### Response:\nyeah, 8ish</s>"
    )
    assert render_training_text("chatml", WITH_CONTEXT, system_prompt=sys_prompt) == (
        "<|im_start|>system\nS<|im_end|>\n"
        "<|im_start|>user\nhey\nyou there?<|im_end|>\n"
        "<|im_start|>assistant\nyep<|im_end|>\n"
        "<|im_start|>user\nare you coming tonight?<|im_end|>\n"
        "<|im_start|>assistant\nyeah, 8ish<|im_end|>"
    )


def test_roles_alternate_merge_and_start_with_the_user():
    assert conversation_messages(WITH_CONTEXT) == [
        {"role": "user", "content": "hey\nyou there?"},
        {"role": "assistant", "content": "yep"},
        {"role": "user", "content": "are you coming tonight?"},
    ]


def test_group_chats_name_each_user_line_and_one_to_one_chats_do_not():
    assert conversation_messages(GROUP, "sys") == [
        {"role": "system", "content": "sys"},
        {"role": "user", "content": "bob: pizza?\ncy: sushi"},
        {"role": "assistant", "content": "both"},
        {"role": "user", "content": "cy: ok who's ordering"},
    ]
    assert "bob:" not in render_training_text("chatml", WITH_CONTEXT)


def test_a_channel_with_several_other_people_is_a_group_chat_even_pair_by_pair():
    import pandas as pd

    from echo_pipeline.datasets.templates import is_group_chat

    bob = [{"speaker": "bob", "text": "so", "is_me": False}]
    me = [{"speaker": "me", "text": "hm", "is_me": True}]
    dm = pd.DataFrame({"prompt_author": ["bob", "bob"], "context": [bob, me]})
    assert not is_group_chat(dm)
    # every pair alone has one other speaker; the channel has two
    channel = pd.DataFrame({"prompt_author": ["bob", "cy"], "context": [bob, []]})
    assert is_group_chat(channel)
    quiet = pd.DataFrame(
        {"prompt_author": ["bob"], "context": [[{"speaker": "cy", "text": "x", "is_me": False}]]}
    )
    assert is_group_chat(quiet)
    # a group chat's pair with one other speaker in it still names them, when pinned
    one = ChatPair((), "pizza?", "yes", "bob", is_group=True)
    assert conversation_messages(one)[0] == {"role": "user", "content": "bob: pizza?"}


def test_the_prompt_absorbs_other_peoples_turns_just_before_it():
    pair = ChatPair((ContextTurn("bob", "so", False),), "what now", "sleep", "bob")
    assert conversation_messages(pair) == [{"role": "user", "content": "so\nwhat now"}]


@pytest.mark.parametrize("template", ["llama2_chat", "nous_hermes", "chatml"])
@pytest.mark.parametrize("pair", [ONE_TURN, WITH_CONTEXT, GROUP], ids=["one", "context", "group"])
def test_the_inference_prompt_is_the_training_text_up_to_the_reply(template, pair):
    rendering = render(template, pair, system_prompt="S")
    assert render_inference_prompt(template, pair, system_prompt="S") == rendering.prompt_text
    assert rendering.text == rendering.prompt_text + rendering.completion_text
    assert render_training_text(template, pair, system_prompt="S").startswith(rendering.prompt_text)
    assert pair.reply in rendering.completion_text


@pytest.mark.parametrize("template", ["llama2_chat", "nous_hermes", "chatml"])
def test_bos_and_eos_are_markers_and_only_the_reply_is_a_target(template):
    rendering = render(template, WITH_CONTEXT, system_prompt="S")
    assert rendering.prompt[0].special is Special.BOS
    assert not any(s.is_target for s in rendering.prompt)
    assert all(s.is_target for s in rendering.completion)
    assert rendering.completion[-1].special is Special.EOS
    assert [s.special for s in rendering.completion[:-1]] == [None]
    literal_eos = {"llama2_chat": "</s>", "nous_hermes": "</s>", "chatml": "<|im_end|>"}[template]
    assert rendering.completion[-1].text == literal_eos
    # No literal "<s>" / "</s>" hides in plain text, where it would be tokenised as characters.
    assert not any(
        ("<s>" in s.text or "</s>" in s.text) for s in rendering.segments if s.special is None
    )


def test_a_reply_cut_short_has_no_eos():
    rendering = render("llama2_chat", ONE_TURN, end_reply=False)
    assert rendering.completion_text == " yeah, 8ish"
    assert all(s.special is None for s in rendering.completion)


def test_unknown_templates_are_named_in_the_error():
    with pytest.raises(ValueError, match="llama2_chat, nous_hermes, chatml, model_default"):
        render("alpaca", ONE_TURN)
    assert TEMPLATE_NAMES == ("llama2_chat", "nous_hermes", "chatml", "model_default")


def test_model_default_needs_the_tokenizer():
    with pytest.raises(ValueError, match="tokenizer"):
        render("model_default", ONE_TURN)


def test_model_default_on_smollm2_is_its_chatml(smollm2_tokenizer):
    for pair in (ONE_TURN, WITH_CONTEXT, GROUP):
        ours = render("chatml", pair, system_prompt="Be ana.")
        theirs = render("model_default", pair, system_prompt="Be ana.", tokenizer=smollm2_tokenizer)
        assert theirs.text == ours.text
        assert (
            theirs.completion[-1].special is Special.EOS
            and theirs.completion[-1].text == "<|im_end|>"
        )


def test_model_default_without_a_system_prompt_keeps_the_models_own(smollm2_tokenizer):
    prompt = render_inference_prompt("model_default", ONE_TURN, tokenizer=smollm2_tokenizer)
    assert prompt.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
    assert prompt.endswith("<|im_start|>assistant\n")


def test_pairs_rows_become_chat_pairs_with_arrays_and_missing_flags():
    row = {
        "context": np.array(
            [{"speaker": "Ana", "text": "hi"}, {"speaker": "bob", "text": "yo", "is_me": None}]
        ),
        "prompt": "sup",
        "reply": "nm",
        "prompt_author": "bob",
    }
    pair = ChatPair.from_record(row, me_names=["ana"])
    assert [t.is_me for t in pair.context] == [True, False]
    assert ChatPair.from_record({**row, "context": None}).context == ()


def test_the_default_system_prompt_names_me():
    assert default_system_prompt("ana") == "You are ana. Reply the way ana would in a casual chat."
    contexts = [
        [
            {"speaker": "ana", "text": "x", "is_me": True},
            {"speaker": "bob", "text": "y", "is_me": False},
        ]
    ]
    assert infer_me_name(contexts) == "ana"
    assert infer_me_name([[]]) == "me"


@pytest.mark.parametrize("template", ["llama2_chat", "nous_hermes", "chatml"])
def test_jinja_chat_template_renders_like_the_training_renderer(template, smollm2_tokenizer):
    """The chat_template saved with an adapter formats prompts exactly as training did."""
    import copy

    from echo_pipeline.datasets.templates import (
        ChatPair,
        ContextTurn,
        conversation_messages,
        jinja_chat_template,
        render_inference_prompt,
    )

    tokenizer = copy.deepcopy(smollm2_tokenizer)
    tokenizer.chat_template = jinja_chat_template(template, tokenizer)
    pair = ChatPair(
        (ContextTurn("sam", "Are you around?", False), ContextTurn("alex", "yeah", True)),
        "Want to play tonight?",
        None,
        "sam",
    )
    messages = conversation_messages(pair, "You are alex.")
    got = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    expected = render_inference_prompt(
        template, pair, system_prompt="You are alex.", tokenizer=tokenizer
    )
    # Markers: SmolLM2 adds no BOS, and its EOS is spelled <|im_end|>.
    expected = expected.replace("<s>", "").replace("</s>", tokenizer.eos_token)
    assert got == expected


# --- reply memory: examples before the conversation -------------------------------------------

EXAMPLES = (
    Example("is the cafe open?", "nope, closed mondays", "cy"),
    Example("coming to the gig?", "wouldn't miss it", "bob"),
)


@pytest.mark.parametrize("template", TEMPLATE_NAMES)
def test_examples_come_after_the_system_prompt_and_before_the_conversation(
    template, smollm2_tokenizer
):
    from dataclasses import replace

    pair = replace(WITH_CONTEXT, examples=EXAMPLES)
    prompt = render_inference_prompt(
        template, pair, system_prompt="Be ana.", tokenizer=smollm2_tokenizer
    )
    plain = render_inference_prompt(
        template, WITH_CONTEXT, system_prompt="Be ana.", tokenizer=smollm2_tokenizer
    )
    order = ["Be ana.", *[t for e in EXAMPLES for t in (e.prompt, e.reply)], "hey\nyou there?"]
    positions = [prompt.index(text) for text in order]
    assert positions == sorted(positions)
    assert prompt.endswith(plain[plain.index("hey\nyou there?") :])  # the conversation unchanged
    assert "morning!" not in prompt  # my leading turn is still dropped, not glued to an example


@pytest.mark.parametrize("template", ["llama2_chat", "nous_hermes", "chatml"])
def test_each_example_is_a_complete_earlier_exchange_in_the_templates_own_form(template):
    from dataclasses import replace

    one = render_inference_prompt(template, replace(ONE_TURN, examples=EXAMPLES[:1]))
    expected = {
        "llama2_chat": "<s>[INST] is the cafe open? [/INST] nope, closed mondays </s><s>[INST] are",
        "nous_hermes": "<s>### Instruction:\nis the cafe open?\n\n### Response:\n"
        "nope, closed mondays</s><s>### Instruction:\nare",
        "chatml": "<|im_start|>user\nis the cafe open?<|im_end|>\n<|im_start|>assistant\n"
        "nope, closed mondays<|im_end|>\n<|im_start|>user\nare",
    }[template]
    assert one.startswith(expected)


def test_in_a_group_chat_examples_name_who_asked():
    from dataclasses import replace

    messages = conversation_messages(replace(GROUP, examples=EXAMPLES))
    assert messages[0] == {"role": "user", "content": "cy: is the cafe open?"}
    assert messages[1] == {"role": "assistant", "content": "nope, closed mondays"}
