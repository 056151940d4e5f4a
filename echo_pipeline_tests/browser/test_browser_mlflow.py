"""The MLflow UI in Chromium: two training runs in a temporary store, compared side by side.

The runs are made with the MLflow client the way the pipeline names and fills them (run name
``<template>/<experiment>``, ``train.*`` params, a loss curve, held-out reply losses), and the
server is the project's own ``mlflow ui`` command from echo_pipeline.operations.servers.
"""

from __future__ import annotations

import os
import re
import time

import pytest
from browser_support import free_port, server

from echo_pipeline.infra import tracking
from echo_pipeline.operations.servers import mlflow_command

pytestmark = pytest.mark.browser

RUNS = {
    "chatml/demo": {
        "params": {"template": "chatml", "experiment": "demo", "train.learning_rate": "0.0002"},
        "loss": [3.9, 3.1, 2.6, 2.3, 2.2],
        "final": {"eval_loss": 2.41, "base_test_reply_loss": 5.36, "adapter_test_reply_loss": 3.16},
    },
    "llama2_chat/demo": {
        "params": {
            "template": "llama2_chat",
            "experiment": "demo",
            "train.learning_rate": "0.0001",
        },
        "loss": [4.2, 3.6, 3.2, 2.9, 2.8],
        "final": {"eval_loss": 2.95, "base_test_reply_loss": 5.71, "adapter_test_reply_loss": 3.58},
    },
}
ASSISTANT_CLOSE = '[data-component-id="mlflow.assistant.chat_panel.close"]'


@pytest.fixture
def mlflow_store(tmp_path) -> tuple[str, str, dict[str, str]]:
    """A fresh sqlite store with two finished runs: (tracking URI, experiment id, name -> run id)."""
    import mlflow
    from mlflow.entities import Metric, Param

    (tmp_path / "mlruns").mkdir()
    uri = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    experiment_id = tracking.ensure_experiment(uri)
    client = mlflow.MlflowClient(tracking_uri=uri)
    now = int(time.time() * 1000)
    run_ids = {}
    for index, (name, spec) in enumerate(RUNS.items()):
        start = now - (len(RUNS) - index) * 300_000  # one after the other, ~4 minutes each
        run = client.create_run(
            experiment_id,
            run_name=name,
            start_time=start,
            tags={"echo.template": spec["params"]["template"]},
        )
        steps = len(spec["loss"])
        metrics = [
            Metric("loss", value, start + step * 45_000, step)
            for step, value in enumerate(spec["loss"], 1)
        ]
        metrics += [
            Metric(key, value, start + 240_000, steps) for key, value in spec["final"].items()
        ]
        params = [Param(key, value) for key, value in spec["params"].items()]
        client.log_batch(run.info.run_id, metrics=metrics, params=params)
        client.set_terminated(run.info.run_id, end_time=start + 240_000)
        run_ids[name] = run.info.run_id
    return uri, experiment_id, run_ids


@pytest.fixture
def mlflow_ui(browser, mlflow_store, tmp_path, monkeypatch):
    uri, experiment_id, run_ids = mlflow_store
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)  # read by mlflow_command and the server
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    command = mlflow_command(port)
    log = tmp_path / "mlflow.log"
    # mlflow ui runs uvicorn workers and job consumers; stopping them all at once saves ~10 s.
    with server(command, dict(os.environ), f"{base}/health", log, timeout_s=120, term_group=True):
        yield base, experiment_id, run_ids


def close_assistant(page) -> None:
    """MLflow 3 opens an assistant panel beside the runs; close it so the comparison has room."""
    close = page.locator(ASSISTANT_CLOSE)
    if close.count() and close.first.is_visible():
        close.first.click()


def test_mlflow_compare_view_lists_both_runs(mlflow_ui, new_page, save_screenshot):
    from playwright.sync_api import expect

    base, experiment_id, run_ids = mlflow_ui
    page = new_page(width=1400, height=1580)  # tall: plot, run details, params and metrics
    page.goto(f"{base}/#/experiments/{experiment_id}/runs")
    for name in RUNS:
        expect(page.get_by_text(name, exact=True).first).to_be_visible(timeout=60_000)
    close_assistant(page)

    page.get_by_label("Select all runs").check()
    page.get_by_role("button", name="Compare", exact=True).click()
    page.wait_for_url(re.compile(r"#/compare-runs\?runs="))
    assert all(run_id in page.url for run_id in run_ids.values())
    expect(page.get_by_text("Comparing 2 Runs")).to_be_visible()
    run_names = page.locator("tr", has_text="Run Name:")
    for name, run_id in run_ids.items():
        expect(run_names).to_contain_text(name)
        expect(page.get_by_text(run_id, exact=True).first).to_be_visible()
    expect(page.locator("tr", has_text="train.learning_rate")).to_contain_text("0.0002")
    close_assistant(page)
    page.mouse.move(5, 1575)
    page.wait_for_timeout(500)  # the parallel-coordinates plot finishes drawing
    save_screenshot(page, "mlflow-compare.png")
