"""The Dagster web UI end to end in Chromium: graph, a materialisation launched by clicking, its run.

Starts the project's own ``dagster dev`` command (workspace.yaml, 127.0.0.1, a free port) on a
temporary instance made from our dagster.yaml, so the first-visit tour is off exactly as for a
user. Data and MLflow go to temporary folders; only the base-model cache is shared.
"""

from __future__ import annotations

import os
import re
import time

import pytest
from browser_support import free_port, log_tail, post_json, server

from echo_pipeline.infra import paths
from echo_pipeline.operations.runner import ensure_dagster_home
from echo_pipeline.operations.servers import dagster_command

pytestmark = pytest.mark.browser

ASSETS = (
    "raw_chat_export",
    "chat_messages",
    "conversation_pairs",
    "template_dataset",
    "lora_adapter",
    "evaluation_report",
    "model_comparison",
)
INGEST = ("raw_chat_export", "chat_messages", "conversation_pairs")
#: The side navigation folded, so the graph gets the width (a user's own choice, kept in storage).
NAV_COLLAPSED = "window.localStorage.setItem('dagster-nav-collapsed', 'true');"
RUN_QUERY = """
query RunStatus($runId: ID!) {
  runOrError(runId: $runId) {
    __typename
    ... on Run { status assetSelection { path } }
  }
}
"""
EVENTS_QUERY = """
query RunEvents($runId: ID!) {
  logsForRun(runId: $runId) {
    ... on EventConnection { events { __typename ... on MessageEvent { message } } }
  }
}
"""
LOCATIONS_QUERY = (
    "{ workspaceOrError { ... on Workspace { locationEntries { name loadStatus } } } }"
)
RUN_TIMEOUT_S = 150


@pytest.fixture
def dagster_ui(browser, tmp_path, monkeypatch):
    """``dagster dev`` on a free port with a temporary home; yields its URL, log and data folder."""
    models = paths.models_dir()  # before ECHO_DATA_DIR moves: the converted model stays shared
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster_home"))
    ensure_dagster_home()  # our dagster.yaml: sqlite storage under the home, tour disabled
    env = {
        **os.environ,
        "ECHO_DATA_DIR": str(tmp_path / "data"),
        "ECHO_MODELS_DIR": str(models),
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}",
    }
    for name in ("ECHO_EXPORT_DIR", "ECHO_ME"):
        env.pop(name, None)  # the bundled sample, whatever the developer's shell says
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = tmp_path / "dagster.log"
    with server(dagster_command(port), env, f"{base}/server_info", log, timeout_s=90):
        wait_for_code_location(base, log)
        yield base, log, tmp_path / "data"


