"""Ingest stage: export files -> one message table -> conversation pairs, with blocking checks."""

import hashlib
import json
import os
from collections import Counter
from typing import TYPE_CHECKING, Any

import dagster as dg
import pyarrow as pa
from pydantic import Field

from echo_pipeline import pairing_config
from echo_pipeline.checks import check_pairs
from echo_pipeline.defs.check_results import asset_check_results
from echo_pipeline.defs.freshness import (
    CODE_VERSIONS,
    data_version,
    ingest_provenance,
    pairs_provenance,
    provenance_metadata,
)
from echo_pipeline.exports import ExportError, detect_format, read_exports, require_export_files
from echo_pipeline.exports.archive import export_size
from echo_pipeline.paths import sample_export_dir
from echo_pipeline.storage import file_sha256

if TYPE_CHECKING:
    import pandas as pd

INGEST = "ingest"

MANIFEST_SCHEMA = pa.schema(
    [
        pa.field("path", pa.string(), nullable=False),
        pa.field("format", pa.string(), nullable=False),
        pa.field("bytes", pa.int64(), nullable=False),
        pa.field("sha256", pa.string(), nullable=False),
    ]
)


def default_export_location() -> str:
    return os.environ.get("ECHO_EXPORT_DIR", str(sample_export_dir()))


class ExportConfig(dg.Config):
    """Where the chat export lives."""

    path: str = Field(
        default_factory=default_export_location,
        description="A file or folder of exports (DiscordChatExporter JSON/CSV/TXT, WhatsApp .txt). "
        "Folders are searched recursively; partitions and overlapping exports are merged. "
        "Default: the bundled sample, or env ECHO_EXPORT_DIR.",
    )


def _core(name: str, **limits: Any) -> Any:
    """A Dagster config field with the default and description of the core setting."""
    default, description = pairing_config.setting(name)
    return Field(default=default, description=description, **limits)


class PairsConfig(dg.Config):
    """Who "me" is and how turns become pairs (the settings of :class:`PairingConfig`)."""

    me: list[str] = Field(
        default_factory=pairing_config.default_me,
        description=f"{pairing_config.setting('me')[1]} Env {pairing_config.ME_ENV} "
        f"(comma-separated) sets the default; '{pairing_config.SAMPLE_ME}' is 'me' in the "
        "bundled sample.",
    )
    merge_gap_s: float = _core("merge_gap_s")
    session_gap_s: float = _core("session_gap_s")
    context_turns: int = _core("context_turns", ge=0, le=32)
    attachments: str = _core("attachments")
    redact: bool = _core("redact")
    min_reply_chars: int = _core("min_reply_chars", ge=1)
    max_reply_chars: int = _core("max_reply_chars", ge=1)
    max_prompt_chars: int = _core("max_prompt_chars", ge=1)
    drop_link_only: bool = _core("drop_link_only")
    drop_placeholder_replies: bool = _core("drop_placeholder_replies")
    max_same_reply: int = _core("max_same_reply", ge=0)
    val_fraction: float = _core("val_fraction", ge=0, lt=1)
    test_fraction: float = _core("test_fraction", ge=0, lt=1)
    test_min_pairs: int = _core("test_min_pairs", ge=0)
    min_train_fraction: float = _core("min_train_fraction", gt=0, lt=1)
    split_method: str = _core("split_method")
    train_share: float = _core("train_share", gt=0, le=1)

    def to_core(self) -> pairing_config.PairingConfig:
        if self.attachments not in ("placeholder", "drop"):
            raise ValueError(
                f"attachments must be 'placeholder' or 'drop', got {self.attachments!r}"
            )
        if self.split_method not in ("hash", "chronological"):
            raise ValueError(
                f"split_method must be 'hash' or 'chronological', got {self.split_method!r}"
            )
        settings = {name: getattr(self, name) for name in pairing_config.SETTINGS}
        return pairing_config.PairingConfig(me=tuple(self.me), **settings)


def export_manifest(location: str) -> pa.Table:
    """The export files under ``location`` with their detected format, size and content hash."""
    files = require_export_files([location])
    rows = [
        {
            "path": str(f),
            "format": detect_format(f),
            "bytes": export_size(f),
            "sha256": file_sha256(f),
        }
        for f in files
    ]
    return pa.Table.from_pylist(rows, schema=MANIFEST_SCHEMA)


