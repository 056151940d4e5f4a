"""The package shows the pipeline: a folder per stage, each importing only the stages before
it, and no module importing itself back through others (imports inside functions count)."""

from __future__ import annotations

import ast
from pathlib import Path

from echo_pipeline.infra.paths import PROJECT_ROOT

PACKAGE = PROJECT_ROOT / "echo_pipeline"
#: The stages in the order of the graph, then what runs them. A module may import its own
#: stage and the ones before it, never a later one.
ORDER = (
    "infra",  # shared plumbing: layout, storage, records, settings, provenance, tracking
    "exports",  # raw export -> messages
    "pairs",  # messages -> conversation pairs (and the reply memory)
    "datasets",  # pairs -> tokenised datasets per template, the prompt spec
    "training",  # datasets -> adapters
    "serving",  # an adapter, prompted and decoded: chat, the MLflow model, the export
    "evaluation",  # adapters -> reports
    "preference",  # reports and ratings -> preference adapters
    "operations",  # the shell and the web page
    "defs",  # the Dagster layer over all of it
)


def _module_name(path: Path) -> str:
    parts = path.relative_to(PROJECT_ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, modules: set[str]) -> set[str]:
    """The package modules ``path`` imports, anywhere in it (``from a import b`` where ``a.b``
    is a module counts as ``a.b``)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                child = f"{node.module}.{alias.name}"
                found.add(child if child in modules else node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {m for m in found if m in modules}


def _graph() -> dict[str, set[str]]:
    paths = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {name: _imports(path, set(paths)) - {name} for name, path in paths.items()}


def test_the_top_of_the_package_is_the_stages_and_the_code_location():
    top = {p.name for p in PACKAGE.iterdir() if not p.name.startswith(("_", "."))}
    assert top == {*ORDER, "definitions.py"}
    for stage in ORDER:
        assert (PACKAGE / stage / "__init__.py").exists(), stage


def test_each_stage_imports_only_itself_and_the_stages_before_it():
    rank = {stage: i for i, stage in enumerate(ORDER)}
    late = sorted(
        f"{module} -> {imported}"
        for module, imports in _graph().items()
        if module.count(".") >= 1 and module.split(".")[1] in rank
        for imported in imports
        if imported.count(".") >= 1
        and imported.split(".")[1] in rank
        and rank[imported.split(".")[1]] > rank[module.split(".")[1]]
    )
    assert late == []


def test_no_module_imports_itself_back():
    graph = _graph()
    cycles = []
    for start in graph:
        seen, frontier = set(), list(graph[start])
        while frontier:
            module = frontier.pop()
            if module == start:
                cycles.append(start)
                break
            if module not in seen:
                seen.add(module)
                frontier.extend(graph.get(module, ()))
    assert cycles == []
