"""One IO manager for every tabular asset: Parquet files under ``data/``, written atomically."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pyarrow as pa
import pyarrow.parquet as pq

from echo_pipeline.paths import data_dir
from echo_pipeline.storage import write_parquet


def partition_slug(partition: str) -> str:
    """A partition key as a file name: ``chatml|demo`` -> ``chatml__demo``; never a path."""
    slug = str(partition).replace("|", "__")
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in slug).lstrip(".") or "_"


def asset_path(
    root: Path, asset_key: dg.AssetKey, partition: str | None = None, suffix: str = ".parquet"
) -> Path:
    """Where an asset (partition) lives under ``root``; shared by the IO manager and its readers."""
    key = asset_key.path
    folder = Path(root).joinpath(*key[:-1])
    if partition is not None:
        return folder / key[-1] / f"{partition_slug(partition)}{suffix}"
    return folder / f"{key[-1]}{suffix}"


class ParquetIOManager(dg.ConfigurableIOManager):
    """Stores Arrow tables as ``<base_dir>/<asset>/<partition>.parquet`` (or ``<asset>.parquet``).

    Writes go to a temporary file and are renamed into place, so a failed run leaves the
    previous materialisation intact.
    """

    base_dir: str = ""

    def _root(self) -> Path:
        return Path(self.base_dir) if self.base_dir else data_dir()

    def _path(self, context: dg.OutputContext | dg.InputContext) -> Path:
        partition = context.asset_partition_key if context.has_asset_partitions else None
        return asset_path(self._root(), context.asset_key, partition)

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
