"""Datasets stage: one tokenised, label-masked dataset per prompt template."""

import dagster as dg
import numpy as np
import pyarrow as pa
from pydantic import Field

from echo_pipeline.datasets.checks import example_lengths
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

DATASETS = "datasets"
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
    from echo_pipeline.datasets.prompt import PromptSpec
    from echo_pipeline.datasets.render import dataset_manifest, render_dataset
    from echo_pipeline.datasets.tokenization import write_jsonl
    from echo_pipeline.pairs.conversations import pairs_identity
    from echo_pipeline.pairs.memory import load_reply_memory
    from echo_pipeline.training.base_model import load_tokenizer

    template = context.partition_key
    layout = io_manager.layout()
    resolved = base_model.resolve()
    tokenizer = load_tokenizer(resolved)
    spec = PromptSpec.for_pairs(
        template,
        conversation_pairs,
        system_prompt=config.system_prompt,
        max_tokens=config.max_tokens,
        memory_k=config.memory_k,
    )
    memory_path = layout.asset_path(["reply_memory"])
    try:
        memory = load_reply_memory(memory_path, spec.memory_k) if spec.memory_k > 0 else None
    except (OSError, ValueError) as error:
        raise dg.Failure(description=str(error), allow_retries=False) from error
    rendered = render_dataset(conversation_pairs, spec, tokenizer, memory)
    out_dir = layout.jsonl_dir(template)
    line_counts = write_jsonl(
        rendered.frame, {split: out_dir / f"{split}.jsonl" for split in ("train", "val", "test")}
    )
    lengths = example_lengths(rendered.examples)
    provenance = dataset_provenance(context.instance, config, resolved.fingerprint)
    yield dg.Output(
        rendered.table,
        data_version=data_version(provenance),
        metadata={
            **provenance_metadata(provenance),
            "dagster/row_count": rendered.table.num_rows,
            "rows_by_split": rendered.frame["split"].value_counts().to_dict(),
            "tokens_mean": float(lengths.mean()),
            "tokens_p95": float(np.percentile(lengths, 95)),
            "tokens_max": int(lengths.max()),
            "reply_tokens_total": int(sum(e.completion_len for e in rendered.examples)),
            "truncated": int(rendered.frame["truncated"].sum()),
            "jsonl": dg.MetadataValue.path(str(out_dir)),
            "jsonl_lines": line_counts,
            "base_model": resolved.source,
            **_base_choice_metadata(base_model),
            "memory_k": spec.memory_k,
            "group_chat": spec.group_chat,
            "context_turns": spec.context_turns,
            "memory_examples_mean": float(np.mean([len(s) for s in rendered.shown]))
            if rendered.shown
            else 0.0,
        },
    )
    # After the Parquet is stored (Dagster stores a yielded output before resuming): the
    # manifest never describes a dataset that failed to write.
    manifest = dataset_manifest(
        rendered,
        spec,
        tokenizer,
        me_ids=pairs_identity(conversation_pairs).ids,
        base_model=resolved,
        memory=memory,
        memory_path=memory_path,
    )
    manifest.write(layout.dataset_manifest_path(template))
    yield from asset_check_results(rendered.checks)


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
