"""The echo-pipeline command line on real exports: outputs, and one-line errors with status 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from echo_pipeline.infra.paths import sample_export_dir
from echo_pipeline.operations.cli import EXIT_BAD_INPUT, main

FIXTURES = Path(__file__).parents[1] / "fixtures" / "discord"


def test_inspect_json_reports_format_counts_and_authors(capsys):
    assert main(["inspect", str(sample_export_dir()), "--json"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(lines) == 3
    first = lines[0]
    assert {"path", "format", "messages", "authors", "first", "last"} <= set(first)
    assert first["format"] == "discord_json" and first["messages"] == 2500
    assert first["authors"][0] == {"id": "291274804919574979", "name": "alex", "messages": 1375}


def test_inspect_reads_the_legacy_csv_fixture(capsys):
    csv = next(FIXTURES.glob("*.csv"))
    assert main(["inspect", str(csv)]) == 0
    out = capsys.readouterr().out
    assert "discord_csv_legacy" in out and "KomodoWorld#8282" in out


def test_pairs_writes_parquet_and_prints_splits(tmp_path, capsys):
    out = tmp_path / "pairs.parquet"
    assert main(["pairs", str(sample_export_dir()), "--me", "alex", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "pairs" in printed and "train" in printed and "redacted" in printed
    assert pq.read_table(out).num_rows > 500


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"", "empty"),
        (b"\x00\x01\x02binary\xff\xfe", "binary"),
        (b'{"guild": {}, "channel": {"id": "1"}, "messages": [{"id": "1", "con', "truncated"),
        (b"<!DOCTYPE html><html><head><title>Discord</title>", "-f Json"),
        (b"Name,Date,Text\n1,2,3\n", "unrecognised"),
        (b'AuthorID,Author,Date,Content\n"1","a","2020-01-01","hi"\n', "header"),
    ],
)
def test_bad_input_exits_2_with_one_line_naming_the_file(tmp_path, content, problem):
    bad = tmp_path / "export.json"
    bad.write_bytes(content)
    proc = subprocess.run(
        [sys.executable, "-m", "echo_pipeline.operations.cli", "pairs", str(bad), "--me", "alex"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == EXIT_BAD_INPUT
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and str(bad) in lines[0] and problem in lines[0]
    assert "Traceback" not in proc.stderr


def test_missing_file_and_unknown_me(tmp_path, capsys):
    assert main(["inspect", str(tmp_path / "nope.json")]) == EXIT_BAD_INPUT
    assert "nope.json" in capsys.readouterr().err
    assert main(["pairs", str(sample_export_dir()), "--me", "nobody"]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert "candidates" in err and "alex" in err


def test_show_labels_prints_masked_prompt_and_labelled_reply(tmp_path, capsys, base_model):
    out = tmp_path / "pairs.parquet"
    assert main(["pairs", str(sample_export_dir()), "--me", "alex", "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["show-labels", "--template", "chatml", "--pairs", str(out), "-n", "1"]) == 0
    table = capsys.readouterr().out
    assert "-100" in table and "<|im_end|>" in table


SAMPLING = {"temperature": 1.3, "top_p": 0.9}  # 1.3: the adapter's own, measured in training


def sampled_reply(model, tokenizer, prompt: str, *, max_new_tokens: int, seed: int) -> str:
    """``model``'s own continuation of ``prompt`` in ChatML, sampled from ``seed`` with
    ``SAMPLING`` and a repetition penalty of 1.1 on the reply's own tokens, up to the
    template's EOS, decoded."""
    import torch
    from transformers import LogitsProcessorList, RepetitionPenaltyLogitsProcessor

    from echo_pipeline.datasets.tokenization import stop_token_id, tokenize_inference_prompt

    ids = tokenize_inference_prompt("chatml", tokenizer, [], prompt, "", prompt_author="friend")
    eos = stop_token_id("chatml", tokenizer)
    torch.manual_seed(seed)
    with torch.inference_mode():
        out = model.generate(
            input_ids=torch.tensor([ids]),
            attention_mask=torch.ones(1, len(ids), dtype=torch.long),
            max_new_tokens=max_new_tokens,
            do_sample=True,
            eos_token_id=eos,
            pad_token_id=eos,
            logits_processor=LogitsProcessorList(
                [RepetitionPenaltyLogitsProcessor(1.1, prompt_ignore_length=len(ids))]
            ),
            **SAMPLING,
        )
    new = out[0, len(ids) :].tolist()
    assert len(new) <= max_new_tokens
    new = new[: new.index(eos)] if eos in new else new
    return tokenizer.decode(new, skip_special_tokens=True).strip()


