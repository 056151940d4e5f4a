"""Hostile exports through Dagster: clear failures, earlier materialisations untouched, no escape.

Each case first materialises the ingest assets on the bundled sample, then points
``raw_chat_export`` at one hostile file. A broken file fails the run with one line naming the
file and what to do, and the data assets of the earlier run stay byte-identical. A one-author
export is a *valid* export without pairs: ``conversation_pairs`` materialises (zero rows) and the
blocking ``has_pairs`` check fails the run, so nothing downstream trains on it in that run.
Names inside an export (channel, guild, attachment file names) never become paths.
"""

from __future__ import annotations

import os
from pathlib import Path

import dagster as dg
import pyarrow.parquet as pq
import pytest
from hostile_exports import CASES as HOSTILE_CASES
from hostile_exports import write_text
from hypothesis import given, settings
from hypothesis import strategies as st

from echo_pipeline.definitions import build_resources
from echo_pipeline.defs.exports import export_assets
from echo_pipeline.defs.pairs import conversation_pairs, conversation_pairs_checks
from echo_pipeline.infra.layout import Layout, partition_slug
from echo_pipeline.infra.paths import data_dir

HOSTILE = Path(__file__).resolve().parents[1] / "fixtures" / "hostile"
DATA_FILES = ("chat_messages.parquet", "conversation_pairs.parquet")
ALL_FILES = ("raw_chat_export.parquet", *DATA_FILES)


def materialize(path: Path | None = None, instance: dg.DagsterInstance | None = None):
    run_config = {"ops": {"read_chat_exports": {"config": {"path": str(path)}}}} if path else {}
    return dg.materialize(
        [*export_assets, conversation_pairs, conversation_pairs_checks],
        resources=build_resources(),
        run_config=run_config,
        raise_on_error=False,
        instance=instance,
    )


def snapshot(names=ALL_FILES) -> dict[str, bytes]:
    return {name: (data_dir() / name).read_bytes() for name in names}


def failure_message(result: dg.ExecuteInProcessResult) -> tuple[str, str]:
    """(step, first line of its error) of the run's one failed step."""
    (failure,) = [e for e in result.all_events if e.is_step_failure]
    return failure.step_key, failure.step_failure_data.error.message.splitlines()[0]


@pytest.fixture
def sample_ingested(pipeline_env):
    assert materialize().success
    return snapshot()


# how the one line goes on after "<path>: "; the step that fails is always read_chat_exports
# (the manifest and the messages are written together, only once every file has parsed)
BROKEN = {
    "dce_html_export.html": "this is a DiscordChatExporter HTML export; re-export with "
    "DiscordChatExporter `-f Json`",
    "binary_named.json": "binary file (contains NUL bytes)",
    "wrong_header.csv": "unexpected CSV header 'id,user,time,text'; expected `AuthorID,Author,Date,Content",
    # Truncation shows only when the whole file is parsed; the manifest of the earlier run
    # must survive it too (it did not when listing and reading were two assets).
    "truncated_mid_message.json": "truncated or invalid JSON at byte 1884 of 1884 (the file "
    "ends mid-document; the export was probably interrupted, re-export it)",
}


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_a_broken_export_fails_the_run_naming_the_file_and_keeps_earlier_files(
    sample_ingested, name
):
    path = HOSTILE / name
    result = materialize(path)
    assert not result.success
    failed_step, line = failure_message(result)
    assert failed_step == "read_chat_exports"
    assert line.startswith(f"dagster._core.definitions.events.Failure: {path}: {BROKEN[name]}")
    assert snapshot() == sample_ingested


