"""Schedules, sensors and jobs: re-train on a calendar, re-ingest when a new export lands."""

import hashlib
import json
import os
from pathlib import Path

import dagster as dg

from echo_pipeline.defs.ingest import default_export_location
from echo_pipeline.defs.partitions import adapter_key, adapter_partitions
from echo_pipeline.storage import file_sha256

INGEST_SELECTION = ["raw_chat_export", "chat_messages", "conversation_pairs"]

ingest_job = dg.define_asset_job(
    "ingest_job",
    selection=dg.AssetSelection.assets(*INGEST_SELECTION),
    description="Export files -> messages -> pairs (datasets follow through declarative automation).",
)

training_job = dg.define_asset_job(
    "training_job",
    selection=dg.AssetSelection.assets("lora_adapter", "evaluation_report"),
    partitions_def=adapter_partitions,
    description="Train and evaluate one adapter partition (template x experiment).",
)


def export_fingerprints(location: str, previous: dict[str, list]) -> dict[str, list]:
    """{path: [size, mtime_ns, sha256]}, hashing only files whose size or mtime changed."""
    from echo_pipeline.exports import discover_export_files

    current: dict[str, list] = {}
    for path in discover_export_files([location]):
        stat = path.stat()
        old = previous.get(str(path))
        if old and old[0] == stat.st_size and old[1] == stat.st_mtime_ns:
            current[str(path)] = old
        else:
            current[str(path)] = [stat.st_size, stat.st_mtime_ns, file_sha256(path)]
    return current


@dg.sensor(
    job=ingest_job,
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.STOPPED,
    description="Watches the export folder (ECHO_EXPORT_DIR or the sample); new or changed files "
    "(by content hash) start an ingest run. Turn it on in the UI.",
)
def export_folder_sensor(context: dg.SensorEvaluationContext):
    location = os.environ.get("ECHO_EXPORT_DIR") or default_export_location()
    if not Path(location).exists():
        return dg.SkipReason(f"{location}: export location does not exist")
    previous = json.loads(context.cursor) if context.cursor else {}
    try:
        current = export_fingerprints(location, previous)
    except ValueError as error:  # ExportError: unreadable file and the like
        return dg.SkipReason(str(error))
    if not current:
        return dg.SkipReason(f"{location}: no export files")
    context.update_cursor(json.dumps(current))
    if {p: v[2] for p, v in current.items()} == {p: v[2] for p, v in previous.items()}:
        return dg.SkipReason("no new or changed export files")
    combined = hashlib.sha256(
        "".join(f"{p}:{v[2]}" for p, v in sorted(current.items())).encode()
    ).hexdigest()[:16]
    return dg.RunRequest(
        run_key=combined,
        run_config={"ops": {"read_chat_exports": {"config": {"path": location}}}},
        tags={"echo/export_hash": combined},
    )


@dg.schedule(
    job=training_job,
    cron_schedule="0 3 * * 0",
    default_status=dg.DefaultScheduleStatus.STOPPED,
    description="Weekly (Sunday 03:00) re-training and evaluation of every adapter partition that "
    "has been materialised before (the demo partitions when none has). Off until turned on.",
)
def weekly_retraining_schedule(context: dg.ScheduleEvaluationContext):
    keys = _materialised_adapter_partitions(context.instance)
    if not keys:
        templates = adapter_partitions.get_partitions_def_for_dimension(
            "template"
        ).get_partition_keys()
        keys = [str(adapter_key(t, "demo")) for t in templates]
    stamp = context.scheduled_execution_time.strftime("%Y-%m-%d")
    return [dg.RunRequest(run_key=f"{stamp}:{key}", partition_key=key) for key in sorted(keys)]


def _materialised_adapter_partitions(instance: dg.DagsterInstance) -> list[str]:
    return sorted(instance.get_materialized_partitions(dg.AssetKey("lora_adapter")))


automation_jobs = [ingest_job, training_job]
automation_sensors = [export_folder_sensor]
automation_schedules = [weekly_retraining_schedule]
