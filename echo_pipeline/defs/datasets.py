"""Datasets stage: one tokenised, label-masked dataset per prompt template."""

import dagster as dg
import numpy as np
import pyarrow as pa
from pydantic import Field

from echo_pipeline.datasets.checks import check_template_dataset, example_lengths
from echo_pipeline.datasets.tokenization import DEFAULT_MAX_TOKENS
from echo_pipeline.defs.check_results import asset_check_results
from echo_pipeline.defs.conditions import DATASET_AUTOMATION
from echo_pipeline.defs.io_manager import ParquetIOManager
from echo_pipeline.defs.partitions import template_partitions
from echo_pipeline.defs.provenance import (
    CODE_VERSIONS,
    data_version,
    dataset_provenance,
    provenance_metadata,
)
from echo_pipeline.defs.resources import BaseModelResource
from echo_pipeline.infra.schemas import TOKEN_COLUMNS

DATASETS = "datasets"
TOKEN_FIELDS = [
    pa.field("input_ids", pa.list_(pa.int32())),
    pa.field("labels", pa.list_(pa.int32())),
]
#: Reply-memory examples per prompt unless the config says otherwise: none, so a dataset
#: never waits for the index unless asked to.
DEFAULT_MEMORY_K = 0
#: What ``run --export`` (the ``echo`` recipe's path) should ask for. Base SmolLM2, Amulius
#: risc-v, 40 held-out pairs, chatml: reply loss 4.505 at k = 0, 4.394 at k = 2 (-0.111, 95 %
#: paired interval -0.152..-0.074), 4.385 at 3, 4.378 at 4; k = 2 has most of the gain for
#: half the extra prompt tokens (268 vs 144 mean; 368 and 15 of 40 cut at k = 4).
ECHO_MEMORY_K = 2


class DatasetConfig(dg.Config):
    """How pairs are written out for one template."""

    system_prompt: str | None = Field(
        default=None,
        description="System prompt for templates that have one. Empty string: none. "
        "Unset: 'You are <me>. Reply the way <me> would in a casual chat.'",
    )
    max_tokens: int = Field(
        default=DEFAULT_MAX_TOKENS,
        ge=32,
        le=32768,
        description="Longest example in tokens; longer ones lose their memory examples first, "
        "then their oldest context, then the prompt's start.",
    )
    memory_k: int = Field(
        default=DEFAULT_MEMORY_K,
        ge=0,
        le=8,
        description="How many of my most similar past train exchanges (reply_memory) go before "
        "each conversation as examples of how I answer; never the pair's own session. 0: none. "
        "Chat, evaluation and the MLflow model read it back from the dataset manifest.",
    )