def _other_apps_broken(root: Path) -> dict[str, tuple[Path, str]]:
    """One broken export of each other app, written as they go wrong: (path, how its line goes
    on after "<path>: ")."""
    import json
    import zipfile

    telegram = json.dumps(
        {
            "name": "Bob",
            "type": "personal_chat",
            "id": 4242,
            "messages": [{"id": 1, "type": "message", "date_unixtime": "1672567200", "text": "hi"}],
        }
    )
    (root / "telegram.json").write_text(telegram[: len(telegram) // 2])  # a cut download
    thread = root / "inbox" / "bob_1" / "message_1.json"
    thread.parent.mkdir(parents=True)
    thread.write_text(
        json.dumps({"participants": [{"name": "A"}], "messages": {"sender_name": "A"}})
    )
    day = root / "slack" / "general" / "2023-01-05.json"
    day.parent.mkdir(parents=True)
    (root / "slack" / "users.json").write_text('[{"id": "U1", "name": "a"}]')
    (root / "slack" / "channels.json").write_text('[{"id": "C1", "name": "general"}]')
    day.write_text('[{"type": "message", "user": "U1", "text": "x"}]')
    slip = root / "WhatsApp Chat - Bob.zip"
    with zipfile.ZipFile(slip, "w") as archive:
        archive.writestr("../../_chat.txt", "[12/01/2023, 10:00:00] Bob: hi\n")
    return {
        "telegram": (root / "telegram.json", "truncated JSON: the file ends mid-document"),
        "meta": (thread, "not a Meta thread JSON as downloaded"),
        "slack": (day, 'message 1 has no "ts"'),
        "zip": (slip, "member '../../_chat.txt'"),
    }


@pytest.mark.parametrize("app", ["telegram", "meta", "slack", "zip"])
def test_a_broken_export_of_another_app_fails_naming_it_and_keeps_earlier_files(
    sample_ingested, tmp_path, app
):
    path, problem = _other_apps_broken(tmp_path)[app]
    assert_read_fails_naming(materialize(path), path, problem)
    assert snapshot() == sample_ingested


def assert_read_fails_naming(result: dg.ExecuteInProcessResult, path: Path, problem: str) -> None:
    """The run failed in read_chat_exports with one line: ``<path>: ...problem...``."""
    assert not result.success
    failed_step, line = failure_message(result)
    assert failed_step == "read_chat_exports"
    assert line.startswith(f"dagster._core.definitions.events.Failure: {path}: ")
    assert problem in line


#: One of each kind of issue 23 through the assets (every case runs through the CLI in
#: exports/test_exports_hostile_folders.py): a far date, too-deep JSON, a misdiagnosis, a member.
ISSUE_23 = ["slack_far_date", "meta_deep", "telegram_in_a_list", "far_date_in_an_archive"]


@pytest.mark.parametrize("case", ISSUE_23)
def test_a_hostile_file_in_a_folder_fails_naming_it_and_keeps_earlier_files(
    sample_ingested, tmp_path, case
):
    folder = tmp_path / "exports"
    write_text(folder / "WhatsApp Chat with Bob.txt", "15/01/2024, 10:00 - Bob: hi\n")
    write, problem = HOSTILE_CASES[case]
    bad = write(folder / "bad")
    assert_read_fails_naming(materialize(folder), bad, problem)
    assert snapshot() == sample_ingested


def test_me_absent_fails_with_the_candidates_and_keeps_the_earlier_pairs(sample_ingested):
    result = materialize(HOSTILE / "me_absent.json")
    assert not result.success
    step, line = failure_message(result)
    assert step == "conversation_pairs"
    assert (
        "no author matches me=['alex']; candidates: sam (id 855575384304008197, 3 messages), "
        in line
    )
    assert "jordan (id 401234567890123456, 3 messages)" in line
    assert snapshot(["conversation_pairs.parquet"]) == {
        "conversation_pairs.parquet": sample_ingested["conversation_pairs.parquet"]
    }


def test_a_one_author_export_fails_the_blocking_has_pairs_check(pipeline_env):
    """Decision: a valid export with nobody to answer is not an error of the export; its pairs
    table is honestly empty, and the blocking check stops the run before anything trains."""
    instance = dg.DagsterInstance.ephemeral()
    result = materialize(HOSTILE / "one_author.json", instance=instance)
    assert not result.success
    step, line = failure_message(result)
    assert step == "conversation_pairs_checks" and "blocking asset check failed" in line
    checks = {e.check_name: e for e in result.get_asset_check_evaluations()}
    assert not checks["has_pairs"].passed
    assert checks["has_pairs"].metadata["pairs"].value == 0
    assert all(c.passed for name, c in checks.items() if name != "has_pairs")
    assert pq.read_table(data_dir() / "conversation_pairs.parquet").num_rows == 0
    logs = [e.user_message for e in instance.all_logs(result.run_id)]
    assert any("only one author in the export: nobody to reply to, so no pairs" in m for m in logs)


def test_the_hostile_fixtures_are_what_the_generator_writes(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_fixtures", HOSTILE / "make_fixtures.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for path in module.write_all(tmp_path):
        assert path.read_bytes() == (HOSTILE / path.name).read_bytes(), path.name


# --- names from an export never become paths ------------------------------------------------


def files_under(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file()}


def test_channel_and_attachment_names_cannot_write_outside_the_data_folder(pipeline_env):
    """``hostile_names.json`` reads fine: its channel is ``../../etc`` (id too), its guild
    ``../../../tmp``, its attachments ``../../../../etc/passwd`` and ``/tmp/...``. Ingest writes
    exactly the three asset files, and every string is kept as data, never as a path."""
    source = HOSTILE / "hostile_names.json"
    names = ["../../etc", "../../etc/chatml|demo", "../../../tmp", "../../../../etc/passwd"]
    names += ["/tmp/echo_pipeline_escape.txt", "chatml|demo", "chatml__demo"]
    bases = [data_dir(), data_dir() / "chat_messages", data_dir() / "conversation_pairs"]
    candidates = {Path(os.path.normpath(base / name)) for base in bases for name in names}
    existing = {p for p in candidates if p.exists()}
    before = files_under(pipeline_env)

    result = materialize(source)
    # every asset materialises; only the held-out check fails (the file is one conversation)
    failed = {e.check_name for e in result.get_asset_check_evaluations() if not e.passed}
    assert failed <= {"has_heldout_pairs"}
    assert {m.asset_key.to_user_string() for m in result.get_asset_materialization_events()} == {
        "raw_chat_export",
        "chat_messages",
        "conversation_pairs",
    }
    new = files_under(pipeline_env) - before
    new -= {p for p in new if p.is_relative_to(pipeline_env / "dagster_home")}
    assert {p.relative_to(data_dir()).as_posix() for p in new} == set(ALL_FILES)
    assert {p for p in candidates if p.exists()} == existing  # nothing created at any of them
    messages = pq.read_table(data_dir() / "chat_messages.parquet").to_pandas()
    assert set(messages["channel_id"]) == {"../../etc"}  # data, not a location
    assert set(messages["channel_name"]) == {"../../etc/chatml|demo"}


HOSTILE_KEYS = ["../../etc", "..", ".", "/etc/passwd", "chatml|demo", "a/../../b", "..\\..\\x", ""]


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.sampled_from(HOSTILE_KEYS), st.text(max_size=40)))
def test_partition_slugs_are_single_file_names(key):
    slug = partition_slug(key)
    assert slug and "/" not in slug and "\\" not in slug and "\x00" not in slug
    assert not slug.startswith(".")  # never "..", never hidden
    assert Path(slug).name == slug and len(Path(slug).parts) == 1


@settings(max_examples=100, deadline=None)
@given(
    st.one_of(st.sampled_from(HOSTILE_KEYS), st.text(max_size=30)),
    st.one_of(st.sampled_from(HOSTILE_KEYS), st.text(max_size=30)),
)
def test_every_partitioned_output_path_stays_in_the_data_folder(first, second):
    root = data_dir()
    layout = Layout(root)
    paths = [
        layout.adapter_dir(first, second),
        layout.training_work_dir(first, second),
        layout.dataset_path(first),
        layout.jsonl_dir(first),
        layout.asset_path(dg.AssetKey("template_dataset").path, f"{first}|{second}"),
    ]
    for path in paths:
        resolved = Path(os.path.normpath(path))
        assert resolved.is_relative_to(root), path
        assert ".." not in resolved.relative_to(root).parts


# --- ...and nothing downstream picks the empty pairs up in a later run ------------------------


def automation_requests_after_a_one_author_ingest(defs: dg.Definitions) -> set[str]:
    """template_dataset partitions automation would request after a good, then a one-author
    ingest (the blocking check failed in that run)."""
    instance = dg.DagsterInstance.ephemeral()
    assert materialize(instance=instance).success
    baseline = dg.evaluate_automation_conditions(defs=defs, instance=instance)
    assert not materialize(HOSTILE / "one_author.json", instance=instance).success
    tick = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=baseline.cursor)
    return set(tick.get_requested_partitions(dg.AssetKey("template_dataset")))


def test_automation_does_not_render_datasets_from_pairs_that_failed_their_checks(pipeline_env):
    from echo_pipeline.definitions import defs

    assert automation_requests_after_a_one_author_ingest(defs) == set()


def test_the_proposed_automation_condition_waits_for_passing_checks(pipeline_env):
    from echo_pipeline.definitions import ALL_ASSETS, ALL_CHECKS
    from echo_pipeline.defs.datasets import template_dataset

    condition = (
        dg.AutomationCondition.eager() & dg.AutomationCondition.all_deps_blocking_checks_passed()
    )
    fixed = template_dataset.map_asset_specs(
        lambda spec: spec.replace_attributes(automation_condition=condition)
    )
    assets = [fixed if a is template_dataset else a for a in ALL_ASSETS]
    defs = dg.Definitions(assets=assets, asset_checks=ALL_CHECKS, resources=build_resources())
    assert automation_requests_after_a_one_author_ingest(defs) == set()
