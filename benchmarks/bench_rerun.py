"""A re-run with nothing changed (issue 18): how long `echo-pipeline run` takes the first time
and the second, in a fresh data folder, Dagster home and MLflow store.

    python benchmarks/bench_rerun.py                                  # the sample, chatml
    python benchmarks/bench_rerun.py --export FILE --me ID --template chatml
    python benchmarks/bench_rerun.py --json benchmarks/results/rerun.json

Both runs use the CLI's quick-trial bounds (``--max-steps``, ``--eval-max-pairs``) so the first
run is minutes, not the demo's quarter hour; the second run's time does not depend on them.
Each run's step lines are kept so the result shows what ran and what was "up to date".
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_twice(args: argparse.Namespace) -> dict:
    with tempfile.TemporaryDirectory(prefix="echo-rerun-") as tmp:
        env = {
            **os.environ,
            "ECHO_DATA_DIR": f"{tmp}/data",
            "ECHO_MODELS_DIR": str(ROOT / "data" / "models"),  # share the converted base
            "MLFLOW_TRACKING_URI": f"sqlite:///{tmp}/mlflow.db",
            "DAGSTER_HOME": f"{tmp}/dagster",
        }
        command = [
            sys.executable,
            "-m",
            "echo_pipeline.operations.cli",
            "run",
            "--template",
            args.template,
        ]
        command += ["--max-steps", str(args.max_steps), "--eval-max-pairs", str(args.eval_pairs)]
        if args.export:
            command += ["--export", args.export]
            for me in args.me:
                command += ["--me", me]
        runs = []
        for attempt in ("first", "second"):
            start = time.perf_counter()
            done = subprocess.run(command, env=env, capture_output=True, text=True, cwd=tmp)
            wall = time.perf_counter() - start
            lines = done.stdout.splitlines()
            progress = lines[: lines.index("summary")] if "summary" in lines else lines
            steps = [line.rstrip() for line in progress if line and not line.startswith(" ")]
            runs.append(
                {"run": attempt, "exit": done.returncode, "wall_s": round(wall, 2), "steps": steps}
            )
            print(f"{attempt}: exit {done.returncode}, {wall:.1f} s", flush=True)
            for line in steps:
                print(f"  {line}")
        return {
            "command": " ".join(command[1:]),
            "load_avg_at_start": os.getloadavg(),
            "runs": runs,
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--export", help="An export file or folder (default: the sample).")
    parser.add_argument("--me", action="append", default=[], help="With --export: who you are.")
    parser.add_argument("--template", default="chatml")
    parser.add_argument("--max-steps", type=int, default=2)
    parser.add_argument("--eval-pairs", type=int, default=4)
    parser.add_argument("--json", help="Write the result here too.")
    args = parser.parse_args()
    result = run_twice(args)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
