"""The page's list of voices: read from the adapters' records, newest first, never re-typed."""

from __future__ import annotations

import json
import os
import time

import pytest

from echo_pipeline.infra.layout import Layout
from echo_pipeline.infra.records import write_adapter_metadata
from echo_pipeline.operations.web.models import decoding_settings, discover_voices
from echo_pipeline.serving.generation import GenerationSettings


def _adapter(
    layout: Layout, template: str, experiment: str, age_s: float, report=None, results=None
) -> None:
    folder = layout.adapter_dir(template, experiment)
    path = write_adapter_metadata(
        folder,
        {
            "template": template,
            "experiment": experiment,
            "base_model": {"source": "smollm2-135m-instruct", "fingerprint": "f1"},
            "system_prompt": f"You are Sam ({template}).",
            "me_names": ["Sam"],
            "prompt": {
                "template": template,
                "system_prompt": f"You are Sam ({template}).",
                "me_names": ["Sam"],
                "context_turns": 2,
                "max_tokens": 300,
            },
            "results": results or {},
        },
    )
    then = time.time() - age_s
    os.utime(path, (then, then))
    if report is not None:
        out = layout.report_dir(template, experiment)
        out.mkdir(parents=True)
        (out / "metrics.json").write_text(json.dumps(report), encoding="utf-8")


def test_voices_come_from_the_records_newest_first(tmp_path):
    layout = Layout(tmp_path)
    report = {
        "config": {
            "generation": {"temperature": 0.5, "top_p": 0.8, "max_new_tokens": 20, "seed": 3},
        },
        "metrics": {"adapter_reply_loss": 2.25, "base_reply_loss": 3.5},
        "verdicts": {"adapter": {"label": "sounds like you"}, "base": {"label": "unlike you"}},
    }
    _adapter(layout, "chatml", "demo", age_s=100, report=report)
    _adapter(layout, "llama2_chat", "demo", age_s=10, results={"calibrated_temperature": 0.96})
    voices = discover_voices(layout)
    assert [v.id for v in voices] == [
        "demo|llama2_chat",
        "base:demo|llama2_chat",
        "demo|chatml",
        "base:demo|chatml",
    ]
    newest, _, evaluated, base = voices
    assert newest.verdict is None and newest.reply_loss is None
    # Not evaluated yet: the evaluation's defaults, at the temperature training measured for it.
    assert newest.decoding == GenerationSettings(temperature=0.96).__dict__
    assert (evaluated.verdict, evaluated.reply_loss) == ("sounds like you", 2.25)
    assert evaluated.decoding["temperature"] == 0.5
    # how it is prompted: the spec recorded with it (context turns and bound included)
    assert evaluated.prompt.system_prompt == "You are Sam (chatml)." and evaluated.me == "Sam"
    assert (evaluated.prompt.context_turns, evaluated.prompt.max_tokens) == (2, 300)
    assert evaluated.as_json()["max_prompt_tokens"] == 300
    assert base.is_base and base.adapter == "demo|chatml"
    assert (base.verdict, base.reply_loss) == ("unlike you", 3.5)  # the report's base numbers
    assert base.label.startswith("base model") and base.decoding == evaluated.decoding

    settings = decoding_settings(evaluated, {"temperature": 1.2, "seed": 9, "bogus": 1})
    assert (settings.temperature, settings.top_p, settings.seed) == (1.2, 0.8, 9)
    with pytest.raises(ValueError):
        decoding_settings(evaluated, {"top_p": 2})


def test_no_adapter_no_voice(tmp_path):
    assert discover_voices(Layout(tmp_path)) == []
