"""Each pairing setting has one default and one description: the core's, wherever it is set.

The Dagster config of ``conversation_pairs``, the CLI's ``pairs`` flags and ``template_dataset``'s
``max_tokens`` used to repeat their defaults by hand; these tests fail as soon as one drifts.
"""

from __future__ import annotations

import dataclasses
import inspect

import pytest

from echo_pipeline.datasets.tokenization import (
    DEFAULT_MAX_TOKENS,
    build_template_dataset,
    tokenize_pair,
)
from echo_pipeline.defs.datasets import DatasetConfig
from echo_pipeline.defs.pairs import PairsConfig
from echo_pipeline.operations.cli import build_parser, with_me
from echo_pipeline.pairs import pairing_config
from echo_pipeline.pairs.pairing_config import SAMPLE_ME, SETTINGS, PairingConfig


def test_every_core_setting_is_a_dagster_setting_with_the_same_default_and_description():
    for name in SETTINGS:
        default, description = pairing_config.described(name)
        dagster_field = PairsConfig.model_fields[name]
        assert (dagster_field.default, dagster_field.description) == (default, description), name
    assert set(PairsConfig.model_fields) == {f.name for f in dataclasses.fields(PairingConfig)}


def test_the_default_dagster_config_is_the_default_core_config(monkeypatch):
    monkeypatch.delenv(pairing_config.ME_ENV, raising=False)
    assert PairsConfig().to_core() == PairingConfig(me=(SAMPLE_ME,))


def test_a_dagster_setting_reaches_the_core_config():
    core = PairsConfig(me=["ana"], max_prompt_chars=99, split_method="chronological").to_core()
    assert (core.me, core.max_prompt_chars, core.split_method) == (("ana",), 99, "chronological")


def test_me_defaults_to_the_environment_then_to_the_sample(monkeypatch):
    monkeypatch.setenv(pairing_config.ME_ENV, " 123 , ana ,")
    assert PairsConfig().me == ["123", "ana"]
    monkeypatch.delenv(pairing_config.ME_ENV)
    assert PairsConfig().me == [SAMPLE_ME]


def test_the_cli_pairs_flags_default_to_the_core_settings():
    args = build_parser().parse_args(["pairs", "export.json", "--me", "ana"])
    flags = {
        "merge_gap_s": args.merge_gap,
        "session_gap_s": args.session_gap,
        "context_turns": args.context_turns,
        "redact": not args.no_redact,
    }
    assert flags == {name: pairing_config.described(name)[0] for name in flags}


def test_max_tokens_has_one_default_for_the_asset_the_cli_and_the_core():
    assert DatasetConfig().max_tokens == DEFAULT_MAX_TOKENS == 512  # the pipeline's behaviour
    for function in (tokenize_pair, build_template_dataset):
        assert inspect.signature(function).parameters["max_tokens"].default == DEFAULT_MAX_TOKENS
    args = build_parser().parse_args(["show-labels", "--template", "chatml"])
    assert args.max_tokens is None  # show-labels then cuts at DEFAULT_MAX_TOKENS


@pytest.mark.parametrize(
    ("file_me", "flag_me", "demo", "expected"),
    [
        (None, ["ana"], False, ["ana"]),
        (["bo"], ["ana", "123"], False, ["ana", "123"]),  # --me wins over the file
        (None, None, True, [SAMPLE_ME]),  # --demo: the sample's author
        (["bo"], None, True, ["bo"]),  # ... unless the file names someone
        (["bo"], None, False, ["bo"]),
        (None, None, False, None),  # nobody named: the step's own default (ECHO_ME, the sample)
    ],
)
def test_me_reaches_the_pairs_step_as_run_config(file_me, flag_me, demo, expected):
    lora = {"config": {"max_steps": 3}}
    run_config = {"ops": {"lora_adapter": lora}}
    if file_me is not None:
        run_config["ops"]["conversation_pairs"] = {"config": {"me": file_me, "context_turns": 1}}
    result = with_me(run_config, flag_me, demo=demo)
    pairs = result["ops"].get("conversation_pairs", {}).get("config", {})
    assert pairs.get("me") == expected
    assert result["ops"]["lora_adapter"] == lora  # the other steps' settings pass through
    if file_me is not None:
        assert (
            pairs["context_turns"] == 1
            and run_config["ops"]["conversation_pairs"]["config"]["me"] == file_me
        )  # the caller's dict is not changed
