"""The offline base models side by side on CPU: conversion, training speed, memory, generation.

    python benchmarks/bench_base_models.py                          # both bases, fp32 and bf16
    python benchmarks/bench_base_models.py --bases gemma3-270m --dtypes bfloat16 --threads 2
    python benchmarks/bench_base_models.py --real-tokens 2048 --rounds 2 --json results/bases.json

Every (base, dtype) runs in its own subprocess, so its peak RSS is its own and no allocator state
carries over. Each one: resolves the base (the conversion time is read from its
``conversion.json``), builds the bundled sample's pairs with that base's tokenizer and the
``model_default`` template (ChatML on both: SmolLM2's own, Gemma's fallback), trains LoRA
with the project's defaults (r16, all linear layers, per-sample attention; ``--pack-tokens``) on
the first train examples up to ``--real-tokens`` (the first step is left out of the speed: it
pays one-off allocations), then generates greedy replies to held-out
prompts in batches of 8 with the base model in the same dtype, as the evaluation does.

Tokens differ between tokenizers (Gemma's 262k vocabulary writes the same chat in fewer
tokens), so training is reported both as real tokens/s and as pairs/s, the comparable figure.
The machine may be shared: rounds alternate the configurations, the best round is reported with
the load average at its start.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common


def sample_frame(base: str):
    """The bundled sample as model_default examples tokenised by ``base``'s tokenizer."""
    from echo_pipeline.datasets.templates import default_system_prompt
    from echo_pipeline.datasets.tokenization import build_template_dataset
    from echo_pipeline.exports import read_exports
    from echo_pipeline.infra.paths import sample_export_dir
    from echo_pipeline.pairs.conversations import PairingConfig, build_pairs, pairs_identity
    from echo_pipeline.pairs.pairing_config import SAMPLE_ME
    from echo_pipeline.training.base_model import load_tokenizer, resolve_base_model

    resolved = resolve_base_model(base)
    tokenizer = load_tokenizer(resolved)
    messages = read_exports([sample_export_dir()])
    pairs, _ = build_pairs(messages.to_pandas(), PairingConfig(me=(SAMPLE_ME,)))
    system = default_system_prompt(next(iter(pairs_identity(pairs).names), ""))
    pairs = pairs.to_pandas()
    frame, examples = build_template_dataset(
        pairs, "model_default", tokenizer, system_prompt=system
    )
    return resolved, tokenizer, pairs, system, frame, examples


