"""Data-parallel LoRA training on CPU (issue 14): 1 process against 2 through torchrun (gloo).

    python benchmarks/bench_train_distributed.py                    # SmolLM2, the sample, chatml
    python benchmarks/bench_train_distributed.py --steps 16 --json benchmarks/results/ddp_cpu.json

The same job twice, through the real entry point (``python -m echo_pipeline.training.job job.json``,
or torchrun over it): one process with ``grad_accum`` 2 and both cores' threads, then two
processes with ``grad_accum`` 1 and one thread each. Every optimizer step is the same two packed
rows in both, so the two runs compute the same adapter (``test_distributed.py`` asserts it);
what differs is how the cores are used. Reported: real tokens/s of the training steps (from the
run's own metrics), wall time of the whole job (imports, model loads, held-out losses included),
and the largest per-step loss difference between the two runs.
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
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT))
import _common  # noqa: E402


def build_dataset(path: Path, max_tokens: int) -> Path:
    """The bundled sample's chatml dataset (train, val, test), tokenised for SmolLM2."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from echo_pipeline.datasets.tokenization import build_template_dataset
    from echo_pipeline.exports import read_exports
    from echo_pipeline.infra.paths import sample_export_dir
    from echo_pipeline.pairs import conversations
    from echo_pipeline.training.base_model import load_tokenizer, resolve_base_model

    messages = read_exports([sample_export_dir()]).to_pandas()
    pairs, _ = conversations.build_pairs(messages, conversations.PairingConfig(me=("alex",)))
    tokenizer = load_tokenizer(resolve_base_model())
    frame, examples = build_template_dataset(
        pairs.to_pandas(), "chatml", tokenizer, max_tokens=max_tokens
    )
    table = pa.Table.from_pandas(frame, preserve_index=False)
    for name in ("input_ids", "labels"):
        values = [getattr(e, name) for e in examples]
        table = table.append_column(name, pa.array(values, pa.list_(pa.int32())))
    pq.write_table(table, path)
    return path


def run(args: argparse.Namespace, tmp: Path, dataset: Path, processes: int) -> dict:
    from echo_pipeline.training.adapters import AdapterJob
    from echo_pipeline.training.base_model import resolve_base_model
    from echo_pipeline.training.config import TrainingConfig
    from echo_pipeline.training.distributed import launch_command

    name = f"dp{processes}"
    job = AdapterJob(
        template="chatml",
        experiment=name,
        dataset_path=dataset,
        adapter_dir=tmp / name / "adapter",
        work_dir=tmp / name / "work",
        base_model=resolve_base_model(),
        training=TrainingConfig(
            max_steps=args.steps,
            pack_tokens=args.pack_tokens,
            grad_accum=2 // processes,
            eval_every=0,
            checkpoint_every=0,
            log_every=1,
            quantization="none",
            dtype="float32",
            torch_threads=args.cores // processes,
        ),
        tracking_uri=f"sqlite:///{tmp / 'mlflow.db'}",
        register_model=False,
    )
    job_file = tmp / f"{name}.json"
    job_file.write_text(json.dumps(job.to_dict()))
    started = time.perf_counter()
    done = subprocess.run(
        [*launch_command(processes), str(job_file)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    wall = time.perf_counter() - started
    if done.returncode:
        raise SystemExit(f"{name} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    outcome = json.loads(done.stdout[done.stdout.rindex("\n{") :])

    import mlflow

    client = mlflow.MlflowClient(tracking_uri=job.tracking_uri)
    losses = [m.value for m in client.get_metric_history(outcome["mlflow_run_id"], "loss")]
    return {
        "processes": processes,
        "grad_accum": 2 // processes,
        "threads_per_process": args.cores // processes,
        "steps": int(outcome["steps"]),
        "real_tokens": int(outcome["real_tokens"]),
        "real_tokens_per_s": outcome["tokens_per_s"],
        "job_wall_s": wall,
        "losses": losses,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--pack-tokens", type=int, default=512)
    parser.add_argument("--cores", type=int, default=2, help="threads in all, split over ranks")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    info = _common.machine("torch", "transformers", "peft")
    _common.print_machine(info)
    with tempfile.TemporaryDirectory(prefix="echo-ddp-") as folder:
        tmp = Path(folder)
        dataset = build_dataset(tmp / "dataset.parquet", args.pack_tokens)
        rows = []
        for processes in (1, 2):
            row = run(args, tmp, dataset, processes)
            row["load_after"] = _common.load_str()
            rows.append(row)
            print(
                f"{processes} process(es) x grad_accum {row['grad_accum']} x "
                f"{row['threads_per_process']} thread(s): {row['real_tokens_per_s']:.0f} real "
                f"tok/s, {row['real_tokens']} tokens in {row['steps']} steps, job "
                f"{row['job_wall_s']:.0f} s (load {row['load_after']})",
                flush=True,
            )
    one, two = rows
    worst = max(abs(a - b) for a, b in zip(one["losses"], two["losses"], strict=True))
    print(f"2 / 1 processes: {two['real_tokens_per_s'] / one['real_tokens_per_s']:.2f}x tokens/s")
    print(f"largest per-step loss difference: {worst:.3g}")
    _common.write_json(
        args.json,
        {
            "machine": info,
            "command": _common.command_line(),
            "rows": rows,
            "max_loss_difference": worst,
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
