"""Generations per second, one prompt at a time against batched, as the evaluation generates.

    python benchmarks/bench_generation.py                       # untrained adapter, bundled base
    python benchmarks/bench_generation.py --adapter data/lora_adapter/chatml__demo --prompts 32
    python benchmarks/bench_generation.py --batch-sizes 1,8 --rounds 3 --threads 1

Prompts are held-out pairs from ``conversation_pairs.parquet`` when it exists (else a fixed
list), rendered with the adapter's template. Decoding is greedy, so every batch size must give
the same replies: the script checks that (left padding done right) and reports mismatches.
Without ``--adapter`` it writes a freshly initialised LoRA adapter (B = 0) to a temporary
folder: the speed is the same as a trained one of the same rank. Record results in
benchmarks/RESULTS.md with the machine, threads and commit.

The machine may be shared: ``--rounds`` repeats the batch sizes interleaved (1 8 8 1 1 8 ...),
each measurement is printed with the load average at its start, and the best round of each
batch size is the reported figure. Every batch size gets one untimed warm-up batch first.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common

FALLBACK_PROMPTS = [
    "Hi! Are you awake?",
    "Did you go to the gym today?",
    "Are you still coming to dinner tonight?",
    "I waved back at someone who was waving at the person behind me, so embarrassing!",
    "What are you up to this weekend?",
    "Have you seen the new episode yet? No spoilers please!",
    "My bus is late again. How was your day?",
    "Do you have any tips for staying focused when working from home?",
]


def held_out_prompts(count: int) -> list[dict]:
    """Held-out pairs (context, prompt, author) if the pipeline has built them, else fallbacks."""
    import pyarrow.parquet as pq

    from echo_pipeline.infra.layout import Layout

    path = Layout.default().pairs_path()
    if path.exists():
        pairs = pq.read_table(
            path, columns=["context", "prompt", "prompt_author", "split"]
        ).to_pandas()
        pairs = pairs[pairs["split"] != "train"].head(count)
        if len(pairs):
            return pairs.to_dict(orient="records")
    prompts = (FALLBACK_PROMPTS * (count // len(FALLBACK_PROMPTS) + 1))[:count]
    return [{"context": [], "prompt": p, "prompt_author": "friend"} for p in prompts]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--adapter", type=Path, help="adapter directory (default: an untrained one)"
    )
    parser.add_argument("--template", default="chatml", help="template of the untrained adapter")
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--batch-sizes", default="1,8", help="comma-separated, e.g. 1,4,8,16")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    parser.add_argument("--rounds", type=int, default=1, help="interleaved repetitions")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)

    import torch

    info = _common.machine("torch", "transformers", "peft")
    _common.print_machine(info)

    from echo_pipeline.serving.chat import ChatSession
    from echo_pipeline.serving.generation import (
        GenerationSettings,
        generate_replies,
        torch_threads,
    )
    from echo_pipeline.training.base_model import resolve_base_model

    sys.path.insert(0, str(_common.REPO / "echo_pipeline_tests"))  # the untrained control
    from untrained import write_untrained_adapter

    with tempfile.TemporaryDirectory() as scratch, torch_threads(args.threads):
        adapter = args.adapter or write_untrained_adapter(
            resolve_base_model(), Path(scratch) / "adapter", template=args.template
        )
        session = ChatSession.from_adapter(adapter)
        prompt_ids = [
            session.prompt.prompt_ids(
                session.tokenizer,
                p["context"],
                str(p["prompt"]),
                prompt_author=str(p["prompt_author"] or ""),
            )
            for p in held_out_prompts(args.prompts)
        ]
        sizes = [int(b) for b in args.batch_sizes.split(",")]
        for batch_size in sizes:  # untimed warm-up: first-call allocations, per batch shape
            warmup = GenerationSettings(max_new_tokens=4, batch_size=batch_size)
            generate_replies(session, prompt_ids[:batch_size], warmup)
        results, reference = [], None
        for round_no in range(args.rounds):
            for batch_size in sizes if round_no % 2 == 0 else sizes[::-1]:
                settings = GenerationSettings(
                    max_new_tokens=args.max_new_tokens, batch_size=batch_size
                )
                load = _common.load_str()
                run = generate_replies(session, prompt_ids, settings)
                reference = reference or run.texts
                results.append(
                    {
                        "round": round_no + 1,
                        "batch_size": batch_size,
                        "generations": len(run.texts),
                        "seconds": round(run.seconds, 3),
                        "generations_per_s": round(run.generations_per_s, 3),
                        "stop_rate": sum(run.stopped) / len(run.stopped),
                        "replies_differing_from_first": sum(
                            a != b for a, b in zip(run.texts, reference, strict=True)
                        ),
                        "load_at_start": load,
                    }
                )
                print(
                    f"round {round_no + 1} batch {batch_size:>3}: "
                    f"{run.generations_per_s:7.2f} generations/s "
                    f"({len(run.texts)} in {run.seconds:.1f} s, stop rate "
                    f"{results[-1]['stop_rate']:.0%}, "
                    f"{results[-1]['replies_differing_from_first']} replies differ) load {load}",
                    flush=True,
                )
        best = {
            size: max(
                (r for r in results if r["batch_size"] == size),
                key=lambda r: r["generations_per_s"],
            )
            for size in sizes
        }
        summary = {
            "adapter": str(args.adapter or f"untrained ({args.template})"),
            "device": str(next(session.model.parameters()).device),
            "torch_threads": torch.get_num_threads(),
            "machine": info,
            "max_new_tokens": args.max_new_tokens,
            "prompt_tokens_mean": sum(map(len, prompt_ids)) / len(prompt_ids),
            "results": results,
            "best": {str(k): v for k, v in best.items()},
        }
    print(f"\n| batch size | generations/s (best of {args.rounds}) | load at start |")
    print("|---|---|---|")
    for size, r in best.items():
        print(f"| {size} | {r['generations_per_s']:.2f} | {r['load_at_start']} |")
    if len(best) > 1:
        first, last = best[sizes[0]], best[sizes[-1]]
        speedup = last["generations_per_s"] / max(first["generations_per_s"], 1e-9)
        print(f"batch {sizes[-1]} vs {sizes[0]}: {speedup:.2f}x")
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
