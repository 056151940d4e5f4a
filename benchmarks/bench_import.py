"""How long loading the Dagster code location takes, and which heavy libraries it avoids.

    python benchmarks/bench_import.py            # 5 fresh interpreters, best and median
    python benchmarks/bench_import.py --runs 9 --top 15

Each run is ``python -X importtime -c "import echo_pipeline.definitions"`` in a fresh
interpreter (what ``dagster dev`` and every run worker pay when they load the location). The
figure is the cumulative import time of ``echo_pipeline.definitions`` as ``-X importtime``
reports it (interpreter start-up excluded), plus the process wall time. Target: <= 2 s.
A second interpreter lists which heavy libraries ``sys.modules`` holds after the import.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common

HEAVY = (
    "torch",
    "transformers",
    "peft",
    "bitsandbytes",
    "accelerate",
    "mlflow",
    "sklearn",
    "scipy",
    "matplotlib",
    "gguf",
    "sentence_transformers",
    "safetensors",
    "pandas",
    "pyarrow",
    "numpy",
    "msgspec",
    "dagster",
)
_LINE = re.compile(r"import time:\s+(\d+) \|\s+(\d+) \|(\s*)(\S+)")


def one_run(module: str) -> tuple[float, float, list[tuple[int, int, str]]]:
    """(cumulative import seconds of ``module``, process wall seconds, parsed lines)."""
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", f"import {module}"],
        capture_output=True,
        text=True,
        cwd=_common.REPO,
    )
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-2000:])
    lines = []
    total = None
    for match in _LINE.finditer(done.stderr):
        self_us, cumulative_us, indent, name = match.groups()
        lines.append((int(self_us), int(cumulative_us), name, len(indent)))
        if name == module:
            total = int(cumulative_us) / 1e6
    if total is None:
        raise RuntimeError(f"{module} not in the -X importtime output")
    return total, wall, lines


def top_level_packages(lines) -> list[tuple[str, float]]:
    """Cumulative seconds of each top-level package's own import line (a package's dependencies
    are inside its figure when it imported them first), largest first."""
    per_package = {
        name: cumulative_us / 1e6 for _, cumulative_us, name, _ in lines if "." not in name
    }
    return sorted(per_package.items(), key=lambda kv: -kv[1])


def loaded_heavy(module: str) -> dict[str, bool]:
    code = (
        f"import sys, json; import {module}; "
        f"print(json.dumps({{m: m in sys.modules for m in {list(HEAVY)!r}}}))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=_common.REPO, check=True
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--module", default="echo_pipeline.definitions")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--top", type=int, default=12)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)

    info = _common.machine("dagster", "pandas", "pyarrow")
    _common.print_machine(info)
    runs = []
    for i in range(args.runs):
        load = _common.load_str()
        total, wall, lines = one_run(args.module)
        runs.append({"import_s": total, "wall_s": wall, "load": load, "lines": lines})
        print(f"  run {i + 1}: import {total:.2f} s, process {wall:.2f} s, load {load}", flush=True)
    best = min(runs, key=lambda r: r["import_s"])
    median = statistics.median(r["import_s"] for r in runs)
    print(
        f"best {best['import_s']:.2f} s (process {best['wall_s']:.2f} s, load {best['load']}); "
        f"median {median:.2f} s; target 2 s: {'meets' if best['import_s'] <= 2 else 'misses'}"
    )
    print(f"\nlargest imports in the best run (cumulative s, top {args.top}):")
    packages = top_level_packages(best["lines"])
    for name, seconds in packages[: args.top]:
        print(f"  {name:<28} {seconds:6.3f}")
    heavy = loaded_heavy(args.module)
    print("\nafter the import, sys.modules holds:")
    print("  loaded:     " + ", ".join(m for m, v in heavy.items() if v))
    print("  not loaded: " + ", ".join(m for m, v in heavy.items() if not v))
    _common.write_json(
        args.json,
        {
            "machine": info,
            "command": _common.command_line(),
            "runs": [{k: v for k, v in r.items() if k != "lines"} for r in runs],
            "best_s": best["import_s"],
            "median_s": median,
            "packages": packages[: args.top],
            "heavy": heavy,
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
