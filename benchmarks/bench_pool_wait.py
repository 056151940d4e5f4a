"""What a run queued behind the gpu pool costs the training it waits for (issue 16).

    python benchmarks/bench_pool_wait.py                     # every scenario, 1,536 real tokens
    python benchmarks/bench_pool_wait.py --real-tokens 768 --scenarios alone,queued
    python benchmarks/bench_pool_wait.py --json benchmarks/results/pool_wait.json

A trainer process trains the bundled base (SmolLM2-135M-Instruct, fp32, LoRA r16 all linear,
256-token packs) on the sample export's first train examples and reports real tokens/s over the
steps after the first. It runs alone, and beside each of these, started before it and stopped
after it:

``queued-dagster``  a second run waiting for the gpu pool the way dagster 1.13.28 waits: an
                    in-process Dagster job whose op is in a pool of limit 1 whose slot is held
                    (the instance enforces pools per op, as ours did). This is the *before*.
``queued-runner``   a second run waiting the way ``echo-pipeline run`` now waits: ``pool_slot``
                    on a pool held by another run (sleeps between polls). The *after*.
``busy``            an unrelated process spinning one core (``while True: pass``).

Each trainer runs with torch's default threads (one per core, what training did before) and
with ``auto`` (``echo_pipeline.training.threads.auto_threads``: the cores free when training starts).
The waiter's own CPU use over the training is reported too. The machine may be shared: the
load average at each start is printed and recorded.
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

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common

SCENARIOS = ("alone", "queued-dagster", "queued-runner", "busy")
HELD = "held-by-another-run"


def trainer(threads: str, real_tokens: int) -> dict:
    """Train once; real tokens/s after the first step, and the threads torch used."""
    import _train_recipes as recipes
    import torch
    from bench_train_cpu import load_model, training_examples

    from echo_pipeline.training.threads import auto_threads

    examples, _info = training_examples("chatml", real_tokens)
    model = load_model()
    chosen = torch.get_num_threads() if threads == "default" else auto_threads()
    result, _ = recipes.run_packed(model, examples, pack_tokens=256, torch_threads=chosen)
    return {"threads": chosen, **result}


def _instance(home: Path, granularity: str):
    home.mkdir(parents=True, exist_ok=True)
    pools = "    default_limit: 1\n" + (f"    granularity: {granularity}\n" if granularity else "")
    (home / "dagster.yaml").write_text(f"concurrency:\n  pools:\n{pools}", encoding="utf-8")
    os.environ["DAGSTER_HOME"] = str(home)
    import dagster as dg

    instance = dg.DagsterInstance.get()
    storage = instance.event_log_storage
    storage.set_concurrency_slots("gpu", 1)
    assert storage.claim_concurrency_slot("gpu", HELD, "lora_adapter").is_claimed
    return instance


def waiter(kind: str, home: Path) -> None:
    """Wait for the held gpu pool until killed."""
    if kind == "queued-dagster":
        import dagster as dg

        instance = _instance(home, "")

        @dg.op(pool="gpu")
        def lora_adapter() -> None:
            pass

        @dg.job
        def training() -> None:
            lora_adapter()

        print("waiting", flush=True)
        training.execute_in_process(instance=instance)
    else:
        from echo_pipeline.operations.pool import pool_slot

        instance = _instance(home, "run")
        print("waiting", flush=True)
        with pool_slot(instance, "queued-run", echo=lambda _: None):
            pass


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_case(scenario: str, threads: str, real_tokens: int) -> dict:
    me = [sys.executable, str(Path(__file__).resolve())]
    side = None
    with tempfile.TemporaryDirectory() as scratch:
        if scenario == "busy":
            side = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        elif scenario.startswith("queued"):
            side = subprocess.Popen(
                [*me, "--waiter", scenario, "--home", str(Path(scratch) / "home")],
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
            )
            assert side.stdout.readline().strip() == "waiting"
        time.sleep(2.0)  # the side process settles into its steady state
        load = _common.load_str()
        side_cpu0 = _cpu_seconds(side.pid) if side else 0.0
        wall0 = time.monotonic()
        out = subprocess.run(
            [*me, "--trainer", threads, "--real-tokens", str(real_tokens)],
            capture_output=True,
            text=True,
            check=True,
        )
        wall = time.monotonic() - wall0
        side_share = (_cpu_seconds(side.pid) - side_cpu0) / wall if side else 0.0
        if side:
            side.kill()
            side.wait()
    result = json.loads(out.stdout.strip().splitlines()[-1])
    return {
        "scenario": scenario,
        "threads": threads,
        "torch_threads": result["threads"],
        "tokens_per_s": result["real_tokens_per_s"],
        "side_cpu_share": round(side_share, 3),
        "load_at_start": load,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    parser.add_argument("--threads", default="default,auto", help="default and/or auto")
    parser.add_argument("--real-tokens", type=int, default=1536)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--trainer", help=argparse.SUPPRESS)
    parser.add_argument("--waiter", help=argparse.SUPPRESS)
    parser.add_argument("--home", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.trainer:
        print(json.dumps(trainer(args.trainer, args.real_tokens)))
        return 0
    if args.waiter:
        waiter(args.waiter, args.home)
        return 0

    info = _common.machine("torch", "dagster")
    _common.print_machine(info)
    rows = []
    for scenario in args.scenarios.split(","):
        for threads in args.threads.split(","):
            row = run_case(scenario, threads, args.real_tokens)
            rows.append(row)
            print(
                f"{scenario:<15} threads {threads:<7} (torch {row['torch_threads']})  "
                f"{row['tokens_per_s']:7.1f} real tokens/s   side process "
                f"{row['side_cpu_share']:5.0%} of a core   load {row['load_at_start']}",
                flush=True,
            )
    _common.write_json(
        args.json, {"machine": info, "command": _common.command_line(), "rows": rows}
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