@dg.asset(
    group_name=DATASETS,
    kinds={"transformers", "parquet"},
    partitions_def=template_partitions,
    deps=["reply_memory"],  # read only when memory_k > 0, so k = 0 never waits for it
    code_version=CODE_VERSIONS["template_dataset"],
    automation_condition=DATASET_AUTOMATION,
    check_specs=[
        dg.AssetCheckSpec(
            "template_parity",
            asset="template_dataset",
            description="The inference prompt equals the training prompt token for token.",
        ),
        dg.AssetCheckSpec(
            "eos_labelled",
            asset="template_dataset",
            description="Every example's last labelled token is the template's EOS, and only the reply is labelled.",
        ),
        dg.AssetCheckSpec(
            "single_bos",
            asset="template_dataset",
            description="No example starts with two BOS tokens.",
        ),
        dg.AssetCheckSpec(
            "token_lengths",
            asset="template_dataset",
            description="Every example fits the configured maximum; reports how many were truncated.",
        ),
    ],
    description="Pairs rendered in one prompt template and tokenised, loss on the reply and its EOS only.",
)
def template_dataset(
    context: dg.AssetExecutionContext,
    config: DatasetConfig,
    base_model: BaseModelResource,
    io_manager: dg.ResourceParam[ParquetIOManager],
    conversation_pairs: pa.Table,
):
    """Per-template training data, plus JSONL in the seed's {"inputs": ...} shape for hosted tuning."""
    from echo_pipeline.datasets.templates import default_system_prompt, is_group_chat
    from echo_pipeline.datasets.tokenization import (
        build_template_dataset,
        stop_token_id,
        write_jsonl,
    )
    from echo_pipeline.infra.records import DatasetManifest
    from echo_pipeline.pairs.conversations import pairs_identity
    from echo_pipeline.pairs.memory import MemoryIndex, ReplyMemory, load_encoder
    from echo_pipeline.training.adapters import dataset_digest
    from echo_pipeline.training.base_model import load_tokenizer

    template = context.partition_key
    layout = io_manager.layout()
    resolved = base_model.resolve()
    tokenizer = load_tokenizer(resolved)
    pairs = conversation_pairs.to_pandas()
    me = pairs_identity(conversation_pairs)
    system_prompt = config.system_prompt
    if system_prompt is None:
        system_prompt = default_system_prompt(next(iter(me.names), ""))
    memory, memory_path, shown = None, layout.asset_path(["reply_memory"]), None
    if config.memory_k > 0:
        try:
            index = MemoryIndex.load(memory_path)
        except (OSError, ValueError) as error:
            raise dg.Failure(description=str(error), allow_retries=False) from error
        encode = load_encoder()
        memory = ReplyMemory(index, encode, config.memory_k)
        shown = memory.examples_for(
            pairs["prompt"].astype(str).tolist(), pairs["session_id"].astype(str).tolist()
        )
    group = is_group_chat(pairs)
    frame, examples = build_template_dataset(
        pairs,
        template,
        tokenizer,
        system_prompt=system_prompt,
        max_tokens=config.max_tokens,
        examples=shown,
        is_group=True if group else None,
    )
    table = pa.Table.from_pandas(frame, preserve_index=False)
    table = table.append_column(
        TOKEN_FIELDS[0], pa.array([e.input_ids for e in examples], pa.list_(pa.int32()))
    )
    table = table.append_column(
        TOKEN_FIELDS[1], pa.array([e.labels for e in examples], pa.list_(pa.int32()))
    )

    out_dir = layout.jsonl_dir(template)
    line_counts = write_jsonl(
        frame, {split: out_dir / f"{split}.jsonl" for split in ("train", "val", "test")}
    )

    # Checked here, where the tokenizer is loaded.
    checks = check_template_dataset(
        template,
        tokenizer,
        pairs,
        examples,
        system_prompt=system_prompt,
        max_tokens=config.max_tokens,
        # a fresh cache: each sampled prompt is embedded again, alone, as chat embeds it
        memory=None if memory is None else ReplyMemory(memory.index, memory.encode, memory.k),
        is_group=True if group else None,
    )
    lengths = example_lengths(examples)
    truncated = int(frame["truncated"].sum())

    provenance = dataset_provenance(context.instance, config, resolved.fingerprint)
    yield dg.Output(
        table,
        data_version=data_version(provenance),
        metadata={
            **provenance_metadata(provenance),
            "dagster/row_count": table.num_rows,
            "rows_by_split": frame["split"].value_counts().to_dict(),
            "tokens_mean": float(lengths.mean()),
            "tokens_p95": float(np.percentile(lengths, 95)),
            "tokens_max": int(lengths.max()),
            "reply_tokens_total": int(sum(e.completion_len for e in examples)),
            "truncated": truncated,
            "jsonl": dg.MetadataValue.path(str(out_dir)),
            "jsonl_lines": line_counts,
            "base_model": resolved.source,
            **_base_choice_metadata(base_model),
            "memory_k": config.memory_k,
            "group_chat": group,
            "memory_examples_mean": float(np.mean([len(s) for s in shown])) if shown else 0.0,
        },
    )
    # After the Parquet is stored (Dagster stores a yielded output before resuming): the
    # manifest never describes a dataset that failed to write.
    manifest = DatasetManifest(
        template=template,
        system_prompt=system_prompt,
        eos_id=int(stop_token_id(template, tokenizer)),
        me_ids=me.ids,
        me_names=me.names,
        max_tokens=config.max_tokens,
        base_model=resolved.source,
        base_model_fingerprint=resolved.fingerprint,
        memory_k=config.memory_k,
        memory_index=str(memory_path) if memory is not None else "",
        memory_digest=memory.index.digest() if memory is not None else "",
        dataset_digest=dataset_digest(
            table.select(["pair_id", "split", *TOKEN_COLUMNS]).to_pandas()
        ),
        group_chat=group,
    )
    manifest.write(layout.dataset_manifest_path(template))
    yield from asset_check_results(checks)


dataset_assets = [template_dataset]


def _base_choice_metadata(base_model: BaseModelResource) -> dict:
    """With base model ``auto``: the bits per character of each base on my replies, and why
    the chosen one won (the adapter records the chosen base itself)."""
    if not base_model.is_auto():
        return {}
    choice = base_model.choice()[1]
    return {
        "base_model_choice": choice.reason,
        "base_model_bits_per_char": dg.MetadataValue.json(choice.bits_per_char),
    }
