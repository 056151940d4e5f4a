"""The leaderboard from MLflow runs: latest runs per adapter, mean-rank order, staleness."""

from __future__ import annotations

import pandas as pd

from echo_pipeline.evaluation.comparison import (
    leaderboard_from_runs,
    leaderboard_markdown,
    render_leaderboard,
    write_leaderboard,
)


def run(run_id, start, template, experiment, kind=None, trained_by=None, **metrics):
    row = {
        "run_id": run_id,
        "start_time": pd.Timestamp(start, tz="UTC"),
        "tags.echo.template": template,
        "tags.echo.experiment": experiment,
        "tags.echo.run_kind": kind,
        "tags.echo.training_run_id": trained_by,
    }
    return row | {f"metrics.{k}": v for k, v in metrics.items()}


GOOD = dict(adapter_attributed_share=0.8, adapter_style_distance=0.1, adapter_reply_loss=2.0,
            adapter_stop_rate=1.0, adapter_similarity_to_real=0.5)  # fmt: skip
POOR = dict(adapter_attributed_share=0.2, adapter_style_distance=0.4, adapter_reply_loss=2.5,
            adapter_stop_rate=0.5, adapter_similarity_to_real=0.3)  # fmt: skip
RUNS = pd.DataFrame(
    [
        run(
            "t-chatml",
            "2026-01-02",
            "chatml",
            "demo",
            base_test_reply_loss=3.0,
            adapter_test_reply_loss=2.0,
        ),
        run("e-chatml-old", "2026-01-01", "chatml", "demo", "evaluation", "t-old", **POOR),
        run("e-chatml", "2026-01-03", "chatml", "demo", "evaluation", "t-chatml", **GOOD),
        run("t-llama", "2026-01-02", "llama2_chat", "demo", adapter_test_reply_loss=2.2),
        run("e-llama", "2026-01-03", "llama2_chat", "demo", "evaluation", "t-llama", **POOR),
        run("t-hermes", "2026-01-05", "nous_hermes", "demo", adapter_test_reply_loss=2.4),
        run("t-nohermes", "2026-01-05", None, None),  # not an echo run at all
    ]
)


def test_one_row_per_adapter_with_its_latest_evaluation_best_first():
    board = leaderboard_from_runs(RUNS)
    assert board[["template", "experiment"]].values.tolist() == [
        ["chatml", "demo"],
        ["llama2_chat", "demo"],
        ["nous_hermes", "demo"],
    ]
    assert board["rank"].tolist() == [1, 2, 3]
    chatml = board.iloc[0]
    assert chatml["evaluation_run_id"] == "e-chatml" and chatml["training_run_id"] == "t-chatml"
    assert chatml["adapter_attributed_share"] == 0.8 and not chatml["stale"]


def test_an_adapter_not_yet_evaluated_shows_its_training_loss_and_is_stale():
    hermes = leaderboard_from_runs(RUNS).set_index("template").loc["nous_hermes"]
    assert hermes["adapter_reply_loss"] == 2.4
    assert pd.isna(hermes["adapter_attributed_share"]) and hermes["stale"]


def test_an_evaluation_of_an_older_adapter_is_stale():
    retrained = pd.concat([RUNS, pd.DataFrame([run("t-chatml-2", "2026-01-04", "chatml", "demo")])])
    chatml = leaderboard_from_runs(retrained).set_index("template").loc["chatml"]
    assert chatml["training_run_id"] == "t-chatml-2" and chatml["stale"]


def test_the_verdict_ranks_before_any_count_of_small_wins():
    # llama2_chat wins every number but collapsed; chatml loses them all but sounds like you.
    runs = pd.DataFrame(
        [
            run("t-chatml", "2026-01-02", "chatml", "demo"),
            run("e-chatml", "2026-01-03", "chatml", "demo", "evaluation", "t-chatml", **POOR),
            run("t-llama", "2026-01-02", "llama2_chat", "demo"),
            run("e-llama", "2026-01-03", "llama2_chat", "demo", "evaluation", "t-llama", **GOOD),
        ]
    )
    runs["tags.echo.verdict"] = [None, "sounds like you", None, "collapsed"]
    board = leaderboard_from_runs(runs)
    assert board["template"].tolist() == ["chatml", "llama2_chat"]
    assert board["verdict"].tolist() == ["sounds like you", "collapsed"]
    assert "| 1 | chatml | demo | sounds like you |" in leaderboard_markdown(board)


def test_no_runs_gives_an_empty_board_that_still_renders(tmp_path):
    board = leaderboard_from_runs(pd.DataFrame())
    assert board.empty and "rank" in board.columns
    files = write_leaderboard(board, tmp_path)
    assert files.csv.read_text().startswith("rank,template,experiment")
    assert "0 adapters" in files.html.read_text()


def test_markdown_and_html_show_every_adapter(tmp_path):
    board = leaderboard_from_runs(RUNS)
    markdown = leaderboard_markdown(board)
    assert (
        markdown.count("\n") == 2 + len(board) - 1
        and "| 1 | chatml | demo | – | 0.800 |" in markdown
    )
    page = render_leaderboard(board)
    assert page.count("<tr>") == 1 + len(board) and "data:image/png;base64," in page
    files = write_leaderboard(board, tmp_path)
    assert pd.read_csv(files.csv)["template"].tolist() == ["chatml", "llama2_chat", "nous_hermes"]
