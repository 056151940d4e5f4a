"""One IO manager for every tabular asset: Parquet files under ``data/``, written atomically."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pyarrow as pa
import pyarrow.parquet as pq

from echo_pipeline.infra.layout import Layout
from echo_pipeline.infra.storage import write_parquet


class ParquetIOManager(dg.ConfigurableIOManager):
    """Stores Arrow tables as ``<base_dir>/<asset>/<partition>.parquet`` (or ``<asset>.parquet``).

    Writes go to a temporary file and are renamed into place, so a failed run leaves the
    previous materialisation intact. Assets that write folders of their own (adapters, reports,
    JSONL) take this resource as ``io_manager: dg.ResourceParam[ParquetIOManager]`` and ask
    :meth:`layout`, so ``base_dir`` moves everything together.
    """

    base_dir: str = ""

    def layout(self) -> Layout:
        """Where every artefact lives for this IO manager (``base_dir``, else ``data_dir()``)."""
        return Layout.at(self.base_dir)

    def _path(self, context: dg.OutputContext | dg.InputContext) -> Path:
        partition = context.asset_partition_key if context.has_asset_partitions else None
        return self.layout().asset_path(context.asset_key.path, partition)

    def handle_output(self, context: dg.OutputContext, obj: pa.Table) -> None:
        if obj is None:
            return
        if not isinstance(obj, pa.Table):
            raise TypeError(f"ParquetIOManager stores pyarrow Tables, got {type(obj).__name__}")
        path = write_parquet(obj, self._path(context))
        context.add_output_metadata({"path": dg.MetadataValue.path(str(path))})

    def load_input(self, context: dg.InputContext) -> pa.Table:
        path = self._path(context)
        if not path.exists():
            raise FileNotFoundError(
                f"{path}: upstream asset {context.asset_key.to_user_string()} has not been "
                "materialised yet; materialise it first"
            )
        return pq.read_table(path)
