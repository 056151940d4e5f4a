"""Pairs stage: one message table -> (context, their turn) -> my reply, with blocking checks;
and the reply memory built from the train pairs."""

import json

import dagster as dg
import pyarrow as pa
from pydantic import Field

from echo_pipeline.defs.check_results import asset_check_results
from echo_pipeline.defs.conditions import DATASET_AUTOMATION
from echo_pipeline.defs.configs import core_values, derived_config
from echo_pipeline.defs.exports import INGEST, input_failure
from echo_pipeline.defs.provenance import (
    CODE_VERSIONS,
    data_version,
    memory_provenance,
    pairs_provenance,
    provenance_metadata,
)
from echo_pipeline.pairs import pairing_config
from echo_pipeline.pairs.checks import check_pairs


class _Pairing(dg.Config):
    me: list[str] = Field(
        default_factory=pairing_config.default_me,
        description=f"{pairing_config.described('me')[1]} Env {pairing_config.ME_ENV} "
        f"(comma-separated) sets the default; '{pairing_config.SAMPLE_ME}' is 'me' in the "
        "bundled sample.",
    )

    def to_core(self) -> pairing_config.PairingConfig:
        return pairing_config.PairingConfig(**core_values(self, pairing_config.PairingConfig))


#: Who "me" is and how turns become pairs: every setting of :class:`PairingConfig`.
PairsConfig = derived_config(
    "PairsConfig",
    pairing_config.PairingConfig,
    base=_Pairing,
    doc='Who "me" is and how turns become pairs (the settings of PairingConfig).',
)


def _short(text: str, limit: int = 80) -> str:
    text = " ".join(str(text).split()).replace("|", "\\|")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def pairs_preview_markdown(pairs: pa.Table, limit: int = 5) -> str:
    """A few (already redacted) pairs, cut short: enough to eyeball, too little to leak a chat."""
    rows = pairs.slice(0, limit).select(["prompt_author", "prompt", "reply", "split"]).to_pylist()
    lines = ["| from | prompt | my reply | split |", "|---|---|---|---|"]
    lines += [
        f"| {_short(r['prompt_author'], 20)} | {_short(r['prompt'])} | {_short(r['reply'])} | {r['split']} |"
        for r in rows
    ]
    return "\n".join(lines)


@dg.asset(
    group_name=INGEST,
    kinds={"pandas", "parquet"},
    code_version=CODE_VERSIONS["conversation_pairs"],
    description="(context, someone else's turn) -> my reply, redacted and split by session.",
)
def conversation_pairs(
    context: dg.AssetExecutionContext, config: PairsConfig, chat_messages: pa.Table
) -> dg.Output[pa.Table]:
    """The training examples in template-neutral form; every dataset and adapter starts here."""
    from echo_pipeline.pairs import conversations  # pandas: not at code-location load

    try:
        pairs, report = conversations.build_pairs(chat_messages.to_pandas(), config.to_core())
    except (conversations.MeNotFoundError, ValueError) as error:
        raise input_failure(error) from error
    for warning in report.warnings:
        context.log.warning(warning)
    context.log.info("built %d pairs from %d turns", report.pairs, report.turns)
    provenance = pairs_provenance(context.instance, config)
    return dg.Output(
        pairs,
        data_version=data_version(provenance),
        metadata={
            **provenance_metadata(provenance),
            "dagster/row_count": report.pairs,
            "pairs_by_split": report.pairs_by_split,
            "explicit_reply_pairs": report.explicit_reply_pairs,
            "messages_in": report.messages_in,
            "messages_kept": report.messages_kept,
            "turns": report.turns,
            "sessions": report.sessions,
            "dropped": dict(sorted(report.dropped.items())),
            "redactions": report.redactions,
            "me_ids": report.me_ids,
            "content_access_suspect": report.content_access_suspect,
            "preview": dg.MetadataValue.md(pairs_preview_markdown(pairs)),
        },
    )


# --- blocking checks: a failed one stops datasets and training from running on bad pairs ---


def _me_ids(pairs: pa.Table) -> list[str]:
    from echo_pipeline.pairs.conversations import ME_IDS_METADATA_KEY

    raw = (pairs.schema.metadata or {}).get(ME_IDS_METADATA_KEY, b"[]")
    return json.loads(raw)


def _redacted(pairs: pa.Table) -> bool:
    from echo_pipeline.pairs.conversations import REDACTED_METADATA_KEY

    raw = (pairs.schema.metadata or {}).get(REDACTED_METADATA_KEY, b"true")
    return bool(json.loads(raw))


@dg.multi_asset_check(
    specs=[
        dg.AssetCheckSpec(name=name, asset="conversation_pairs", blocking=True, description=desc)
        for name, desc in (
            ("has_pairs", "At least one pair in the train split."),
            ("has_heldout_pairs", "Test pairs to evaluate the adapter on (before any training)."),
            ("replies_are_mine", "Every reply was written by one of my author ids."),
            ("prompts_are_others", "Every prompt was written by someone else."),
            ("pairs_within_session", "Prompt, context and reply come from the same session."),
            ("sessions_in_one_split", "No session is split across train/val/test."),
            ("no_pii_left", "No email, phone, IP, card or token pattern survived redaction."),
        )
    ]
)
def conversation_pairs_checks(conversation_pairs: pa.Table):
    """Invariants that, if broken, would train on the wrong voice or leak test data or secrets."""
    yield from asset_check_results(
        check_pairs(
            conversation_pairs, _me_ids(conversation_pairs), redacted=_redacted(conversation_pairs)
        )
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
    from echo_pipeline.pairs.memory import build_index, load_encoder

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


pairs_assets = [conversation_pairs, reply_memory]
pairs_checks = [conversation_pairs_checks]