def _failure(error: Exception) -> dg.Failure:
    """A run failure whose one-line description says which file is wrong and what to do."""
    return dg.Failure(description=str(error), allow_retries=False)


@dg.multi_asset(
    outs={
        "raw_chat_export": dg.AssetOut(
            group_name=INGEST,
            kinds={"python", "parquet"},
            code_version=CODE_VERSIONS["read_chat_exports"],
            description="The export files (with content hashes): what every later asset is "
            "derived from.",
        ),
        "chat_messages": dg.AssetOut(
            group_name=INGEST,
            kinds={"pandas", "parquet"},
            code_version=CODE_VERSIONS["read_chat_exports"],
            description="Every message of every export in one schema (chat_messages), "
            "timestamps in UTC.",
        ),
    },
    can_subset=False,
)
def read_chat_exports(context: dg.AssetExecutionContext, config: ExportConfig):
    """Lists and fingerprints the export files, then reads them into one message table.

    One step for both assets: every file is parsed before either is written, so an export that
    fails to parse (a truncated JSON shows only when read to the end) leaves the earlier
    manifest and messages as they were, rather than a new manifest over old messages.
    """
    try:
        manifest = export_manifest(config.path)
        paths = manifest.column("path").to_pylist()
        table = read_exports(paths)
    except ExportError as error:
        raise _failure(error) from error
    combined = hashlib.sha256("".join(manifest.column("sha256").to_pylist()).encode()).hexdigest()
    provenance = ingest_provenance(manifest.column("sha256").to_pylist())
    formats = dict(Counter(manifest.column("format").to_pylist()).most_common())
    context.log.info("read %d messages from %d files", table.num_rows, len(paths))
    yield dg.Output(
        manifest,
        output_name="raw_chat_export",
        data_version=data_version(provenance),
        metadata={
            **provenance_metadata(provenance),
            "location": config.path,
            "files": manifest.num_rows,
            "bytes": int(sum(manifest.column("bytes").to_pylist())),
            "formats": formats,
            "sha256": combined,
        },
    )
    yield dg.Output(
        table,
        output_name="chat_messages",
        data_version=data_version(provenance),
        metadata={**provenance_metadata(provenance), **_messages_metadata(table)},
    )


def _messages_metadata(table: pa.Table) -> dict:
    df = table.select(
        ["kind", "author_id", "author_name", "is_bot", "timestamp", "channel_id"]
    ).to_pandas()
    kinds = df["kind"].value_counts().to_dict()
    from echo_pipeline.conversations import author_counts  # pandas: not at code-location load

    authors = author_counts(df.assign(content=""))
    metadata: dict = {
        "dagster/row_count": table.num_rows,
        "channels": int(df["channel_id"].nunique()),
        "kinds": {k: int(v) for k, v in kinds.items()},
        "bots": int(df["is_bot"].sum()),
        "authors": dg.MetadataValue.md(_authors_markdown(authors)),
    }
    if len(df):
        metadata["first"] = df["timestamp"].min().isoformat()
        metadata["last"] = df["timestamp"].max().isoformat()
    return metadata


def _authors_markdown(authors: "pd.DataFrame", limit: int = 10) -> str:
    lines = ["| author | id | messages |", "|---|---|---|"]
    lines += [
        f"| {r.author_name} | {r.author_id} | {r.messages} |"
        for r in authors.head(limit).itertuples()
    ]
    return "\n".join(lines)


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
    from echo_pipeline import conversations  # pandas: not at code-location load

    try:
        pairs, report = conversations.build_pairs(chat_messages.to_pandas(), config.to_core())
    except (conversations.MeNotFoundError, ValueError) as error:
        raise _failure(error) from error
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
    from echo_pipeline.conversations import ME_IDS_METADATA_KEY

    raw = (pairs.schema.metadata or {}).get(ME_IDS_METADATA_KEY, b"[]")
    return json.loads(raw)


def _redacted(pairs: pa.Table) -> bool:
    from echo_pipeline.conversations import REDACTED_METADATA_KEY

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


ingest_assets = [read_chat_exports, conversation_pairs]
ingest_checks = [conversation_pairs_checks]
