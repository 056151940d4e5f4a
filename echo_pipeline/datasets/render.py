"""One template's dataset made from the pairs: rendered by its :class:`PromptSpec`, tokenised,
checked against the prompts inference will build, and described by its manifest. Everything
the ``template_dataset`` asset does except storing and reporting."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from echo_pipeline.datasets.checks import DatasetChecks, check_template_dataset
from echo_pipeline.datasets.prompt import PromptSpec
from echo_pipeline.datasets.tokenization import (
    TokenizedExample,
    build_template_dataset,
    stop_token_id,
)
from echo_pipeline.infra.records import DatasetManifest
from echo_pipeline.infra.schemas import TOKEN_COLUMNS

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa


@dataclass
class RenderedDataset:
    """A template dataset before it is stored: the table written (``TEMPLATE_DATASET`` columns
    and the token columns), its frame and examples row for row, each row's memory examples
    (None without memory) and the checks' outcomes."""

    table: pa.Table
    frame: pd.DataFrame
    examples: list[TokenizedExample]
    shown: list[tuple] | None
    checks: DatasetChecks

    def digest(self) -> str:
        return dataset_digest(self.table.select(["pair_id", "split", *TOKEN_COLUMNS]).to_pandas())


def dataset_digest(frame: pd.DataFrame) -> str:
    """Content digest of the tokens and split of every row: what the adapter actually saw."""
    import pandas as pd

    digest = hashlib.sha256()
    for pair_id, split, ids, labels in zip(
        frame["pair_id"], frame["split"], frame["input_ids"], frame["labels"], strict=True
    ):
        digest.update(f"{pair_id}|{split}|".encode())
        digest.update(bytes(memoryview(pd.array(ids, dtype="int32").to_numpy()).cast("B")))
        digest.update(bytes(memoryview(pd.array(labels, dtype="int32").to_numpy()).cast("B")))
    return digest.hexdigest()[:16]


def render_dataset(
    pairs: pa.Table, spec: PromptSpec, tokenizer: Any, memory: Any = None
) -> RenderedDataset:
    """Every pair rendered and tokenised as ``spec`` says, with ``memory`` (a
    :class:`~echo_pipeline.pairs.memory.ReplyMemory` of ``spec.memory_k``) retrieving each
    row's examples from other sessions; then the checks, with a fresh memory cache so each
    sampled prompt is embedded again, alone, as chat embeds it."""
    import pyarrow as pa

    from echo_pipeline.pairs.memory import ReplyMemory

    frame_in = pairs.to_pandas()
    shown = (
        memory.examples_for(
            frame_in["prompt"].astype(str).tolist(), frame_in["session_id"].astype(str).tolist()
        )
        if memory is not None
        else None
    )
    frame, examples = build_template_dataset(
        frame_in,
        spec.template,
        tokenizer,
        me_names=spec.me_names,
        system_prompt=spec.system_prompt,
        max_tokens=spec.max_tokens,
        examples=shown,
        is_group=spec.is_group,
    )
    table = pa.Table.from_pandas(frame, preserve_index=False)
    for column, values in zip(
        TOKEN_COLUMNS, ([e.input_ids for e in examples], [e.labels for e in examples]), strict=True
    ):
        table = table.append_column(
            pa.field(column, pa.list_(pa.int32())), pa.array(values, pa.list_(pa.int32()))
        )
    checks = check_template_dataset(
        spec,
        tokenizer,
        frame_in,
        examples,
        memory=None if memory is None else ReplyMemory(memory.index, memory.encode, memory.k),
    )
    return RenderedDataset(table, frame, examples, shown, checks)


def dataset_manifest(
    rendered: RenderedDataset,
    spec: PromptSpec,
    tokenizer: Any,
    *,
    me_ids: tuple[str, ...],
    base_model: Any,
    memory: Any = None,
    memory_path: str | Path = "",
) -> DatasetManifest:
    """The manifest beside the dataset: its prompt spec, EOS id, who "me" is, the base model
    (a :class:`~echo_pipeline.training.base_model.ResolvedBaseModel`) and the reply memory."""
    return DatasetManifest(
        template=spec.template,
        system_prompt=spec.system_prompt,
        eos_id=int(stop_token_id(spec.template, tokenizer)),
        me_ids=tuple(me_ids),
        me_names=spec.me_names,
        max_tokens=spec.max_tokens,
        base_model=base_model.source,
        base_model_fingerprint=base_model.fingerprint,
        memory_k=spec.memory_k,
        memory_index=str(memory_path) if memory is not None else "",
        memory_digest=memory.index.digest() if memory is not None else "",
        dataset_digest=rendered.digest(),
        group_chat=spec.group_chat,
        context_turns=spec.context_turns,
    )
