"""Atomic writes under failure: half-written files, full disks, denied folders, killed writers.

Each test fails a write part of the way through and then checks what a reader would see: the
previous file or directory byte for byte, no temporary where a loader looks, and an error that
names the target (not the hidden temporary) and says what to do.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from echo_pipeline.infra import storage
from echo_pipeline.infra.storage import (
    AtomicWriteError,
    atomic_directory,
    atomic_path,
    file_sha256,
    write_parquet,
    write_text,
)
from echo_pipeline.training.adapter_files import write_adapter_dir
from echo_pipeline.training.adapters import METADATA_FILE


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (hidden ones included) with its bytes."""
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


def table(rows: int, seed: int = 0) -> pa.Table:
    return pa.table(
        {"n": list(range(seed, seed + rows)), "text": [f"row {i}" for i in range(rows)]}
    )


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_a_successful_write_replaces_the_file_and_leaves_nothing_beside_it(tmp_path):
    target = tmp_path / "asset.parquet"
    write_parquet(table(3), target)
    write_parquet(table(5, seed=10), target)
    assert pq.read_table(target).column("n").to_pylist() == list(range(10, 15))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["asset.parquet"]


def test_a_writer_that_dies_half_way_leaves_the_previous_file_intact(tmp_path, monkeypatch):
    target = tmp_path / "chat_messages.parquet"
    write_parquet(table(100), target)
    before = snapshot(tmp_path)

    def half_then_disk_full(tbl, where, **kwargs):
        with open(where, "wb") as fh:
            fh.write(b"PAR1" + b"\0" * 4096)  # some bytes made it to disk
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pq, "write_table", half_then_disk_full)
    with pytest.raises(AtomicWriteError) as caught:
        write_parquet(table(1000), target)
    message = str(caught.value)
    assert str(target) in message and "No space left on device" in message
    assert "free disk space" in message and "unchanged" in message
    assert "\n" not in message and ".tmp" not in message  # names the target, not the temporary
    assert caught.value.errno == errno.ENOSPC and isinstance(caught.value, OSError)
    assert snapshot(tmp_path) == before  # same bytes, and no temporary left beside it


def test_a_failure_that_is_not_an_os_error_passes_through_and_cleans_up(tmp_path):
    target = tmp_path / "notes.txt"
    write_text("old", target)
    with pytest.raises(ZeroDivisionError), atomic_path(target) as tmp:
        tmp.write_text("half")
        1 / 0  # noqa: B018
    assert snapshot(tmp_path) == {"notes.txt": b"old"}


