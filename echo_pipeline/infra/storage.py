"""Atomic writes: a crash or a full disk never leaves a half-written file where a reader looks.

Everything the pipeline materialises goes through here: write beside the target, fsync, then
``os.replace`` (atomic on POSIX within one filesystem). Directories (adapters) are staged the
same way and swapped in with a rename, keeping the previous version until the new one is whole.

Failures surface as :class:`AtomicWriteError`, an ``OSError`` whose one-line message names the
target (not the hidden temporary beside it), says why and what to do, and promises that the
previous version is untouched. Temporaries carry the writer's pid, so the next write of the same
target sweeps away what a killed writer (SIGKILL, power loss) left behind.

Files are fingerprinted here too (:func:`file_sha256`): one content hash for exports, base
models and everything else whose identity is its bytes.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import os
import re
import shutil
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from echo_pipeline.infra.processes import pid_alive

if TYPE_CHECKING:
    import pyarrow as pa

_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
_DENIED = {errno.EACCES, errno.EPERM, errno.EROFS}


class AtomicWriteError(OSError):
    """Writing ``target`` failed; whatever was there before is still there, whole."""

    def __init__(self, target: str | Path, cause: OSError | str, errno_: int | None = None) -> None:
        reason = cause if isinstance(cause, str) else (cause.strerror or str(cause))
        code = errno_ if errno_ is not None else getattr(cause, "errno", None)
        super().__init__(code, " ".join(str(reason).split()), str(target))
        self.target = Path(target)

    def hint(self) -> str:
        if self.errno in _FULL:
            return "free disk space (or point ECHO_DATA_DIR at a bigger disk) and run it again"
        if self.errno in _DENIED:
            return "make the folder writable (or point ECHO_DATA_DIR elsewhere) and run it again"
        return "fix the cause and run it again"

    def __str__(self) -> str:
        return (
            f"{self.target}: could not be written ({self.strerror}); {self.hint()}. "
            "The previous version, if any, is unchanged"
        )

    def __reduce__(self):  # picklable across processes (Dagster's multiprocess executor)
        return (type(self), (self.target, self.strerror or "", self.errno))


# What a writer leaves beside ``.<name>.``: ``<pid>.<random>[suffix].tmp`` (atomic_path),
# ``<pid>.<random>.staging`` and ``<pid>.old`` (atomic_directory).
_TEMP_RE = re.compile(r"(?P<pid>\d+)\.(?:[a-z0-9_]{8}(?:\..*)?\.(?:tmp|staging)|old)")


def _sweep_stale(parent: Path, name: str) -> None:
    """Remove temporaries of ``name`` left by writers that no longer run (killed mid-write)."""
    if not parent.is_dir():
        return
    prefix = f".{name}."
    for entry in parent.iterdir():
        if not entry.name.startswith(prefix):
            continue
        match = _TEMP_RE.fullmatch(entry.name[len(prefix) :])
        if match is None or pid_alive(int(match["pid"])):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)


def _fsync_dir(path: Path) -> None:
    """Make a rename in ``path`` durable (best effort: not every filesystem allows it)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    for dirpath, _, filenames in os.walk(root):
        for filename in filenames:
            with open(Path(dirpath) / filename, "rb") as fh:
                os.fsync(fh.fileno())
        _fsync_dir(Path(dirpath))


