"""The README's demo numbers are today's: its table is drawn from the committed results of a
`make demo` (docs/demo_results.json), and those results were made by the code as it is now."""

from __future__ import annotations

from echo_pipeline.datasets.templates import TEMPLATE_NAMES
from echo_pipeline.operations import demo_results

REFRESH = "run `make demo && make demo-readme` and commit docs/demo_results.json and README.md"


def test_the_readme_demo_table_is_the_committed_results():
    readme = demo_results.README.read_text(encoding="utf-8")
    shown = demo_results.readme_section(readme)
    assert shown == demo_results.readme_table(demo_results.load()), f"stale table: {REFRESH}"


def test_the_committed_results_were_made_by_todays_code_and_settings():
    made_with = {k: demo_results.load()[k] for k in demo_results.code_stamp()}
    assert made_with == demo_results.code_stamp(), (
        f"the README's demo numbers are older than the code that makes them: {REFRESH}"
    )


def test_the_results_cover_every_template_and_say_why_one_is_not_trained():
    rows = {row["template"]: row for row in demo_results.load()["rows"]}
    assert list(rows) == list(TEMPLATE_NAMES)
    for template, row in rows.items():
        if row["status"].startswith("same tokens as "):
            assert "verdict" not in row and row["status"].split()[-1] in rows
        else:
            assert row["status"] == "ok", (template, row)
            assert row["adapter_reply_loss"] < row["base_reply_loss"], (template, row)


def test_the_table_round_trips_through_the_readme():
    results = {
        **demo_results.code_stamp(),
        "rows": [
            {"template": "chatml", "experiment": "demo", "status": "ok", "verdict": "unlike you",
             "base_verdict": "babbling", "base_reply_loss": 5.357, "adapter_reply_loss": 3.1749,
             "base_stop_rate": 0.28, "adapter_stop_rate": 1.0},
            {"template": "model_default", "experiment": "demo", "status": "same tokens as chatml"},
        ],
        "total_seconds": 540.0,
        "made": "2026-12-06 07:00 UTC",
        "machine": "x86_64, 2 CPU cores",
    }  # fmt: skip
    readme = f"intro\n{demo_results.TABLE_START}\nold\n{demo_results.TABLE_END}\nafter\n"

    redrawn = demo_results.with_table(readme, results)

    assert redrawn.startswith("intro\n") and redrawn.endswith("\nafter\n")
    table = demo_results.readme_section(redrawn)
    assert table[2] == (
        "| chatml | 5.357 → **3.175** | 0.28 → **1.00** | – | babbling → **unlike you** |"
    )
    assert table[3] == "| model_default | same tokens as chatml | | | |"
    assert table[4] == ""
    assert table[5] == (
        "(`make demo` of 2026-12-06 07:00 UTC on x86_64, 2 CPU cores: 9 min in all, each "
        "step's seconds in `docs/demo_results.json`.)"
    )


def test_a_finished_demo_gives_a_row_per_template_with_its_reports_numbers():
    from echo_pipeline.operations.runner import RunOutcome, StepResult, SummaryRow

    report = {"verdict": "unlike you", "base_reply_loss": 5.3571, "report_path": "/x/report.html"}
    outcome = RunOutcome(
        0,
        rows=[
            SummaryRow("chatml", "demo", "ok"),
            SummaryRow("model_default", "demo", "same tokens as chatml"),
        ],
        steps=[
            StepResult("ingest", ok=True, seconds=12.34),
            StepResult("adapter+evaluation[demo|chatml]", ok=True, report=report, seconds=200.0),
        ],
    )

    results = demo_results.demo_results(outcome, seconds=480.04)

    chatml, model_default = results["rows"]
    assert chatml == {
        "template": "chatml",
        "experiment": "demo",
        "status": "ok",
        "step_seconds": 200.0,
        "verdict": "unlike you",
        "base_reply_loss": 5.3571,
    }  # the report's path is this machine's: not part of the results
    assert model_default["status"] == "same tokens as chatml" and "verdict" not in model_default
    assert results["steps"] == {"ingest": 12.3, "adapter+evaluation[demo|chatml]": 200.0}
    assert results["total_seconds"] == 480.0
    assert {k: results[k] for k in demo_results.code_stamp()} == demo_results.code_stamp()
