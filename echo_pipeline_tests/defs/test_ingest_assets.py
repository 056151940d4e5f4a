"""The Dagster layer for real: definitions load, ingest materialises on the sample, failures are clean."""

from __future__ import annotations

import json
import random
import subprocess
import sys

import dagster as dg
import pyarrow.parquet as pq
import pytest
from split_exports import (
    ME,
    MIXED,
    WRITERS,
    assert_same_pairs,
    cli_pairs,
    random_chat,
    write_export,
    write_split_export,
)

from echo_pipeline.definitions import ALL_ASSETS, build_resources, defs
from echo_pipeline.defs.exports import export_assets
from echo_pipeline.defs.pairs import conversation_pairs, conversation_pairs_checks
from echo_pipeline.infra import schemas
from echo_pipeline.infra.paths import data_dir

INGEST_CONFIG_BAD = {"ops": {"read_chat_exports": {"config": {"path": "{path}"}}}}


def test_definitions_load_and_name_every_stage():
    dg.Definitions.validate_loadable(defs)
    groups = {
        key.to_user_string(): asset.group_names_by_key[key]
        for asset in ALL_ASSETS
        for key in asset.keys
    }
    assert {
        "raw_chat_export",
        "chat_messages",
        "conversation_pairs",
        "template_dataset",
        "lora_adapter",
    } <= set(groups)
    assert groups["chat_messages"] == "ingest" and groups["lora_adapter"] == "training"


def test_code_location_imports_no_heavy_libraries():
    code = (
        "import sys, echo_pipeline.definitions\n"
        "heavy = [m for m in ('torch', 'transformers', 'peft', 'mlflow', 'bitsandbytes', 'pandas') if m in sys.modules]\n"
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def materialize_ingest(run_config: dict | None = None, **kwargs) -> dg.ExecuteInProcessResult:
    return dg.materialize(
        [*export_assets, conversation_pairs, conversation_pairs_checks],
        resources=build_resources(),
        run_config=run_config or {},
        **kwargs,
    )


def test_ingest_materialises_on_the_bundled_sample_with_checks(pipeline_env):
    result = materialize_ingest()
    assert result.success
    checks = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
    assert checks == {
        "has_pairs": True,
        "has_heldout_pairs": True,
        "replies_are_mine": True,
        "prompts_are_others": True,
        "pairs_within_session": True,
        "sessions_in_one_split": True,
        "no_pii_left": True,
    }
    messages = pq.read_table(data_dir() / "chat_messages.parquet")
    assert messages.schema.remove_metadata() == schemas.CHAT_MESSAGES
    assert messages.num_rows == 4300
    pairs = pq.read_table(data_dir() / "conversation_pairs.parquet")
    assert pairs.num_rows > 500
    meta = result.asset_materializations_for_node("conversation_pairs")[0].metadata
    assert meta["redactions"].value["email"] >= 1
    assert "| from | prompt | my reply | split |" in meta["preview"].value
    assert set(meta["pairs_by_split"].value) == {"train", "val", "test"}


def test_bad_export_fails_with_the_file_named_and_keeps_previous_materialisation(pipeline_env):
    assert materialize_ingest().success
    before = (data_dir() / "chat_messages.parquet").read_bytes()
    bad = pipeline_env / "broken.json"
    bad.write_text('{"guild": {"id": "1"}, "channel": {"id": "2"}, "messages": [{"id": "3", "conte')
    config = json.loads(json.dumps(INGEST_CONFIG_BAD).replace("{path}", str(bad)))
    result = materialize_ingest(config, raise_on_error=False)
    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure)
    message = failure.step_failure_data.error.message
    assert str(bad) in message and "truncated" in message
    assert (data_dir() / "chat_messages.parquet").read_bytes() == before


def test_unknown_me_fails_with_candidates(pipeline_env):
    config = {"ops": {"conversation_pairs": {"config": {"me": ["nobody"]}}}}
    result = materialize_ingest(config, raise_on_error=False)
    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure)
    assert "alex (id 291274804919574979" in failure.step_failure_data.error.message


def test_bad_config_value_is_rejected_before_running(pipeline_env):
    """Dagster's config schema has no bounds, so the run launches; the config's own validation
    then fails the step before the asset body runs, naming the field and its bound."""
    config = {"ops": {"conversation_pairs": {"config": {"context_turns": -1}}}}
    result = materialize_ingest(config, raise_on_error=False)
    assert not result.success
    (failure,) = [e for e in result.all_events if e.is_step_failure]
    assert failure.step_key == "conversation_pairs"
    cause = failure.step_failure_data.error.cause
    assert cause.cls_name == "ValidationError"
    assert "1 validation error for PairsConfig\ncontext_turns\n" in cause.message
    assert "Input should be greater than or equal to 0" in cause.message
    materialized = {m.asset_key.to_user_string() for m in result.get_asset_materialization_events()}
    assert materialized == {"raw_chat_export", "chat_messages"}
    assert not (data_dir() / "conversation_pairs.parquet").exists()


@pytest.mark.parametrize(("seed", "formats"), [(23, sorted(WRITERS)), (5, list(MIXED))])
def test_split_exports_pair_like_the_whole_through_dagster(pipeline_env, seed, formats):
    """The split property of ``exports/test_exports_split.py`` through the assets: a folder of
    every format (and the Discord JSON + WhatsApp + Telegram + Slack mix), each chat split into
    overlapping parts, gives the pairs ``echo-pipeline pairs`` gives for the whole exports."""
    rng = random.Random(seed)
    for fmt in formats:
        chat = random_chat(rng, rng.randint(10, 20))
        write_export(fmt, pipeline_env / "whole" / fmt, chat)
        write_split_export(fmt, pipeline_env / "split" / fmt, chat, rng, rng.randint(2, 5))
    whole = cli_pairs(pipeline_env / "whole", pipeline_env / "whole.parquet")
    config = {
        "ops": {
            "read_chat_exports": {"config": {"path": str(pipeline_env / "split")}},
            "conversation_pairs": {"config": {"me": [ME]}},
        }
    }
    assert materialize_ingest(config).success
    split = pq.read_table(data_dir() / "conversation_pairs.parquet")
    assert len(set(split["channel_id"].to_pylist())) == len(formats)
    assert_same_pairs(whole, split)