def wait_for_code_location(base: str, log, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    entries: list = []
    while time.monotonic() < deadline:
        entries = post_json(f"{base}/graphql", {"query": LOCATIONS_QUERY})["data"][
            "workspaceOrError"
        ].get("locationEntries", [])
        if entries and all(e["loadStatus"] == "LOADED" for e in entries):
            return
        time.sleep(0.5)
    raise AssertionError(f"code location not loaded: {entries}\n{log_tail(log)}")


def open_asset_graph(new_page, base: str):
    """The global asset lineage, every group expanded across the full width."""
    from playwright.sync_api import expect

    # Wide enough that the nodes render as full cards; doubled pixels keep their text legible.
    page = new_page(width=1920, height=1000, init_script=NAV_COLLAPSED, scale=2)
    page.goto(f"{base}/asset-groups")
    expect(page.get_by_role("button", name="Materialize all")).to_be_visible()
    # Fold the group tree, then expand the groups: the graph refits to the whole width.
    page.locator("button:has([aria-label=panel_show_right])").click()
    page.locator("#zoom-slider-container").get_by_role("button", name="settings").click()
    page.get_by_role("menuitem", name="Expand all groups").click()
    page.keyboard.press("Escape")
    page.mouse.move(960, 580)  # off the nodes: nothing hovered in the screenshot
    for name in ASSETS:
        expect(page.get_by_text(name, exact=True).first).to_be_visible()
    expect(page.get_by_role("dialog")).to_have_count(0)  # no tour or pop-up over the graph
    return page


def launch_ingest_from_graph(page) -> None:
    """Filter the graph to the ingest group (its context menu) and press Materialize all."""
    from playwright.sync_api import expect

    page.get_by_text("ingest", exact=True).first.click(button="right")
    page.get_by_role("menuitem", name="Filter to this group").click()
    for name in INGEST:
        expect(page.get_by_text(name, exact=True).first).to_be_visible()
    expect(page.get_by_text("template_dataset", exact=True)).to_have_count(0)
    page.get_by_role("button", name="Materialize all").click()
    launched = page.get_by_text(re.compile(r"Launched run [0-9a-f]{8}"))
    dialog = page.get_by_role("dialog")
    expect(launched.or_(dialog).first).to_be_visible()
    if dialog.count() and not launched.count():
        # A launchpad or partition picker: its defaults are what we want, so confirm it.
        dialog.get_by_role("button", name=re.compile(r"^(Launch|Materialize)")).last.click()
    expect(launched).to_be_visible()


def wait_for_run(base: str, run_id: str, log) -> dict:
    deadline = time.monotonic() + RUN_TIMEOUT_S
    run: dict = {}
    while time.monotonic() < deadline:
        run = post_json(f"{base}/graphql", {"query": RUN_QUERY, "variables": {"runId": run_id}})[
            "data"
        ]["runOrError"]
        if run.get("status") in {"SUCCESS", "FAILURE", "CANCELED"}:
            return run
        time.sleep(1)
    raise AssertionError(f"run {run_id} not done after {RUN_TIMEOUT_S} s: {run}\n{log_tail(log)}")


def run_events(base: str, run_id: str, last: int = 20) -> str:
    """The run's last event messages, for a failure message that says what went wrong."""
    payload = {"query": EVENTS_QUERY, "variables": {"runId": run_id}}
    events = post_json(f"{base}/graphql", payload)["data"]["logsForRun"].get("events", [])
    return "\n".join(f"{e['__typename']}: {e.get('message', '')}" for e in events[-last:])


def test_ingest_materialises_from_the_dagster_ui(dagster_ui, new_page, save_screenshot):
    from playwright.sync_api import expect

    base, log, data = dagster_ui
    page = open_asset_graph(new_page, base)
    launch_ingest_from_graph(page)

    page.get_by_role("link", name="View", exact=True).click()  # the toast links to the run
    page.wait_for_url(re.compile(r"/runs/[0-9a-f-]{36}"))
    run_id = re.search(r"/runs/([0-9a-f-]{36})", page.url).group(1)
    run = wait_for_run(base, run_id, log)
    assert run["status"] == "SUCCESS", f"{run}\n{run_events(base, run_id)}\n{log_tail(log)}"
    assert sorted(a["path"][-1] for a in run["assetSelection"]) == sorted(INGEST)
    assert (data / "conversation_pairs.parquet").is_file()  # written where the server was told

    expect(page.get_by_text("Success", exact=True).first).to_be_visible()
    expect(page.get_by_text("RUN_SUCCESS", exact=True).first).to_be_visible()

    run_page = new_page(width=1600, height=900, init_script=NAV_COLLAPSED)  # no launch toast
    run_page.goto(f"{base}/runs/{run_id}")
    expect(run_page.get_by_text("Success", exact=True).first).to_be_visible()
    expect(run_page.get_by_text(f"{len(INGEST)} assets", exact=True)).to_be_visible()
    expect(run_page.get_by_text("RUN_SUCCESS", exact=True).first).to_be_visible()
    run_page.wait_for_timeout(500)  # the event list settles on its last rows
    save_screenshot(run_page, "run.png")

    graph = open_asset_graph(new_page, base)
    save_screenshot(graph, "asset-graph.png")
    # The whole lineage (twelve assets) is drawn too small for the nodes' status line: the
    # ingest group alone shows it.
    graph.get_by_text("ingest", exact=True).first.click(button="right")
    graph.get_by_role("menuitem", name="Filter to this group").click()
    expect(graph.get_by_text("Materialized", exact=True)).to_have_count(len(INGEST))
