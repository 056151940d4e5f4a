"""What `make demo` measured, as a JSON file, and the README's demo table drawn from it.

`make demo` writes ``data/demo_results.json``; `make demo-readme` copies it to
``docs/demo_results.json`` (committed) and rewrites the README's table from it. The file records
the code and settings that made it, so a test can tell when the README shows numbers that the
current code would no longer produce (a figure older than the code that makes it).
"""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path
from typing import Any

from echo_pipeline.infra.paths import PROJECT_ROOT

COMMITTED = PROJECT_ROOT / "docs" / "demo_results.json"
README = PROJECT_ROOT / "README.md"
TABLE_START = "<!-- demo-results: start (make demo-readme writes this table) -->"
TABLE_END = "<!-- demo-results: end -->"
# The assets whose code decides the demo's numbers.
MEASURED_ASSETS = ("conversation_pairs", "template_dataset", "lora_adapter", "evaluation_report")


def code_stamp() -> dict[str, Any]:
    """What the demo's numbers are made from, besides the committed sample: each asset's code
    version, the demo's held-out splits, recipe and evaluation settings."""
    from echo_pipeline.definitions import CODE_VERSIONS
    from echo_pipeline.training.experiments import DEMO_EVALUATION, DEMO_PAIRS, EXPERIMENTS

    return {
        "code_versions": {asset: CODE_VERSIONS[asset] for asset in MEASURED_ASSETS},
        "demo_pairs": dict(DEMO_PAIRS),
        "demo_recipe": dict(EXPERIMENTS["demo"]),
        "demo_evaluation": dict(DEMO_EVALUATION),
    }


def demo_results(outcome: Any, seconds: float) -> dict[str, Any]:
    """The results of a finished ``run --demo`` (a runner RunOutcome): a row per template with
    its report's headline numbers, the wall time of each step and of the whole run."""
    rows = []
    for row in outcome.rows:
        step = next((s for s in outcome.steps if s.label.endswith(f"|{row.template}]")), None)
        report = step.report if step is not None else {}
        rows.append(
            {
                "template": row.template,
                "experiment": row.experiment,
                "status": row.status,
                "step_seconds": round(step.seconds, 1) if step is not None else None,
                **{k: _plain(v) for k, v in report.items() if k in _KEPT},
            }
        )
    return {
        **code_stamp(),
        "rows": rows,
        "steps": {s.label: round(s.seconds, 1) for s in outcome.steps},
        "total_seconds": round(seconds, 1),
        "made": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{platform.machine()}, {_cores()} CPU cores",
    }


_KEPT = (
    "verdict",
    "base_verdict",
    "base_reply_loss",
    "adapter_reply_loss",
    "base_stop_rate",
    "adapter_stop_rate",
    "real_stop_rate",
    "base_discriminator_auc",
    "adapter_discriminator_auc",
    "real_attributed_share",
    "base_attributed_share",
    "adapter_attributed_share",
)


def _plain(value: Any) -> Any:
    return round(value, 4) if isinstance(value, float) else value


def _cores() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def write(results: dict[str, Any], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    return path


def load(path: Path = COMMITTED) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))


def readme_table(results: dict[str, Any]) -> list[str]:
    """The README's demo table: per template, reply loss, stop rate, discriminator AUC and
    verdict, base -> adapter; a template that shares another's tokens says so."""

    def pair(row: dict, name: str, digits: int) -> str:
        base, adapter = row.get(f"base_{name}"), row.get(f"adapter_{name}")
        if base is None or adapter is None:
            return "–"
        return f"{base:.{digits}f} → **{adapter:.{digits}f}**"

    lines = [
        "| template | reply loss base → adapter | stop rate base → adapter | "
        "discriminator AUC base → adapter | verdict base → adapter |",
        "|---|---|---|---|---|",
    ]
    for row in results["rows"]:
        if "verdict" not in row:
            lines.append(f"| {row['template']} | {row['status']} | | | |")
            continue
        verdicts = f"{row.get('base_verdict', '–')} → **{row['verdict']}**"
        lines.append(
            f"| {row['template']} | {pair(row, 'reply_loss', 3)} | {pair(row, 'stop_rate', 2)} | "
            f"{pair(row, 'discriminator_auc', 2)} | {verdicts} |"
        )
    minutes = results["total_seconds"] / 60
    lines.append("")
    lines.append(
        f"(`make demo` of {results['made']} on {results['machine']}: {minutes:.0f} min in all, "
        "each step's seconds in `docs/demo_results.json`.)"
    )
    return lines


def readme_section(readme: str) -> list[str]:
    """The table lines between the README's markers."""
    if TABLE_START not in readme or TABLE_END not in readme:
        raise ValueError(f"{README}: no {TABLE_START!r} ... {TABLE_END!r} markers")
    inside = readme.split(TABLE_START, 1)[1].split(TABLE_END, 1)[0]
    return inside.strip().splitlines()


def with_table(readme: str, results: dict[str, Any]) -> str:
    """``readme`` with the table between the markers drawn from ``results``."""
    head, rest = readme.split(TABLE_START, 1)
    _, tail = rest.split(TABLE_END, 1)
    table = "\n".join(readme_table(results))
    return f"{head}{TABLE_START}\n{table}\n{TABLE_END}{tail}"
