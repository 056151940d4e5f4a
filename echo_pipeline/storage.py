"""Atomic writes: a crash or a full disk never leaves a half-written file where a reader looks.

Everything the pipeline materialises goes through here: write beside the target, fsync, then
``os.replace`` (atomic on POSIX within one filesystem). Directories (adapters) are staged the
same way and swapped in with a rename, keeping the previous version until the new one is whole.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq


@contextlib.contextmanager
def atomic_path(target: Path, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path next to ``target``; on success move it into place."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=suffix + ".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def write_parquet(table: pa.Table, target: Path) -> Path:
    """Write ``table`` to ``target`` atomically (zstd-compressed)."""
    with atomic_path(target) as tmp:
        pq.write_table(table, tmp, compression="zstd")
    return Path(target)


def write_text(text: str, target: Path) -> Path:
    """Write UTF-8 text atomically."""
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(target)


@contextlib.contextmanager
def atomic_directory(target: Path) -> Iterator[Path]:
    """Yield an empty staging directory; on success it replaces ``target`` whole.

    The old directory is moved aside first and deleted only after the new one is in place, so
    a loader never sees a directory with half its files.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".staging", dir=target.parent))
    try:
        yield staging
        old = None
        if target.exists():
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(target, old)
        os.replace(staging, target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