def test_a_real_file_size_limit_mid_write_keeps_the_old_file(tmp_path):
    """An OS-level failure, not a mock: RLIMIT_FSIZE makes the kernel refuse bytes past 64 KB
    (EFBIG, as a full disk refuses them with ENOSPC) while pyarrow streams a 2 MB file."""
    target = tmp_path / "pairs.parquet"
    write_parquet(table(10), target)
    before = snapshot(tmp_path)
    script = textwrap.dedent(
        f"""
        import resource, sys
        import numpy as np, pyarrow as pa
        from echo_pipeline.infra.storage import write_parquet
        big = pa.table({{"x": np.random.default_rng(0).random(250_000)}})
        resource.setrlimit(resource.RLIMIT_FSIZE, (64_000, 64_000))
        try:
            write_parquet(big, {str(target)!r})
        except OSError as error:
            print(type(error).__name__, error.errno, error, sep="|")
            sys.exit(3)
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert out.returncode == 3, out.stderr
    kind, code, message = out.stdout.strip().split("|", 2)
    assert kind == "AtomicWriteError" and int(code) == errno.EFBIG
    assert message.startswith(f"{target}: could not be written") and "free disk space" in message
    assert snapshot(tmp_path) == before


def test_a_writer_killed_mid_write_leaves_only_a_hidden_temporary_swept_by_the_next_write(
    tmp_path,
):
    target = tmp_path / "conversation_pairs.parquet"
    write_parquet(table(10), target)
    before = target.read_bytes()
    script = textwrap.dedent(
        f"""
        import os, signal
        from pathlib import Path
        from echo_pipeline.infra.storage import atomic_path
        with atomic_path(Path({str(target)!r})) as tmp:
            tmp.write_bytes(b"PAR1 half a file")
            os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert out.returncode == -9
    assert target.read_bytes() == before
    litter = [p.name for p in tmp_path.iterdir() if p != target]
    assert litter and all(n.startswith(".") and n.endswith(".tmp") for n in litter)
    assert not list(tmp_path.glob("*.parquet"))[1:]  # a loader globbing *.parquet sees one file

    write_parquet(table(4), target)
    assert sorted(p.name for p in tmp_path.iterdir()) == [target.name]


def test_a_live_writers_temporary_is_left_alone(tmp_path):
    target = tmp_path / "asset.parquet"
    mine = tmp_path / f".asset.parquet.{os.getpid()}.abcdefgh.tmp"
    theirs_dead = tmp_path / f".asset.parquet.{dead_pid()}.abcdefgh.tmp"
    unrelated = tmp_path / ".asset.parquet.backup"
    for path in (mine, theirs_dead, unrelated):
        path.write_bytes(b"x")
    write_parquet(table(2), target)
    assert mine.exists() and unrelated.exists() and not theirs_dead.exists()


def test_file_sha256_is_the_content_hash_and_follows_a_rewrite(tmp_path):
    path = tmp_path / "export.json"
    path.write_bytes(b"first")
    assert file_sha256(path) == hashlib.sha256(b"first").hexdigest()
    assert file_sha256(tmp_path / "." / "export.json") == file_sha256(path)  # one key per file

    write_text("second, longer", path)  # a new size and mtime: hashed again, not remembered
    assert file_sha256(path) == hashlib.sha256(b"second, longer").hexdigest()


def make_adapter(folder: Path, version: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "adapter_model.safetensors").write_bytes(version.encode() * 1000)
    (folder / "adapter_config.json").write_text(json.dumps({"version": version}))
    return folder


def test_a_directory_write_that_fails_half_way_keeps_the_previous_directory(tmp_path):
    target = make_adapter(tmp_path / "lora_adapter" / "chatml__demo", "v1")
    before = snapshot(tmp_path)
    with pytest.raises(AtomicWriteError) as caught, atomic_directory(target) as staging:
        (staging / "adapter_model.safetensors").write_bytes(b"v2" * 10)
        raise OSError(errno.ENOSPC, "No space left on device")
    assert str(target) in str(caught.value) and "staging" not in str(caught.value)
    assert snapshot(tmp_path) == before


def test_the_previous_directory_comes_back_when_the_swap_itself_fails(tmp_path, monkeypatch):
    target = make_adapter(tmp_path / "chatml__demo", "v1")
    before = snapshot(tmp_path)
    real_replace = os.replace

    def refuse_staging(src, dst):
        if str(src).endswith(".staging"):
            raise OSError(errno.EIO, "Input/output error")
        return real_replace(src, dst)

    monkeypatch.setattr(storage.os, "replace", refuse_staging)
    with (
        pytest.raises(AtomicWriteError, match="Input/output error"),
        atomic_directory(target) as staging,
    ):
        make_adapter(staging, "v2")
    assert snapshot(tmp_path) == before


def test_permission_denied_names_the_folder_and_what_to_do(tmp_path, monkeypatch):
    target = make_adapter(tmp_path / "chatml__demo", "v1")
    before = snapshot(tmp_path)

    def denied(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", str(tmp_path))

    monkeypatch.setattr(storage.tempfile, "mkdtemp", denied)
    monkeypatch.setattr(storage.tempfile, "mkstemp", denied)
    with pytest.raises(AtomicWriteError) as caught, atomic_directory(target):
        pytest.fail("the body must not run without a staging directory")
    message = str(caught.value)
    assert message.startswith(f"{target}: could not be written (Permission denied)")
    assert "make the folder writable" in message
    with pytest.raises(AtomicWriteError, match="make the folder writable"):
        write_text("x", tmp_path / "notes.txt")
    assert snapshot(tmp_path) == before


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file permissions")
def test_a_read_only_folder_really_refuses_and_keeps_the_adapter(tmp_path):
    target = make_adapter(tmp_path / "ro" / "chatml__demo", "v1")
    before = snapshot(tmp_path)
    (tmp_path / "ro").chmod(0o500)
    try:
        with (
            pytest.raises(AtomicWriteError, match="make the folder writable"),
            atomic_directory(target) as staging,
        ):
            make_adapter(staging, "v2")
    finally:
        (tmp_path / "ro").chmod(0o700)
    assert snapshot(tmp_path) == before


def test_a_swap_interrupted_by_a_kill_is_repaired_by_the_next_write(tmp_path):
    """SIGKILL between the two renames leaves no target and the old version aside: the next
    write puts it back first, so even a failing next write leaves a whole adapter."""
    target = tmp_path / "chatml__demo"
    aside = make_adapter(tmp_path / f".chatml__demo.{dead_pid()}.old", "v1")
    expected = snapshot(aside)
    with pytest.raises(RuntimeError), atomic_directory(target):
        raise RuntimeError("this attempt fails too")
    assert snapshot(target) == expected and not aside.exists()


class FakeTokenizer:
    def __init__(self, fail_with: OSError | None = None) -> None:
        self.fail_with = fail_with

    def save_pretrained(self, folder: Path) -> None:
        (Path(folder) / "tokenizer.json").write_text("{}")
        if self.fail_with is not None:
            raise self.fail_with


def test_an_adapter_publish_that_hits_a_full_disk_keeps_the_previous_adapter(tmp_path):
    published = tmp_path / "data" / "lora_adapter" / "chatml__demo"
    trained = make_adapter(tmp_path / "work" / "adapter", "v1")
    write_adapter_dir(published, trained, FakeTokenizer(), {"run": "first"})
    assert json.loads((published / METADATA_FILE).read_text()) == {"run": "first"}
    before = snapshot(published.parent)

    trained_v2 = make_adapter(tmp_path / "work" / "adapter_v2", "v2")
    disk_full = FakeTokenizer(OSError(errno.ENOSPC, "No space left on device"))
    with pytest.raises(AtomicWriteError) as caught:
        write_adapter_dir(published, trained_v2, disk_full, {"run": "second"})
    assert str(caught.value).startswith(f"{published}: could not be written (No space left")
    assert snapshot(published.parent) == before  # v1 whole; no staging directory beside it


def test_an_incomplete_trained_adapter_is_never_published(tmp_path):
    published = tmp_path / "lora_adapter" / "chatml__demo"
    trained = make_adapter(tmp_path / "work", "v1")
    (trained / "adapter_model.safetensors").unlink()
    with pytest.raises(ValueError, match=r"lacks adapter_model\.safetensors"):
        write_adapter_dir(published, trained, FakeTokenizer(), {})
    assert not published.parent.exists() or not any(published.parent.iterdir())


def test_write_errors_survive_pickling_with_their_message(tmp_path):
    import pickle

    error = AtomicWriteError(tmp_path / "x", OSError(errno.ENOSPC, "No space left on device"))
    again = pickle.loads(pickle.dumps(error))
    assert str(again) == str(error) and again.errno == errno.ENOSPC


def test_a_failed_write_during_materialisation_keeps_every_earlier_asset_file(
    pipeline_env, monkeypatch
):
    """Through Dagster: the IO manager's write fails half way in a second run; the run fails
    naming the file, and the first run's Parquet files are byte-identical."""
    import dagster as dg

    from echo_pipeline.definitions import build_resources
    from echo_pipeline.defs.exports import export_assets
    from echo_pipeline.defs.pairs import conversation_pairs, conversation_pairs_checks
    from echo_pipeline.infra.paths import data_dir

    def materialize():
        return dg.materialize(
            [*export_assets, conversation_pairs, conversation_pairs_checks],
            resources=build_resources(),
            raise_on_error=False,
        )

    assert materialize().success
    before = snapshot(data_dir())
    assert {
        "raw_chat_export.parquet",
        "chat_messages.parquet",
        "conversation_pairs.parquet",
    } <= set(before)
    real_write = pq.write_table

    def fail_on_messages(tbl, where, **kwargs):
        if ".chat_messages.parquet." not in str(where):
            return real_write(tbl, where, **kwargs)
        with open(where, "wb") as fh:
            fh.write(b"PAR1" + b"\0" * 1024)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pq, "write_table", fail_on_messages)
    result = materialize()
    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure)
    chain, error = [], failure.step_failure_data.error
    while error is not None:  # Dagster wraps IO manager errors; the UI shows the whole chain
        chain.append(error.message)
        error = error.cause
    line = next(m for m in chain if "could not be written" in m)
    assert str(data_dir() / "chat_messages.parquet") in line and "free disk space" in line
    after = snapshot(data_dir())
    assert after == before
    shutil.rmtree(data_dir())  # keep tmp_path small
