"""The evaluation report renders in Chromium: its tables and plots are there, and nothing runs.

The report is one self-contained HTML file (inline CSS, plots as data: PNGs, no scripts), so it
is opened from disk. A report built here from a small, hostile-text result is always checked.
With ``ECHO_UPDATE_SCREENSHOTS=1`` the pipeline's own report
(``<data>/evaluation_report/<template>__<experiment>/report.html``, after ``make demo``) is
checked too when it exists, and is the one the screenshot shows.
"""

from __future__ import annotations

import os

import pandas as pd
import pytest

from echo_pipeline.evaluation.attribution import AuthorshipClassifier
from echo_pipeline.evaluation.config import EvaluationConfig
from echo_pipeline.evaluation.evaluate import EvaluationResult, score_replies
from echo_pipeline.evaluation.report import write_report
from echo_pipeline.infra.paths import data_dir

pytestmark = pytest.mark.browser

TABLES = ("scorecard", "samples", "style", "distances")
SECTIONS = ["verdict", "scorecard", "plots", "samples", "style", "lineage"]
HOSTILE = '<img src=x onerror="window.pwned=1"><script>window.pwned=2</script>'
HISTORY = {"loss": [(1, 3.4), (2, 2.9), (3, 2.5), (4, 2.3)], "eval_loss": [(2, 2.8), (4, 2.5)]}


@pytest.fixture(scope="module")
def small_report(tmp_path_factory):
    """A report from a tiny result (no model): same renderer, same file layout as the pipeline's."""
    mine = ["lol yeah", "nah tbh", "ok cool", "same lol", "omg yes", "yeah for sure"]
    others = ["Hello there!", "How are you?", "That is great.", "See you soon!", "Thanks a lot."]
    samples = pd.DataFrame(
        {
            "pair_id": ["p1", "p2", "p3"],
            "prompt_author": ["sam", "sam", "eve"],
            "prompt": ["Are you coming tonight?", "Did you eat?", HOSTILE],
            "real": ["yeah lol", "nah not yet", "lol what"],
            "base": ["Yes, I will be there.", "I have eaten, thank you!", ""],
            "adapter": ["yeah for sure", "nah lol", HOSTILE],
            "base_stopped": [True, False, True],
            "adapter_stopped": [True, True, True],
        }
    )
    samples, metrics = score_replies(samples, AuthorshipClassifier.fit(mine, others))
    metrics |= {
        "base_reply_loss": 3.2,
        "adapter_reply_loss": 2.1,
        "base_perplexity": 24.5,
        "adapter_perplexity": 8.2,
        "base_stop_rate": 2 / 3,
        "adapter_stop_rate": 1.0,
        "evaluated_prompts": 3.0,
        "heldout_pairs": 10.0,
    }
    lineage = {
        "base_model": {"source": "smollm2-135m-instruct"},
        "dataset_digest": "d1g3st",
        "heldout_split": "test",
    }
    result = EvaluationResult(
        "chatml", "demo", metrics, samples, lineage, EvaluationConfig().as_dict()
    )
    out = tmp_path_factory.mktemp("evaluation_report") / "chatml__demo"
    return write_report(result, out, HISTORY).html


def pipeline_reports() -> list:
    return sorted(data_dir().glob("evaluation_report/*/report.html"))


def open_and_check(new_page, report):
    """Open ``report`` from disk and assert it renders whole, offline, with no script running."""
    from playwright.sync_api import expect

    page = new_page(width=1280, height=900)
    fetched: list[str] = []
    page.on("request", lambda request: fetched.append(request.url))
    page.goto(report.as_uri())
    page.wait_for_load_state("load")

    assert page.evaluate("[...document.querySelectorAll('section')].map(s => s.id)") == SECTIONS
    expect(page.get_by_role("heading", level=1)).to_be_visible()
    for name in TABLES:
        table = page.locator(f"table.{name}")
        expect(table).to_be_visible()
        assert table.locator("tr").count() >= 2, f"table {name} has no rows"
    images = page.evaluate(
        "[...document.images].map(i => ({src: i.src.slice(0, 22), complete: i.complete,"
        " width: i.naturalWidth, height: i.naturalHeight}))"
    )
    assert len(images) >= 4
    for image in images:
        assert image["src"] == "data:image/png;base64,", image
        assert image["complete"] and image["width"] > 0 and image["height"] > 0, image
    for index in range(len(images)):
        expect(page.locator("img").nth(index)).to_be_visible()
    assert page.evaluate("window.pwned") is None  # chat text stayed text
    assert page.locator("script").count() == 0
    outside = [url for url in fetched if not url.startswith(("file://", "data:"))]
    assert not outside, f"the report fetched {outside}"
    return page


def test_report_renders_tables_and_plots_in_chromium(small_report, new_page, save_screenshot):
    from playwright.sync_api import expect

    page = open_and_check(new_page, small_report)
    samples = page.locator("table.samples")
    expect(samples).to_contain_text(HOSTILE)  # shown to the reader, as text
    expect(samples).to_contain_text("Are you coming tonight?")

    real = pipeline_reports()
    if real and os.environ.get("ECHO_UPDATE_SCREENSHOTS") == "1":
        # The pipeline's own report makes the better picture: check it, then show it. Only when
        # refreshing docs/img/, so an old report left in data/ never fails an ordinary run.
        page = open_and_check(new_page, real[0])
    # Verdict, scorecard and plots: the top of the report, down to the per-prompt samples.
    height = page.evaluate(
        "Math.ceil(document.getElementById('samples').getBoundingClientRect().top)"
    )
    save_screenshot(
        page,
        "evaluation-report.png",
        full_page=True,
        clip={"x": 0, "y": 0, "width": 1280, "height": height},
    )
