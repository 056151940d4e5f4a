"""Reply memory stage: the train pairs' prompts embedded once, for every template's dataset."""

import dagster as dg
import pyarrow as pa

from echo_pipeline.defs.conditions import DATASET_AUTOMATION
from echo_pipeline.defs.freshness import (
    CODE_VERSIONS,
    data_version,
    memory_provenance,
    provenance_metadata,
)

MEMORY = "datasets"  # shown beside the datasets it feeds


@dg.asset(
    group_name=MEMORY,
    kinds={"transformers", "parquet"},
    code_version=CODE_VERSIONS["reply_memory"],
    automation_condition=DATASET_AUTOMATION,
    description="My train replies and the MiniLM embedding of each prompt: the examples of how "
    "I answer that datasets with memory_k > 0 put before each conversation.",
)
def reply_memory(context: dg.AssetExecutionContext, conversation_pairs: pa.Table):
    """Only train pairs enter: a held-out reply can never be shown as an example."""
    from echo_pipeline.memory import build_index, load_encoder

    index = build_index(conversation_pairs.to_pandas(), load_encoder())
    provenance = memory_provenance(context.instance)
    table = index.to_table()
    yield dg.Output(
        table,
        data_version=data_version(provenance),
        metadata={
            **provenance_metadata(provenance),
            "dagster/row_count": table.num_rows,
            "sessions": len(set(index.session_ids)),
            "embedder": provenance.inputs["embedder"],
            "index_digest": index.digest(),
        },
    )


memory_assets = [reply_memory]