def one(
    base: str, dtype: str, real_tokens: int, prompts: int, max_new_tokens: int, pack_tokens: int
) -> dict:
    """One configuration, in this process."""
    import resource

    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import _train_recipes as recipes

    from echo_pipeline.datasets.tokenization import stop_token_id, tokenize_inference_prompt
    from echo_pipeline.training.base_model import CONVERSION_RECORD, load_causal_lm

    started = time.perf_counter()
    resolved, tokenizer, pairs, system, frame, examples = sample_frame(base)
    record = json.loads((Path(resolved.path) / CONVERSION_RECORD).read_text())
    train = [e for e, s in zip(examples, frame["split"], strict=True) if s == "train"]
    chosen, total = [], 0
    for example in train:
        if total >= real_tokens:
            break
        chosen.append(example)
        total += len(example.input_ids)

    load_started = time.perf_counter()
    model = load_causal_lm(resolved, dtype=dtype, quantization="none", device="cpu")
    load_s = time.perf_counter() - load_started
    load_at_start = _common.load_str()
    cpu_started = time.process_time()
    summary, peft_model = recipes.run_packed(model, chosen, pack_tokens=pack_tokens)
    train_cpu_s = time.process_time() - cpu_started
    rss_train = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10
    base_model = peft_model.unload().eval()

    held_out = pairs[pairs["split"] != "train"].head(prompts)
    prompt_ids = [
        tokenize_inference_prompt(
            "model_default",
            tokenizer,
            row["context"],
            str(row["prompt"]),
            system,
            prompt_author=str(row["prompt_author"] or ""),
            max_tokens=512,
        )
        for row in held_out.to_dict("records")
    ]
    eos = stop_token_id("model_default", tokenizer)
    pad = tokenizer.pad_token_id

    def generate(batch: list[list[int]], new_tokens: int) -> list[list[int]]:
        width = max(len(p) for p in batch)
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in batch])
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in batch])
        with torch.inference_mode():
            out = base_model.generate(
                input_ids=ids,
                attention_mask=mask,
                max_new_tokens=new_tokens,
                do_sample=False,
                eos_token_id=eos,
                pad_token_id=pad,
            )
        return out[:, width:].tolist()

    generate(prompt_ids[:8], 4)  # warm-up
    gen_load = _common.load_str()
    gen_started, gen_cpu_started = time.perf_counter(), time.process_time()
    replies = []
    for start in range(0, len(prompt_ids), 8):
        replies += generate(prompt_ids[start : start + 8], max_new_tokens)
    gen_s = time.perf_counter() - gen_started
    gen_cpu_s = time.process_time() - gen_cpu_started
    texts = [
        tokenizer.decode(r[: r.index(eos)] if eos in r else r, skip_special_tokens=True)
        for r in replies
    ]
    return {
        "base": base,
        "dtype": dtype,
        "torch_threads": torch.get_num_threads(),
        "conversion_s": record.get("seconds"),
        "gguf_mb": round(record["source_bytes"] / 1e6, 1),
        "safetensors_mb": round(record["safetensors_bytes"] / 1e6, 1),
        "load_s": round(load_s, 2),
        "train_examples": len(chosen),
        "train_real_tokens": summary["real_tokens"],
        "train_steps": summary["steps"],
        "real_tokens_per_s": round(summary["real_tokens_per_s"], 1),
        "real_tokens_per_s_incl_first": round(summary["real_tokens_per_s_incl_first"], 1),
        # the same speed in pairs (this tokenizer's mean pair length), comparable across bases
        "pairs_per_s": round(summary["real_tokens_per_s"] * len(chosen) / total, 2),
        # per CPU-second of this process (all steps): steadier than wall time on a busy machine
        # with one thread; with several, threads spin while they wait and inflate it
        "real_tokens_per_cpu_s": round(summary["real_tokens"] / train_cpu_s, 1),
        "train_loss": summary["train_loss"],
        "train_load_at_start": load_at_start,
        "peak_rss_train_mb": round(rss_train),
        "generations": len(replies),
        "generation_s": round(gen_s, 2),
        "replies_per_s": round(len(replies) / gen_s, 3),
        "replies_per_cpu_s": round(len(replies) / gen_cpu_s, 3),
        "stop_rate": sum(eos in r for r in replies) / len(replies),
        "generation_load_at_start": gen_load,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10),
        "sample_replies": texts[:3],
        "wall_s": round(time.perf_counter() - started, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bases", default="smollm2-135m-instruct,gemma3-270m")
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--real-tokens", type=int, default=3000, help="training tokens per run")
    parser.add_argument("--prompts", type=int, default=16, help="held-out prompts to answer")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--pack-tokens", type=int, default=512, help="tokens per packed row")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--rounds", type=int, default=1, help="interleaved repetitions")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--one", nargs=2, metavar=("BASE", "DTYPE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.one:
        import logging

        import torch
        import transformers

        transformers.logging.set_verbosity_error()
        logging.getLogger("echo_pipeline").setLevel(logging.WARNING)
        torch.set_num_threads(args.threads)
        result = one(
            *args.one, args.real_tokens, args.prompts, args.max_new_tokens, args.pack_tokens
        )
        print("RESULT " + json.dumps(result, default=str), flush=True)
        return 0

    from echo_pipeline.training.base_model import cpu_bf16_flags

    info = _common.machine("torch", "transformers", "peft")
    info["cpu_bf16_flags"] = list(cpu_bf16_flags())
    _common.print_machine(info)
    print(f"# native bf16 flags: {', '.join(info['cpu_bf16_flags']) or 'none'}", flush=True)
    configs = [(b, d) for b in args.bases.split(",") for d in args.dtypes.split(",")]
    runs: dict[tuple[str, str], list[dict]] = {c: [] for c in configs}
    for round_no in range(args.rounds):
        for base, dtype in configs if round_no % 2 == 0 else configs[::-1]:
            command = [
                sys.executable,
                __file__,
                "--one",
                base,
                dtype,
                *("--real-tokens", str(args.real_tokens), "--prompts", str(args.prompts)),
                *("--max-new-tokens", str(args.max_new_tokens), "--threads", str(args.threads)),
                *("--pack-tokens", str(args.pack_tokens)),
            ]
            out = subprocess.run(command, capture_output=True, text=True, check=False)
            line = next((x for x in out.stdout.splitlines() if x.startswith("RESULT ")), None)
            if line is None:
                print(out.stdout[-2000:], out.stderr[-4000:], file=sys.stderr)
                raise SystemExit(f"{base} {dtype} failed (exit {out.returncode})")
            result = json.loads(line[len("RESULT ") :])
            runs[(base, dtype)].append(result)
            print(
                f"round {round_no + 1} {base:<22} {dtype:<8} train {result['real_tokens_per_s']:6.1f}"
                f" real tok/s ({result['real_tokens_per_cpu_s']:.1f} per CPU-s), "
                f"{result['pairs_per_s']:5.2f} pairs/s (load {result['train_load_at_start']}), gen "
                f"{result['replies_per_s']:.2f} replies/s ({result['replies_per_cpu_s']:.2f} per "
                f"CPU-s; load {result['generation_load_at_start']}), peak RSS "
                f"{result['peak_rss_mb']} MB",
                flush=True,
            )
    best = {c: max(r, key=lambda x: x["real_tokens_per_s"]) for c, r in runs.items()}
    print(
        "\n| base | dtype | train real tok/s | per CPU-s | pairs/s | train loss | "
        "replies/s (batch 8) | per CPU-s | stop rate | peak RSS | load at start |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for (base, dtype), b in best.items():
        print(
            f"| {base} | {dtype} | {b['real_tokens_per_s']:.1f} | {b['real_tokens_per_cpu_s']:.1f} "
            f"| {b['pairs_per_s']:.2f} | {b['train_loss']:.3f} | {b['replies_per_s']:.2f} | "
            f"{b['replies_per_cpu_s']:.2f} | {b['stop_rate']:.0%} | {b['peak_rss_mb']} MB | "
            f"{b['train_load_at_start']} |"
        )
    for base in args.bases.split(","):
        b = next(r for (name, _), r in best.items() if name == base)
        print(
            f"# {base}: conversion {b['conversion_s']} s (once), GGUF {b['gguf_mb']} MB -> "
            f"safetensors {b['safetensors_mb']} MB, load {b['load_s']} s; "
            f"sample reply: {b['sample_replies'][:1]}"
        )
    _common.write_json(
        args.json, {"machine": info, "runs": [r for rs in runs.values() for r in rs]}
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
