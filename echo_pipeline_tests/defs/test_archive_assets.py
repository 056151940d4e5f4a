"""Zip archives through the real Dagster layer: ingest reads members, the sensor watches them."""

from __future__ import annotations

import hashlib
import os
import zipfile
from pathlib import Path

import dagster as dg
import pyarrow.parquet as pq

from echo_pipeline.definitions import build_resources, defs
from echo_pipeline.defs.automation import export_fingerprints, export_folder_sensor
from echo_pipeline.defs.exports import export_assets
from echo_pipeline.defs.pairs import conversation_pairs, conversation_pairs_checks
from echo_pipeline.infra.paths import data_dir, sample_export_dir


def zip_sample(target: Path, extra: dict[str, str] | None = None) -> Path:
    """The bundled sample export as one archive (JSON files under a folder, README skipped)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as archive:
        for file in sorted(sample_export_dir().iterdir()):
            archive.write(file, f"sample/{file.name}")
        for name, text in (extra or {}).items():
            archive.writestr(name, text)
    return target


def materialize(path: Path):
    return dg.materialize(
        [*export_assets, conversation_pairs, conversation_pairs_checks],
        resources=build_resources(),
        run_config={"ops": {"read_chat_exports": {"config": {"path": str(path)}}}},
        raise_on_error=False,
    )


def test_ingest_reads_a_zip_and_a_hostile_one_fails_keeping_what_was_materialised(pipeline_env):
    archive = zip_sample(pipeline_env / "exports" / "discord.zip")
    result = materialize(archive)
    assert result.success
    messages = pq.read_table(data_dir() / "chat_messages.parquet")
    assert messages.num_rows == 4300
    manifest = pq.read_table(data_dir() / "raw_chat_export.parquet").to_pylist()
    plain = {f.name: f for f in sample_export_dir().glob("*.json")}
    assert sorted(row["path"] for row in manifest) == sorted(
        f"{archive}/sample/{name}" for name in plain
    )
    for row in manifest:  # a member's hash is its content's: the same as the extracted file's
        source = plain[row["path"].rsplit("/", 1)[-1]]
        assert row["sha256"] == hashlib.sha256(source.read_bytes()).hexdigest()
        assert row["bytes"] == source.stat().st_size
    assert set(messages["source_file"].to_pylist()) == {row["path"] for row in manifest}

    before = {
        name: (data_dir() / name).read_bytes()
        for name in ("raw_chat_export.parquet", "chat_messages.parquet")
    }
    hostile = zip_sample(pipeline_env / "exports" / "evil.zip", {"../../escape.txt": "x"})
    result = materialize(hostile)
    assert not result.success
    (failure,) = [e for e in result.all_events if e.is_step_failure]
    line = failure.step_failure_data.error.message.splitlines()[0]
    assert str(hostile) in line and "'../../escape.txt'" in line and "unsafe name" in line
    assert not (pipeline_env / "escape.txt").exists()
    assert {name: (data_dir() / name).read_bytes() for name in before} == before


def test_sensor_watches_members_and_ignores_a_new_archive_of_the_same_content(
    tmp_path, monkeypatch
):
    folder = tmp_path / "exports"
    archive = zip_sample(folder / "discord.zip")
    fingerprints = export_fingerprints(str(folder), {})
    stat = archive.stat()
    assert sorted(fingerprints) == sorted(
        f"{archive}/sample/{f.name}" for f in sample_export_dir().glob("*.json")
    )
    assert {tuple(v[:2]) for v in fingerprints.values()} == {(stat.st_size, stat.st_mtime_ns)}

    monkeypatch.setenv("ECHO_EXPORT_DIR", str(folder))
    context = dg.build_sensor_context(instance=dg.DagsterInstance.ephemeral(), definitions=defs)
    assert isinstance(export_folder_sensor(context), dg.RunRequest)
    # Downloaded again: a new archive (stored, not deflated; a later mtime), the same exports.
    archive.unlink()
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as again:
        for file in sorted(sample_export_dir().glob("*.json")):
            again.write(file, f"sample/{file.name}")
    os.utime(archive, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    skipped = export_folder_sensor(context)
    assert isinstance(skipped, dg.SkipReason)
    assert skipped.skip_message == "no new or changed export files"