@contextlib.contextmanager
def atomic_path(target: Path, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path next to ``target``; on success move it into place.

    If the body or the final rename fails, the temporary is removed and ``target`` keeps its
    previous content; an ``OSError`` is re-raised as :class:`AtomicWriteError` naming ``target``.
    """
    target = Path(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        _sweep_stale(target.parent, target.name)
        fd, tmp_name = tempfile.mkstemp(
            prefix=f".{target.name}.{os.getpid()}.", suffix=suffix + ".tmp", dir=target.parent
        )
        os.close(fd)
    except OSError as error:
        raise AtomicWriteError(target, error) from error
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, target)
        _fsync_dir(target.parent)
    except AtomicWriteError:
        raise
    except OSError as error:
        raise AtomicWriteError(target, error) from error
    finally:
        tmp.unlink(missing_ok=True)


def write_parquet(table: pa.Table, target: Path) -> Path:
    """Write ``table`` to ``target`` atomically (zstd-compressed)."""
    import pyarrow.parquet as pq

    with atomic_path(target) as tmp:
        pq.write_table(table, tmp, compression="zstd")
    return Path(target)


def write_text(text: str, target: Path) -> Path:
    """Write UTF-8 text atomically."""
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(target)


def file_sha256(path: Path | zipfile.Path) -> str:
    """Hex sha256 of a file's bytes, memoised per process on (path, size, mtime).

    A base model of gigabytes is fingerprinted several times per run; a rewritten file changes
    its mtime (or size) and is hashed again. A zip member is hashed on its uncompressed bytes,
    so the same export downloaded again in a new archive keeps its hash.
    """
    if isinstance(path, zipfile.Path):
        return _member_sha256(path)
    path = Path(path).resolve()
    stat = path.stat()
    return _sha256_of(str(path), stat.st_size, stat.st_mtime_ns)


_MEMBER_SHA256: dict[tuple[str, int, int, str], str] = {}


def _member_sha256(member: zipfile.Path) -> str:
    """Memoised on (archive, its size and mtime, member name), like a file."""
    archive = Path(member.root.filename).resolve()
    stat = archive.stat()
    key = (str(archive), stat.st_size, stat.st_mtime_ns, member.at)
    if key not in _MEMBER_SHA256:
        if len(_MEMBER_SHA256) >= 4096:
            _MEMBER_SHA256.clear()
        digest = hashlib.sha256()
        with member.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 22), b""):
                digest.update(block)
        _MEMBER_SHA256[key] = digest.hexdigest()
    return _MEMBER_SHA256[key]


@functools.lru_cache(maxsize=1024)
def _sha256_of(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def _restore_interrupted_swap(target: Path) -> None:
    """A writer killed between its two renames left ``target`` missing and the old version
    aside as ``.<name>.<pid>.old``: put it back before anything else happens."""
    if target.exists():
        return
    aside = sorted(
        (p for p in target.parent.glob(f".{target.name}.*.old") if p.is_dir()),
        key=lambda p: p.stat().st_mtime,
    )
    for candidate in reversed(aside):
        match = _TEMP_RE.fullmatch(candidate.name[len(target.name) + 2 :])
        if match is not None and not pid_alive(int(match["pid"])):
            os.replace(candidate, target)
            return


@contextlib.contextmanager
def atomic_directory(target: Path) -> Iterator[Path]:
    """Yield an empty staging directory; on success it replaces ``target`` whole.

    The old directory is moved aside first and deleted only after the new one is in place (it
    is moved back if that fails), so a loader never sees a directory with half its files. On
    failure the staging directory is removed and an ``OSError`` becomes
    :class:`AtomicWriteError` naming ``target``.
    """
    target = Path(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        _restore_interrupted_swap(target)
        _sweep_stale(target.parent, target.name)
        staging = Path(
            tempfile.mkdtemp(
                prefix=f".{target.name}.{os.getpid()}.", suffix=".staging", dir=target.parent
            )
        )
    except OSError as error:
        raise AtomicWriteError(target, error) from error
    try:
        yield staging
        _fsync_tree(staging)
        old = None
        if target.exists():
            old = target.with_name(f".{target.name}.{os.getpid()}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(target, old)
        try:
            os.replace(staging, target)
        except BaseException:
            if old is not None and not target.exists():
                os.replace(old, target)
            raise
        _fsync_dir(target.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except AtomicWriteError:
        raise
    except OSError as error:
        raise AtomicWriteError(target, error) from error
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
