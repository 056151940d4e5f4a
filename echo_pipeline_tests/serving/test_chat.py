"""Chat reads the adapter's reply memory back: k and the index its dataset was rendered with."""

from __future__ import annotations

import dataclasses

import pyarrow.parquet as pq
import pytest

from echo_pipeline.datasets.prompt import PromptSpec
from echo_pipeline.datasets.tokenization import tokenize_inference_prompt
from echo_pipeline.infra.records import (
    AdapterMetadata,
    BaseModelRecord,
    DatasetManifest,
    DatasetRecord,
)
from echo_pipeline.pairs.memory import build_index
from echo_pipeline.serving.chat import ChatSession, adapter_memory, adapter_prompt
from echo_pipeline_tests.pairs.test_memory import bag_of_words, pairs_frame

SYSTEM = "You are ana."


def trained_with(tmp_path, k: int, *, dataset_digest: str = "d1g3st", group_chat: bool = False):
    """An adapter's metadata, and its dataset's manifest (k, the index) where layout puts it."""
    index = build_index(pairs_frame(), bag_of_words)
    index_path = tmp_path / "reply_memory.parquet"
    pq.write_table(index.to_table(), index_path)
    dataset = tmp_path / "template_dataset" / "chatml.parquet"
    manifest = DatasetManifest(
        "chatml",
        SYSTEM,
        2,
        ("1",),
        ("ana",),
        512,
        "smollm2",
        "fp",
        memory_k=k,
        memory_index=str(index_path) if k else "",
        memory_digest=index.digest() if k else "",
        dataset_digest=dataset_digest,
        group_chat=group_chat,
    )
    manifest.write(tmp_path / "template_dataset" / "chatml.manifest.json")
    meta = AdapterMetadata(
        "chatml",
        BaseModelRecord("smollm2"),
        system_prompt=SYSTEM,
        dataset=DatasetRecord(str(dataset), "d1g3st"),
    )
    return meta, index_path


def test_chat_reads_k_back_and_prompts_with_the_examples(tmp_path, smollm2_tokenizer):
    meta, _ = trained_with(tmp_path, 2)
    memory = adapter_memory(tmp_path / "adapter", meta, encode=bag_of_words)
    assert memory is not None and memory.k == 2
    session = ChatSession(None, smollm2_tokenizer, PromptSpec("chatml", SYSTEM), memory=memory)
    shown = session.examples("pizza for dinner tonight?")
    # p2 and p3 both hold all three words (a tie: p2, the earlier, is nearest, so last)
    assert [e.reply for e in shown] == ["sure thing", "always"]
    ids = session.prompt_ids("pizza for dinner tonight?")
    assert ids == tokenize_inference_prompt(
        "chatml",
        smollm2_tokenizer,
        [],
        "pizza for dinner tonight?",
        SYSTEM,
        prompt_author="friend",
        examples=shown,
    )
    assert "sure thing" in smollm2_tokenizer.decode(ids)


def test_an_adapter_of_a_group_chat_names_the_person_typing(tmp_path, smollm2_tokenizer):
    meta, _ = trained_with(tmp_path, 0, group_chat=True)
    spec = adapter_prompt(tmp_path, meta)
    assert spec.group_chat is True and spec.is_group is True
    session = ChatSession(None, smollm2_tokenizer, spec)
    assert "friend: anyone up?" in smollm2_tokenizer.decode(session.prompt_ids("anyone up?"))
    meta, _ = trained_with(tmp_path, 0)
    assert adapter_prompt(tmp_path, meta).is_group is None  # each prompt's speakers decide


def test_an_adapter_without_memory_or_a_manifest_gets_none(tmp_path):
    meta, _ = trained_with(tmp_path, 0)
    assert adapter_memory(tmp_path, meta, encode=bag_of_words) is None
    elsewhere = dataclasses.replace(meta, dataset=DatasetRecord(str(tmp_path / "gone.parquet")))
    assert adapter_memory(tmp_path, elsewhere, encode=bag_of_words) is None


def test_a_re_rendered_dataset_or_a_changed_index_is_an_error_not_a_guess(tmp_path):
    meta, index_path = trained_with(tmp_path, 2, dataset_digest="0ther")
    with pytest.raises(ValueError, match="re-rendered since it was trained"):
        adapter_memory(tmp_path, meta, encode=bag_of_words)
    meta, index_path = trained_with(tmp_path, 2)
    changed = build_index(pairs_frame().replace({"always": "never"}), bag_of_words)
    pq.write_table(changed.to_table(), index_path)
    with pytest.raises(ValueError, match="reply memory changed"):
        adapter_memory(tmp_path, meta, encode=bag_of_words)
