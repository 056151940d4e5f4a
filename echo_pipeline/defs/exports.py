"""Ingest stage: export files -> their manifest and one message table (``chat_messages``)."""

import os
from collections import Counter
from typing import TYPE_CHECKING

import dagster as dg
import pyarrow as pa
from pydantic import Field

from echo_pipeline.defs.provenance import (
    CODE_VERSIONS,
    data_version,
    ingest_provenance,
    provenance_metadata,
)
from echo_pipeline.exports import ExportError, detect_format, read_exports, require_export_files
from echo_pipeline.exports.archive import export_size
from echo_pipeline.infra.paths import sample_export_dir
from echo_pipeline.infra.storage import file_sha256

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


def input_failure(error: Exception) -> dg.Failure:
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
        raise input_failure(error) from error
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
            "export_set_digest": provenance.inputs["export_files"],
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
    from echo_pipeline.pairs.conversations import author_counts  # pandas: not at code-location load

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


export_assets = [read_chat_exports]
