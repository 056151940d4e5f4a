"""The layout: every artefact's place under one root, and nothing outside defs/ importing defs/."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from echo_pipeline.infra.layout import Layout, adapter_slug, partition_slug
from echo_pipeline.infra.paths import PROJECT_ROOT


def test_every_artefact_of_a_layout_lives_under_its_root(tmp_path):
    layout = Layout(tmp_path)
    assert layout.pairs_path() == tmp_path / "conversation_pairs.parquet"
    assert layout.dataset_path("chatml") == tmp_path / "template_dataset" / "chatml.parquet"
    assert layout.dataset_manifest_path("chatml") == (
        tmp_path / "template_dataset" / "chatml.manifest.json"
    )
    assert layout.jsonl_dir("chatml") == tmp_path / "template_dataset_jsonl" / "chatml"
    assert layout.adapter_dir("chatml", "demo") == tmp_path / "lora_adapter" / "chatml__demo"
    assert layout.training_work_dir("chatml", "demo") == tmp_path / "training_work" / "chatml__demo"
    assert layout.report_dir("chatml", "demo") == tmp_path / "evaluation_report" / "chatml__demo"
    assert layout.comparison_dir() == tmp_path / "model_comparison"
    assert layout.logs_dir() == tmp_path / "logs"


def test_asset_paths_follow_the_asset_key_and_partition(tmp_path):
    layout = Layout(tmp_path)
    assert layout.asset_path(["chat_messages"]) == tmp_path / "chat_messages.parquet"
    assert layout.asset_path(["raw", "export"]) == tmp_path / "raw" / "export.parquet"
    assert layout.asset_path(["template_dataset"], "chatml|demo", ".json") == (
        tmp_path / "template_dataset" / "chatml__demo.json"
    )


def test_the_adapter_slug_is_both_partition_slugs():
    assert adapter_slug("chatml", "demo") == "chatml__demo"
    assert adapter_slug("../x", "a/b") == f"{partition_slug('../x')}__{partition_slug('a/b')}"


def test_the_default_layout_follows_echo_data_dir_when_asked(tmp_path, monkeypatch):
    monkeypatch.setenv("ECHO_DATA_DIR", str(tmp_path / "one"))
    first = Layout.default()
    monkeypatch.setenv("ECHO_DATA_DIR", str(tmp_path / "two"))
    assert first.root == (tmp_path / "one").resolve()
    assert Layout.default().root == (tmp_path / "two").resolve()
    assert Layout.at("") == Layout.default() and Layout.at(None) == Layout.default()
    assert Layout.at(tmp_path / "three").root == tmp_path / "three"


def test_the_io_manager_and_the_assets_share_one_layout(tmp_path):
    from echo_pipeline.defs.io_manager import ParquetIOManager

    assert ParquetIOManager(base_dir=str(tmp_path)).layout() == Layout(tmp_path)


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


# The runner's step loop and its quick-run config belong to the Dagster runner being rewritten
# (issue #18): they are the only modules outside defs/ still allowed to reach into it.
ALLOWED = {"echo_pipeline/definitions.py"}


@pytest.mark.parametrize(
    "path",
    sorted(
        p
        for folder in ("echo_pipeline", "benchmarks")
        for p in (PROJECT_ROOT / folder).rglob("*.py")
        if "defs" not in p.relative_to(PROJECT_ROOT).parts
        and p.relative_to(PROJECT_ROOT).as_posix() not in ALLOWED
    ),
    ids=lambda p: p.relative_to(PROJECT_ROOT).as_posix(),
)
def test_nothing_outside_defs_imports_defs(path):
    assert not {m for m in _imports(path) if m.startswith("echo_pipeline.defs")}
