"""One prompt specification: what a dataset is rendered with is what evaluation, chat and the
web page prompt the adapter with, field for field, with every field away from its default."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from types import SimpleNamespace

import pytest

from echo_pipeline.datasets.prompt import DEFAULT_CONTEXT_TURNS, PromptSpec
from echo_pipeline.datasets.render import dataset_manifest, render_dataset
from echo_pipeline.datasets.tokenization import DEFAULT_MAX_TOKENS
from echo_pipeline.evaluation.evaluate import _inference_prompts
from echo_pipeline.exports import read_exports
from echo_pipeline.infra.paths import sample_export_dir
from echo_pipeline.infra.records import (
    AdapterMetadata,
    BaseModelRecord,
    DatasetManifest,
    DatasetRecord,
)
from echo_pipeline.operations.web.models import ModelPool, Voice
from echo_pipeline.pairs import conversations
from echo_pipeline.pairs.memory import ReplyMemory, build_index
from echo_pipeline.serving.chat import ChatSession, adapter_prompt
from echo_pipeline_tests.datasets.test_dataset_checks import trigram_encoder

CONTEXT_TURNS = 1  # the pairing's default is 3
#: An earlier turn no pair of CONTEXT_TURNS keeps: whoever keeps it used the wrong default.
STALE_TURN = {"speaker": "bob", "text": "an old turn nobody should see", "is_me": False}


@pytest.fixture(scope="module")
def short_context_pairs():
    messages = read_exports([sample_export_dir()]).to_pandas()
    config = conversations.PairingConfig(me=("alex",), context_turns=CONTEXT_TURNS)
    return conversations.build_pairs(messages, config)[0]


def test_the_spec_of_the_pairs_records_what_the_pairing_kept(short_context_pairs):
    spec = PromptSpec.for_pairs("chatml", short_context_pairs)
    assert spec.context_turns == CONTEXT_TURNS and spec.me_names[0] == "alex"
    assert spec.system_prompt.startswith("You are alex.")  # the one default, naming me
    assert PromptSpec.for_pairs("chatml", short_context_pairs, system_prompt="").system_prompt == ""
    assert PromptSpec.from_dict(spec.to_dict()) == spec
    with pytest.raises(ValueError, match="unknown template"):
        PromptSpec("alpaca")


def test_training_evaluation_chat_and_the_page_build_the_same_prompt(
    short_context_pairs, smollm2_tokenizer, tmp_path
):
    """Every field off its default; the adapter's spec comes back through the manifest and
    echo_metadata.json; each reader gets a longer history than the pairs kept."""
    tokenizer = smollm2_tokenizer
    base = PromptSpec.for_pairs("nous_hermes", short_context_pairs)
    spec = dataclasses.replace(
        base,
        system_prompt="Answer as alex does: short.",
        max_tokens=100,
        group_chat=True,
        memory_k=1,
    )
    defaults = PromptSpec("nous_hermes")
    for field in dataclasses.fields(PromptSpec):
        if field.name != "template":
            assert getattr(spec, field.name) != getattr(defaults, field.name), field.name
    assert (defaults.context_turns, defaults.max_tokens) == (DEFAULT_CONTEXT_TURNS, 512)
    pairs = short_context_pairs.to_pandas()
    memory = ReplyMemory(build_index(pairs, trigram_encoder), trigram_encoder, spec.memory_k)
    rendered = render_dataset(short_context_pairs, spec, tokenizer, memory)
    assert rendered.checks.passed, rendered.checks.failed
    assert rendered.frame["truncated"].any()  # the bound bites

    # the spec travels: dataset manifest -> the adapter's echo_metadata.json -> readers
    manifest_path = tmp_path / "chatml.manifest.json"
    dataset_manifest(
        rendered,
        spec,
        tokenizer,
        me_ids=("1",),
        base_model=SimpleNamespace(source="smollm2", fingerprint="f"),
        memory=memory,
        memory_path=tmp_path / "memory.parquet",
    ).write(manifest_path)
    recorded = PromptSpec.from_manifest(DatasetManifest.load(manifest_path))
    assert recorded == spec
    meta = AdapterMetadata(
        "nous_hermes",
        BaseModelRecord("smollm2"),
        prompt=recorded.to_dict(),
        dataset=DatasetRecord(str(tmp_path / "gone.parquet")),
    )
    meta.write(tmp_path)
    adapter_spec = adapter_prompt(tmp_path, AdapterMetadata.load(tmp_path))
    assert adapter_spec == spec

    # held-out rows: their sessions are not in the (train-only) memory, so chat, which cannot
    # name a session to leave out, retrieves what training did
    rows = pairs[(pairs["split"] != "train") & ~rendered.frame["truncated"].to_numpy()]
    rows = rows[[len(c) > 0 for c in rows["context"]]].head(6).copy()
    assert len(rows) >= 3
    position = {pair_id: i for i, pair_id in enumerate(rendered.frame["pair_id"])}
    trained = [
        rendered.examples[position[p]].input_ids[: rendered.examples[position[p]].prompt_len]
        for p in rows["pair_id"]
    ]
    assert any(len(rendered.shown[position[p]]) for p in rows["pair_id"])
    longer = [[STALE_TURN, *context] for context in rows["context"]]

    rows["context"] = longer
    session = SimpleNamespace(prompt=adapter_spec, tokenizer=tokenizer, memory=memory)
    assert _inference_prompts(session, rows) == trained

    chat = ChatSession(None, tokenizer, adapter_spec, memory=memory)
    pool = ModelPool()
    voice = Voice(
        id="demo|nous_hermes",
        adapter_dir=Path(tmp_path),
        experiment="demo",
        prompt=adapter_spec,
        base_source="smollm2",
        base_fingerprint="f",
        decoding={},
        verdict=None,
        reply_loss=None,
        trained_at=0.0,
    )
    pool._memories[voice.adapter] = memory
    for row, context, expected in zip(rows.itertuples(), longer, trained, strict=True):
        chat.history, chat.partner = list(context), row.prompt_author
        assert chat.prompt_ids(row.prompt) == expected
        page = pool.prompt_ids(voice, tokenizer, context, row.prompt, row.prompt_author)
        assert page == expected


def test_a_spec_field_changed_after_training_changes_the_prompt(
    short_context_pairs, smollm2_tokenizer
):
    """The readers above agree because they read the spec, not because the fields are inert:
    each field, changed, changes some prompt."""
    spec = PromptSpec.for_pairs("chatml", short_context_pairs, max_tokens=DEFAULT_MAX_TOKENS)
    rows = short_context_pairs.to_pandas()
    rows = rows[[len(c) > 0 for c in rows["context"]]].head(20)

    def prompts(s):
        return [
            s.prompt_ids(
                smollm2_tokenizer,
                [STALE_TURN, *r.context],
                f"{r.prompt} " * 8,
                prompt_author=r.prompt_author,
            )
            for r in rows.itertuples()
        ]

    before = prompts(spec)
    longest = max(len(ids) for ids in before)
    for change in (
        {"system_prompt": "other"},
        {"context_turns": CONTEXT_TURNS + 1},
        {"max_tokens": longest - 2},  # the longest prompt loses its start
        {"group_chat": not spec.group_chat},
    ):
        assert prompts(dataclasses.replace(spec, **change)) != before, change
