"""The HTML report renders whole: well-formed, its tables and images there, chat text escaped."""

from __future__ import annotations

import base64
import json
from html.parser import HTMLParser

import pandas as pd
import pytest

from echo_pipeline.evaluation.attribution import AuthorshipClassifier
from echo_pipeline.evaluation.config import EvaluationConfig
from echo_pipeline.evaluation.evaluate import (
    EvaluationResult,
    adapter_vs_base,
    score_replies,
)
from echo_pipeline.evaluation.report import render_report, write_report

VOID = {"meta", "img", "br", "hr", "link", "input", "source", "col", "wbr"}
HOSTILE = '<script>alert("pwned")</script></td></table><img src=x onerror=alert(1)>'


class Structure(HTMLParser):
    """Tags in order, checking that every opened element is closed in the right order."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.tags: list[tuple[str, dict]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        if tag not in VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1:] or 'nothing'}")
        else:
            self.stack.pop()

    def handle_data(self, data):
        self.text.append(data)


def parse(html: str) -> Structure:
    parser = Structure()
    parser.feed(html)
    parser.close()
    assert not parser.errors and not parser.stack, (parser.errors, parser.stack)
    return parser


@pytest.fixture(scope="module")
def result() -> EvaluationResult:
    mine = ["lol yeah", "nah tbh", "ok cool", "same lol", "omg yes", "yeah for sure"]
    others = ["Hello there!", "How are you?", "That is great.", "See you soon!", "Thanks a lot."]
    classifier = AuthorshipClassifier.fit(mine, others)
    samples = pd.DataFrame(
        {
            "pair_id": ["p1", "p2", "p3"],
            "prompt_author": ["sam", "sam", "<b>eve</b>"],
            "prompt": ["Are you coming tonight?", "Did you eat?", HOSTILE],
            "real": ["yeah lol", "nah not yet", "lol what"],
            "base": ["Yes, I will be there.", "I have eaten, thank you!", ""],
            "adapter": ["yeah for sure", "nah lol", HOSTILE],
            "base_stopped": [True, False, True],
            "adapter_stopped": [True, True, True],
        }
    )
    samples, metrics = score_replies(samples, classifier)
    metrics |= {
        "base_reply_loss": 3.2,
        "adapter_reply_loss": 2.1,
        "base_perplexity": 24.5,
        "adapter_perplexity": 8.2,
        "base_stop_rate": 2 / 3,
        "adapter_stop_rate": 1.0,
        "evaluated_prompts": 3.0,
        "heldout_pairs": 10.0,
        "attribution_heldout_balanced_accuracy": 0.9,
    }
    lineage = {
        "base_model": {"source": "smollm2-135m-instruct", "fingerprint": "sha256:abc"},
        "dataset_path": "/data/template_dataset/chatml.parquet",
        "dataset_digest": "d1g3st",
        "adapter_dataset_digest": "d1g3st",
        "dataset_matches_adapter": True,
        "heldout_split": "test",
        "adapter_dir": "/data/lora_adapter/chatml__demo",
        "training_run_id": "run123",
    }
    return EvaluationResult(
        "chatml", "demo", metrics, samples, lineage, EvaluationConfig().as_dict()
    )


HISTORY = {"loss": [(1, 3.0), (2, 2.5), (3, 2.2)], "eval_loss": [(2, 2.6), (3, 2.4)]}


def test_report_is_well_formed_with_tables_images_and_lineage(result):
    page = render_report(
        result, HISTORY, training_run_url="http://mlflow/#/runs/run123", evaluation_run_url=None
    )
    structure = parse(page)
    assert page.startswith("<!DOCTYPE html>")
    tables = [attrs.get("class") for tag, attrs in structure.tags if tag == "table"]
    assert {"scorecard", "samples", "style", "distances"} <= set(tables)
    images = [attrs["src"] for tag, attrs in structure.tags if tag == "img"]
    assert len(images) == 5  # loss curves, lengths, headline bars, style bars, attribution
    for src in images:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    links = [attrs["href"] for tag, attrs in structure.tags if tag == "a"]
    assert links == ["http://mlflow/#/runs/run123"]
    sections = [attrs["id"] for tag, attrs in structure.tags if tag == "section"]
    assert sections == ["verdict", "scorecard", "plots", "samples", "style", "lineage"]
    text = " ".join(structure.text)
    assert "d1g3st" in text and "smollm2-135m-instruct" in text and "chatml" in text


def test_sample_rows_show_prompt_real_base_and_adapter(result):
    structure = parse(render_report(result))
    text = " ".join(structure.text)
    for reply in ("Are you coming tonight?", "nah not yet", "I have eaten, thank you!", "nah lol"):
        assert reply in text
    assert "(empty)" in text and "no EOS" in text


def test_chat_text_is_escaped_never_markup(result):
    page = render_report(result)
    structure = parse(page)
    assert not [tag for tag, _ in structure.tags if tag == "script"]
    assert not [attrs for _, attrs in structure.tags if "onerror" in attrs]
    text = " ".join(structure.text)
    assert HOSTILE in text and "<b>eve</b>" in text  # shown to the reader, as text
    assert "&lt;script&gt;" in page


def test_without_training_history_the_loss_plot_says_so(result):
    structure = parse(render_report(result, {}))
    assert sum(tag == "img" for tag, _ in structure.tags) == 4
    assert "no data" in " ".join(structure.text)


def test_write_report_writes_html_and_json(result, tmp_path):
    files = write_report(
        result, tmp_path / "out", HISTORY, evaluation_run_url="http://mlflow/#/runs/eval"
    )
    assert files.html.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
    payload = json.loads(files.metrics.read_text(encoding="utf-8"))
    assert payload["metrics"]["adapter_reply_loss"] == 2.1
    assert payload["samples"][2]["adapter"] == HOSTILE
    assert payload["evaluation_run_url"] == "http://mlflow/#/runs/eval"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["metrics.json", "report.html"]


def test_adapter_vs_base_reads_directions(result):
    verdict = adapter_vs_base(result.metrics)
    assert verdict["reply_loss"] is True and verdict["stop_rate"] is True
    assert verdict["attributed_share"] == (
        result.metrics["adapter_attributed_share"] > result.metrics["base_attributed_share"]
    )
    assert "perplexity" not in verdict  # the same fact as reply loss


def test_a_baseline_is_one_more_column_with_its_own_verdict(result):
    """Replay (or any further baseline) shows in every table and names the gate it failed."""
    import dataclasses

    from echo_pipeline.evaluation.echo_quality import verdict

    samples = result.samples.assign(replay=["ok cool", "same lol", "nah tbh"])
    metrics = dict(result.metrics) | {
        "real_memorised_share": 0.0,
        "replay_memorised_share": 1.0,
        "replay_in_context": 0.61,
        "replay_known_bigram_rate": 1.0,
    }
    replay = verdict(metrics, "replay")
    assert replay.label == "memorised"
    with_replay = dataclasses.replace(
        result,
        samples=samples,
        metrics=metrics,
        verdicts={"replay": replay},
        sides=("real", "base", "adapter", "replay"),
    )
    structure = parse(render_report(with_replay))
    text = " ".join(structure.text)
    assert text.count("replay (my nearest train reply)") >= 4  # verdict, scorecard, samples, style
    assert "memorised: memorised_share 1.000 (limit <= 0.150" in text
    assert "same lol" in text and "0.610" in text