@pytest.mark.slow
def test_chat_one_shot_with_an_adapter(tmp_path, capsys, monkeypatch, base_model):
    """One-shot chat prints the model's reply to the prompt in the adapter's template (ChatML,
    the partner speaking), sampled from the seed and cut at the template's EOS: exactly what the
    loaded model generates from that prompt and seed, decoded."""
    from untrained import write_untrained_adapter

    from echo_pipeline.serving.chat import ChatSession
    from echo_pipeline.training.base_model import load_tokenizer

    adapter = write_untrained_adapter(
        base_model,
        tmp_path / "adapter",
        template="chatml",
        results={"calibrated_temperature": SAMPLING["temperature"]},
    )
    sessions = []  # the session the CLI builds, to reuse its loaded model below
    from_adapter = ChatSession.from_adapter.__func__

    def recording(cls, *args, **kwargs):
        sessions.append(from_adapter(cls, *args, **kwargs))
        return sessions[-1]

    monkeypatch.setattr(ChatSession, "from_adapter", classmethod(recording))
    prompt = "hey, are you coming?"
    flags = ["--top-p", "0.9", "--repetition-penalty", "1.1"]  # the temperature: the adapter's
    argv = ["chat", "--adapter", str(adapter), "--prompt", prompt, "--max-new-tokens", "8"]
    capsys.readouterr()
    assert main([*argv, *flags, "--seed", "4"]) == 0
    printed = capsys.readouterr().out

    (session,) = sessions
    assert session.template == "chatml" and session.prompt.system_prompt == ""
    tokenizer = load_tokenizer(base_model)
    expected = sampled_reply(session.model, tokenizer, prompt, max_new_tokens=8, seed=4)
    assert expected and printed == expected + "\n"
    assert "<|im_end|>" not in printed and "<|im_start|>" not in printed
    assert main(["chat", "--adapter", str(tmp_path / "missing")]) == EXIT_BAD_INPUT


def test_run_hands_me_to_the_pipeline_as_run_config_not_through_the_environment(
    monkeypatch, tmp_path
):
    from echo_pipeline.infra.quiet import VERBOSE_ENV
    from echo_pipeline.operations import runner

    for name in ("ECHO_ME", "ECHO_EXPORT_DIR", "ECHO_BASE_MODEL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(VERBOSE_ENV, "1")  # -v sets it; monkeypatch puts it back afterwards
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))
    seen = {}

    def run_pipeline(templates, experiments, *, run_config, **kwargs):
        seen["run_config"] = run_config
        return runner.RunOutcome(0)

    monkeypatch.setattr(runner, "run_pipeline", run_pipeline)
    args = ["run", "--export", str(sample_export_dir()), "--me", "alex", "--me", "123", "-v"]
    args += ["--base-model", "smollm2-135m-instruct"]
    assert main(args) == 0
    assert seen["run_config"]["ops"]["conversation_pairs"]["config"]["me"] == ["alex", "123"]
    assert seen["run_config"]["ops"]["read_chat_exports"]["config"]["path"] == str(
        sample_export_dir().resolve()
    )
    assert not {"ECHO_ME", "ECHO_EXPORT_DIR", "ECHO_BASE_MODEL"} & set(os.environ)
