"""Token ids and labels on the real SmolLM2 tokenizer (no weights are loaded here)."""

from __future__ import annotations

import itertools
import json
from dataclasses import replace
from datetime import UTC, datetime

import pandas as pd
import pyarrow as pa
import pytest

from echo_pipeline.datasets.templates import TEMPLATE_NAMES, ChatPair, ContextTurn, render
from echo_pipeline.datasets.tokenization import (
    IGNORE_INDEX,
    build_template_dataset,
    format_labels_debug,
    stop_token_id,
    tokenize_inference_prompt,
    tokenize_pair,
    write_jsonl,
)
from echo_pipeline.infra import schemas
from echo_pipeline.pairs.memory import Example

SYSTEM = "You are ana. Reply the way ana would in a casual chat."
PAIRS = {
    "one": ChatPair((), "are you coming tonight?", "yeah, 8ish 🍕", "bob"),
    "context": ChatPair(
        (
            ContextTurn("bob", "hey", False),
            ContextTurn("ana", "yo!", True),
            ContextTurn("bob", "so", False),
        ),
        "are you coming tonight?",
        "yeah, 8ish",
        "bob",
    ),
    "group": ChatPair(
        (
            ContextTurn("bob", "pizza?", False),
            ContextTurn("cy", "sushi", False),
            ContextTurn("ana", "both", True),
        ),
        "ok who's ordering",
        "me lol\nunless cy wants to",
        "cy",
    ),
}
#: What the labelled tokens before the EOS spell, per template (llama2 pads the reply with spaces).
REPLY_TEXT = {
    "llama2_chat": " {} ",
    "nous_hermes": "{}",
    "chatml": "{}",
    "model_default": "{}",
}


@pytest.fixture(scope="module")
def tok(smollm2_tokenizer):
    return smollm2_tokenizer


