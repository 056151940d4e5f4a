"""Schedules, sensors and jobs: re-train on a calendar, re-ingest when a new export lands."""

import json
import os
from pathlib import Path

import dagster as dg

from echo_pipeline.defs.exports import default_export_location
from echo_pipeline.defs.partitions import adapter_partitions
from echo_pipeline.defs.provenance import export_set_digest
from echo_pipeline.defs.resources import build_resources
from echo_pipeline.defs.staleness import stale_reasons
from echo_pipeline.infra.storage import file_sha256

# The reply memory is made with the pairs it indexes, so datasets that read it follow both.
INGEST_SELECTION = ["raw_chat_export", "chat_messages", "conversation_pairs", "reply_memory"]

ingest_job = dg.define_asset_job(
    "ingest_job",
    selection=dg.AssetSelection.assets(*INGEST_SELECTION),
    description="Export files -> messages -> pairs -> reply memory (datasets follow through "
    "declarative automation).",
)

training_job = dg.define_asset_job(
    "training_job",
    selection=dg.AssetSelection.assets("lora_adapter", "evaluation_report"),
    partitions_def=adapter_partitions,
    description="Train and evaluate one adapter partition (template x experiment).",
)


def export_fingerprints(location: str, previous: dict[str, list]) -> dict[str, list]:
    """{path: [size, mtime_ns, sha256]}, hashing only files whose size or mtime changed.

    A zip member (``archive.zip/member``) takes its archive's size and mtime.
    """
    from echo_pipeline.exports import discover_export_files
    from echo_pipeline.exports.archive import archive_of

    current: dict[str, list] = {}
    for path in discover_export_files([location]):
        stat = (archive_of(path) or path).stat()
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
    combined = export_set_digest([v[2] for v in current.values()])
    return dg.RunRequest(
        run_key=combined,
        run_config={"ops": {"read_chat_exports": {"config": {"path": location}}}},
        tags={"echo/export_hash": combined},
    )


@dg.schedule(
    job=training_job,
    cron_schedule="0 3 * * 0",
    default_status=dg.DefaultScheduleStatus.STOPPED,
    description="Weekly (Sunday 03:00) freshness check: of the adapters made before, re-trains "
    "those whose dataset, base model, recipe or code changed, and re-evaluates those whose "
    "adapter or evaluation code changed. Current ones are left alone. Off until turned on.",
)
def weekly_retraining_schedule(context: dg.ScheduleEvaluationContext):
    stamp = context.scheduled_execution_time.strftime("%Y-%m-%d")
    requests, current = [], 0
    for key, assets, reasons in stale_adapter_partitions(context.instance):
        if not assets:
            current += 1
            continue
        context.log.info(f"{key}: {'; '.join(reasons)}")
        requests.append(
            dg.RunRequest(
                run_key=f"{stamp}:{key}",
                partition_key=key,
                asset_selection=[dg.AssetKey(a) for a in assets],
                tags={"echo/stale": "; ".join(reasons)[:200]},
            )
        )
    if not requests and not current:
        return dg.SkipReason(
            "no adapter made yet: nothing to keep fresh (`echo-pipeline run`, or materialise "
            "lora_adapter in the UI)"
        )
    if not requests:
        return dg.SkipReason(f"all {current} adapter(s) and their reports are up to date")
    return requests


def stale_adapter_partitions(
    instance: dg.DagsterInstance,
) -> list[tuple[str, list[str], list[str]]]:
    """(partition, the assets to re-make, why) for every adapter partition made before.

    With the default config (a schedule has no launchpad): a recipe is judged as
    ``experiments.py`` defines it now.
    """
    resources = build_resources()
    found = []
    for key in sorted(instance.get_materialized_partitions(dg.AssetKey("lora_adapter"))):
        adapter = stale_reasons(instance, "lora_adapter", key, {}, resources)
        if adapter:
            found.append((key, ["lora_adapter", "evaluation_report"], adapter))
            continue
        report = stale_reasons(instance, "evaluation_report", key, {}, resources)
        found.append((key, ["evaluation_report"] if report else [], report))
    return found


automation_sensor = dg.AutomationConditionSensorDefinition(
    "echo_automation",
    target=dg.AssetSelection.all(),
    default_status=dg.DefaultSensorStatus.STOPPED,
    minimum_interval_seconds=60,
    description="Declarative automation: datasets follow new pairs, adapters made before follow "
    "their dataset, reports follow their adapter. Off until turned on in the UI.",
)


automation_jobs = [ingest_job, training_job]
automation_sensors = [export_folder_sensor, automation_sensor]
automation_schedules = [weekly_retraining_schedule]