@pytest.fixture(scope="module")
def bos_tok(base_model):
    """SmolLM2's tokenizer made to prepend a BOS (``<|endoftext|>``), like Llama's tokenizers do."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(
        base_model.path, add_bos_token=True, bos_token="<|endoftext|>"
    )
    assert tokenizer("a")["input_ids"][0] == tokenizer.bos_token_id == 0
    return tokenizer


def labelled(example):
    return [label for label in example.labels if label != IGNORE_INDEX]


@pytest.mark.parametrize("template", TEMPLATE_NAMES)
@pytest.mark.parametrize("name", PAIRS)
def test_the_labels_are_exactly_the_reply_and_its_eos(tok, template, name):
    pair = PAIRS[name]
    example = tokenize_pair(template, tok, pair, system_prompt=SYSTEM)
    ids = labelled(example)
    assert ids[-1] == tok.eos_token_id == stop_token_id(template, tok) == 2  # <|im_end|>
    assert tok.decode(ids[:-1]) == REPLY_TEXT[template].format(pair.reply)
    # One contiguous labelled block at the end, starting right after the prompt.
    assert example.labels[: example.prompt_len] == [IGNORE_INDEX] * example.prompt_len
    assert example.labels[example.prompt_len :] == example.input_ids[example.prompt_len :]
    assert not example.truncated


@pytest.mark.parametrize("template", TEMPLATE_NAMES)
@pytest.mark.parametrize("name", PAIRS)
@pytest.mark.parametrize("which", ["smollm2", "bos_adding"])
def test_the_inference_prompt_is_the_training_prefix_token_for_token(
    request, template, name, which
):
    tokenizer = request.getfixturevalue("tok" if which == "smollm2" else "bos_tok")
    pair = PAIRS[name]
    example = tokenize_pair(template, tokenizer, pair, system_prompt=SYSTEM)
    prompt_ids = tokenize_inference_prompt(
        template, tokenizer, pair.context, pair.prompt, SYSTEM, prompt_author=pair.prompt_author
    )
    assert prompt_ids == example.input_ids[: example.prompt_len]


@pytest.mark.parametrize("template", ["llama2_chat", "nous_hermes"])
def test_on_smollm2_the_seed_templates_get_no_bos_and_no_literal_tags(tok, template):
    example = tokenize_pair(template, tok, PAIRS["context"], system_prompt=SYSTEM)
    assert tok.bos_token_id not in example.input_ids  # <|im_start|> is not a BOS; none is added
    text = tok.decode(example.input_ids)
    assert "<s>" not in text and "</s>" not in text
    assert text.count("<|im_end|>") == 2  # each exchange ends with the model's EOS id


@pytest.mark.parametrize("template", ["chatml", "model_default"])
def test_on_smollm2_chatml_starts_with_a_single_im_start(tok, template):
    example = tokenize_pair(template, tok, PAIRS["one"], system_prompt=SYSTEM)
    assert (
        example.input_ids[:3] == tok("<|im_start|>system\n", add_special_tokens=False)["input_ids"]
    )
    assert example.input_ids[1] != tok.bos_token_id


def test_chatml_and_model_default_give_the_same_ids_on_smollm2(tok):
    for pair in PAIRS.values():
        assert tokenize_pair("chatml", tok, pair, system_prompt=SYSTEM) == tokenize_pair(
            "model_default", tok, pair, system_prompt=SYSTEM
        )


@pytest.mark.parametrize("template", TEMPLATE_NAMES)
def test_a_bos_adding_tokenizer_gets_exactly_one_bos_at_the_start(bos_tok, template):
    example = tokenize_pair(template, bos_tok, PAIRS["one"], system_prompt=SYSTEM)
    assert example.input_ids[0] == bos_tok.bos_token_id
    assert example.input_ids.count(bos_tok.bos_token_id) == 1


def test_model_default_whose_template_writes_the_bos_still_has_one(base_model):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(
        base_model.path, add_bos_token=True, bos_token="<|endoftext|>"
    )
    tokenizer.chat_template = "{{ bos_token }}" + tokenizer.chat_template
    example = tokenize_pair("model_default", tokenizer, PAIRS["one"], system_prompt=SYSTEM)
    assert example.input_ids[:2] == [0, 1]  # BOS by id, then <|im_start|>
    assert example.input_ids.count(0) == 1
    rendering = render("model_default", PAIRS["one"], system_prompt=SYSTEM, tokenizer=tokenizer)
    assert rendering.text.startswith("<|endoftext|><|im_start|>system")  # the literal keeps it


def test_llama2_multi_turn_opens_each_exchange_with_bos_never_two_in_a_row(bos_tok):
    ids = tokenize_pair("llama2_chat", bos_tok, PAIRS["context"], system_prompt=SYSTEM).input_ids
    bos = bos_tok.bos_token_id
    assert ids[0] == bos and ids.count(bos) == 2  # Meta's convention: <s> per exchange
    assert all(not (a == b == bos) for a, b in itertools.pairwise(ids))


def long_text(words: int, start: int = 0) -> str:
    return " ".join(f"w{i}" for i in range(start, start + words))


def test_truncation_drops_the_oldest_context_first_and_keeps_the_reply(tok):
    context = (ContextTurn("bob", long_text(300), False), ContextTurn("bob", "short one", False))
    pair = ChatPair(context, "and?", "fine.", "bob")
    full = tokenize_pair("chatml", tok, pair, system_prompt=SYSTEM, max_tokens=None)
    cut = tokenize_pair("chatml", tok, pair, system_prompt=SYSTEM, max_tokens=100)
    assert len(full.input_ids) > 100 >= len(cut.input_ids)
    assert cut.truncated and not full.truncated
    assert tok.decode(labelled(cut)) == "fine.<|im_end|>"
    prompt = tok.decode(cut.input_ids[: cut.prompt_len])
    assert "short one\nand?" in prompt and "w0" not in prompt


def test_truncation_then_keeps_the_end_of_the_prompt(tok):
    pair = ChatPair((), long_text(400), "ok!", "bob")
    cut = tokenize_pair("llama2_chat", tok, pair, system_prompt=SYSTEM, max_tokens=120)
    assert cut.truncated and len(cut.input_ids) <= 120
    assert tok.decode(labelled(cut)) == " ok! <|im_end|>"
    prompt = tok.decode(cut.input_ids[: cut.prompt_len])
    assert prompt.startswith("[INST] <<SYS>>") and prompt.endswith("w399 [/INST]")
    assert " w0 " not in prompt


def test_a_reply_longer_than_the_budget_keeps_its_beginning_without_eos(tok):
    pair = ChatPair(
        (ContextTurn("bob", "x", False),), long_text(100), long_text(400, start=1000), "bob"
    )
    cut = tokenize_pair("nous_hermes", tok, pair, system_prompt=SYSTEM, max_tokens=200)
    assert cut.truncated and len(cut.input_ids) <= 200
    reply = tok.decode(labelled(cut))
    assert reply.startswith("w1000 w1001") and tok.eos_token_id not in labelled(cut)
    assert cut.prompt_len >= 32  # some of the prompt's end survives


def test_a_budget_too_small_for_the_template_is_an_error(tok):
    with pytest.raises(ValueError, match="too small"):
        tokenize_pair("llama2_chat", tok, PAIRS["one"], system_prompt=SYSTEM * 5, max_tokens=20)


def pairs_frame(rows: list[dict]):
    stamp = datetime(2024, 1, 1, tzinfo=UTC)
    defaults = {
        "session_id": "s",
        "channel_id": "c",
        "prompt_author_id": "2",
        "reply_author_id": "1",
        "prompt_session_id": "s",
        "prompt_timestamp": stamp,
        "reply_timestamp": stamp,
        "is_explicit_reply": False,
    }
    table = pa.Table.from_pylist(
        [defaults | row for row in rows], schema=schemas.CONVERSATION_PAIRS
    )
    return table.to_pandas()


def pair_row(pair_id: str, pair: ChatPair, split: str = "train") -> dict:
    context = [{"speaker": t.speaker, "text": t.text, "is_me": t.is_me} for t in pair.context]
    return {
        "pair_id": pair_id,
        "split": split,
        "context": context,
        "prompt": pair.prompt,
        "prompt_author": pair.prompt_author,
        "reply": pair.reply,
    }


@pytest.fixture(scope="module")
def frame():
    rows = [
        pair_row(name, pair, split)
        for (name, pair), split in zip(PAIRS.items(), ["train", "val", "test"], strict=True)
    ]
    rows.append(pair_row("long", ChatPair((), long_text(500), "short reply", "bob")))
    return pairs_frame(rows)


@pytest.mark.parametrize("template", TEMPLATE_NAMES)
def test_the_template_dataset_matches_its_schema_and_tokenize_pair(tok, frame, template):
    df, examples = build_template_dataset(frame, template, tok, me_name="ana", max_tokens=256)
    assert list(df.columns) == schemas.TEMPLATE_DATASET.names
    table = pa.Table.from_pandas(df, schema=schemas.TEMPLATE_DATASET, preserve_index=False)
    assert table.schema.equals(schemas.TEMPLATE_DATASET)
    assert str(df["prompt_tokens"].dtype) == "int32" and str(df["truncated"].dtype) == "bool"
    assert df["pair_id"].tolist() == ["one", "context", "group", "long"]
    assert df["truncated"].tolist() == [False, False, False, True]
    for row, example, record in zip(
        df.itertuples(), examples, frame.to_dict("records"), strict=True
    ):
        assert example == tokenize_pair(template, tok, record, system_prompt=SYSTEM, max_tokens=256)
        assert row.prompt_tokens == example.prompt_len
        assert row.prompt_tokens + row.completion_tokens == len(example.input_ids) <= 256
        assert row.text == row.prompt_text + row.completion_text
        assert record["reply"] in row.completion_text


def test_the_literal_text_column_keeps_the_seed_spelling(tok, frame):
    df, _ = build_template_dataset(frame, "llama2_chat", tok, system_prompt="")
    assert df.loc[0, "text"] == "<s>[INST] are you coming tonight? [/INST] yeah, 8ish 🍕 </s>"
    assert df.loc[0, "completion_text"] == " yeah, 8ish 🍕 </s>"


def test_jsonl_has_the_seed_shape_one_file_per_split(tok, frame, tmp_path):
    df, _ = build_template_dataset(frame, "nous_hermes", tok, me_name="ana")
    paths = {split: tmp_path / f"{split}.jsonl" for split in ("train", "val", "test")}
    assert write_jsonl(df, paths) == {"train": 2, "val": 1, "test": 1}
    lines = [json.loads(line) for line in paths["train"].read_text(encoding="utf-8").splitlines()]
    assert [list(line) for line in lines] == [["inputs"], ["inputs"]]
    assert lines[0]["inputs"] == df.loc[0, "text"]
    assert lines[0]["inputs"].startswith("<s>You are ana.") and lines[0]["inputs"].endswith(
        "🍕</s>"
    )
    with pytest.raises(ValueError, match="split"):
        write_jsonl(df, {"train": paths["train"]})


def test_the_labels_debug_table_shows_every_token_and_its_label(tok):
    example = tokenize_pair("chatml", tok, PAIRS["one"], system_prompt=SYSTEM)
    table = format_labels_debug(tok, example, max_rows=None)
    lines = table.splitlines()
    assert lines[0].startswith(f"{len(example.input_ids)} tokens: {example.prompt_len} prompt")
    assert sum("-100 masked" in line for line in lines) == example.prompt_len
    assert (
        "'<|im_end|>'  [special]" in lines[-1]
        and lines[-1].split()[1] == lines[-1].split()[2] == "2"
    )
    assert any("reply: labelled from here" in line for line in lines)
    short = format_labels_debug(tok, example, max_rows=10).splitlines()
    assert sum(line.split()[0].isdigit() for line in short[2:]) == 10
    assert "(7 rows not shown)" in "\n".join(short) or "rows not shown" in "\n".join(short)


def test_the_batched_encoder_gives_what_the_tokenizer_gives(tok):
    from echo_pipeline.datasets.tokenization import _Encoder

    texts = [
        "plain words",
        " leading space",
        "emoji 🍕🍕 and é",
        "literal <s> and </s>",
        "a\n\nb",
        "",
    ]
    encoder = _Encoder(tok)
    encoder.prefetch(texts)
    for text in texts:
        assert encoder.text_ids(text) == tok(text, add_special_tokens=False)["input_ids"]


def test_no_pairs_give_an_empty_well_typed_dataset(tok):
    df, examples = build_template_dataset(pairs_frame([]), "model_default", tok)
    assert examples == [] and len(df) == 0
    assert (
        pa.Table.from_pandas(df, schema=schemas.TEMPLATE_DATASET, preserve_index=False).num_rows
        == 0
    )


# --- reply memory -------------------------------------------------------------------------------

EXAMPLES = (
    Example("is the cafe open?", "nope, closed mondays", "cy"),
    Example("coming to the gig?", "wouldn't miss it 🎸", "bob"),
)


@pytest.mark.parametrize("template", TEMPLATE_NAMES)
@pytest.mark.parametrize("which", ["smollm2", "bos_adding"])
def test_with_memory_the_inference_prompt_is_the_training_prefix_token_for_token(
    request, template, which
):
    tokenizer = request.getfixturevalue("tok" if which == "smollm2" else "bos_tok")
    for pair in (PAIRS["context"], PAIRS["group"]):
        with_examples = replace(pair, examples=EXAMPLES)
        example = tokenize_pair(template, tokenizer, with_examples, system_prompt=SYSTEM)
        prompt_ids = tokenize_inference_prompt(
            template,
            tokenizer,
            pair.context,
            pair.prompt,
            SYSTEM,
            prompt_author=pair.prompt_author,
            examples=EXAMPLES,
        )
        assert prompt_ids == example.input_ids[: example.prompt_len]
        assert labelled(example) == labelled(
            tokenize_pair(template, tokenizer, pair, system_prompt=SYSTEM)
        )
        assert "closed mondays" in tokenizer.decode(prompt_ids)


def test_truncation_drops_the_least_similar_example_before_any_context(tok):
    examples = (Example("first?", long_text(60)), Example("second?", "the nearest one"))
    pair = ChatPair(
        (ContextTurn("bob", "context stays", False),), "and?", "fine.", "bob", None, examples
    )
    full = tokenize_pair("chatml", tok, pair, system_prompt=SYSTEM, max_tokens=None)
    budget = len(full.input_ids) - 10
    cut = tokenize_pair("chatml", tok, pair, system_prompt=SYSTEM, max_tokens=budget)
    prompt = tok.decode(cut.input_ids[: cut.prompt_len])
    assert cut.truncated and len(cut.input_ids) <= budget
    assert "w0" not in prompt and "the nearest one" in prompt and "context stays" in prompt


def test_the_dataset_renders_each_rows_examples(tok):
    frame = pd.DataFrame(
        {
            "pair_id": ["a", "b"],
            "split": ["train", "test"],
            "context": [[], []],
            "prompt": ["hi", "yo"],
            "reply": ["hey", "sup"],
            "prompt_author": ["bob", "bob"],
        }
    )
    table, examples = build_template_dataset(
        frame, "chatml", tok, system_prompt=SYSTEM, examples=[EXAMPLES[:1], ()]
    )
    assert "closed mondays" in table["prompt_text"][0] and "closed" not in table["prompt_text"][1]
    assert table["text"][0].startswith(table["prompt_text"][0])
    assert tok.decode(examples[0].input_ids[: examples[0].prompt_len]) == table["prompt_text"][0]
    with pytest.raises(ValueError, match="1 rows of examples for 2 pairs"):
        build_template_dataset(frame, "chatml", tok, system_prompt=SYSTEM, examples=[()])
