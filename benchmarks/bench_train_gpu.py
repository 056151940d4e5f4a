"""LoRA/QLoRA on a 7B-shaped Llama: the project's trainer against the webui recipe, on one GPU.

    python benchmarks/bench_train_gpu.py                 # the full table, < 10 min on H100/H200
    python benchmarks/bench_train_gpu.py --tiny          # same code, tiny config, on CPU (a test)
    python benchmarks/bench_train_gpu.py --skip-qlora --profile   # + torch.profiler of a step
    python benchmarks/bench_train_gpu.py --processes 8   # data-parallel on 8 GPUs (torchrun, DDP)
    python benchmarks/bench_train_gpu.py --tiny --processes 2     # the same on 2 CPU processes

No download and no network: the model is ``LlamaForCausalLM`` built from a Llama-2-7B config with
random bf16 weights (N = 6.7e9); the data are Discord-like samples with lognormal lengths (mean
~89 tokens) of random token ids, the reply (last ~13 % of each sample, plus EOS) labelled.
Random weights make the losses meaningless, not the speed.

Rows of the table (each optional through ``--rows``):

* ``webui``          text-generation-webui defaults: pad to 256, micro-batch 4, r32 on q,v
                     (``benchmarks/_train_recipes.run_webui``, a transformers Trainer, bf16)
* ``packed-4096``    the project's ``train_lora`` (its default adapter, bf16 adapters,
                     4096-token packs, per-sample attention: torch's flash varlen kernel where
                     torch has it, else one sdpa call per sample; reply-only logits)
* ``packed-dense-4096`` the same with the model's own sdpa and the dense block-diagonal mask
                     transformers builds from the restarting position_ids
* ``packed-qv-4096`` the same with webui's adapter (r32 q,v)
* ``packed-8192``    8192-token packs
* ``qlora-4096``     ``load_causal_lm(..., quantization="4bit")`` (nf4, double quantisation; the
                     project's loader reading the random weights saved once to a temporary
                     folder), then the same ``train_lora``
* ``qlora-1024-gc``  QLoRA at 1024-token packs with gradient checkpointing: the peak memory a small
                     card needs

With ``--processes N`` the script starts itself N times through torchrun (NCCL on GPUs, gloo on
CPU) and runs the ``packed-*`` and ``qlora-*`` rows data-parallel: every process trains the
same row count per step on its own device, and the row is named ``<row> xN`` with the tokens/s
of all N together (the webui row and the isolation check stay single-device).

Reported per row: real tokens/s (steps after the first), MFU = tokens/s x 4N / peak (4N: forward
2N plus the backward through frozen weights 2N, attention not counted), peak GPU memory
(``max_memory_allocated``, weights included). Before training, an isolation check compares the
logits of each sample inside a packed row with the same sample run alone, once as the trainer
calls the model (``use_cache=False``) and once with the cache left on (the silent failure).

The peak FLOP/s is a flag (``--peak-tflops``); by default 989 for H100 and 790 for H200 (the
bf16 rate the issue's reference runs reached; the data sheet says 989 dense for both).
"""

from __future__ import annotations

import argparse
import gc
import os
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the package, uninstalled
import _common
import _train_recipes as recipes

warnings.filterwarnings("ignore", category=FutureWarning)
warnings.filterwarnings("ignore", message="Could not find a config file")

N_7B = 6.7e9
DEFAULT_ROWS = (
    "webui,packed-4096,packed-dense-4096,packed-qv-4096,packed-8192,qlora-4096,qlora-1024-gc"
)


def llama_config(tiny: bool):
    from transformers import LlamaConfig

    if tiny:
        return LlamaConfig(
            vocab_size=512,
            hidden_size=64,
            intermediate_size=176,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=4,
            max_position_embeddings=8192,
            rms_norm_eps=1e-5,
            bos_token_id=1,
            eos_token_id=2,
            pad_token_id=0,
        )
    return LlamaConfig(  # meta-llama/Llama-2-7b-hf
        vocab_size=32000,
        hidden_size=4096,
        intermediate_size=11008,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=32,
        max_position_embeddings=8192,
        rms_norm_eps=1e-5,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )


def build_model(config, device: str, dtype):
    """Random weights straight on the device (no CPU copy of 13 GB)."""
    import torch
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM._from_config(config, dtype=dtype, attn_implementation="sdpa")
    model.generation_config.pad_token_id = 0
    return model.to(device).eval()  # a no-op when the device context placed it already


def synthetic_examples(
    count: int, vocab: int, *, longest: int, seed: int = 0, mean_tokens: float = 89.0
):
    """Discord-like samples: lognormal lengths (sigma 0.6) with the given mean (at most
    ``longest``), the last ~13 % (at least 2 tokens, ending with EOS=2) labelled as the reply,
    BOS=1 first."""
    import math
    import random

    rng = random.Random(seed)
    sigma = 0.6
    mu = math.log(mean_tokens) - sigma**2 / 2
    examples = []
    for _ in range(count):
        length = max(8, min(longest, int(rng.lognormvariate(mu, sigma))))
        ids = [1] + [rng.randrange(3, vocab) for _ in range(length - 2)] + [2]
        reply = max(2, round(0.13 * length))
        labels = [-100] * (length - reply) + ids[length - reply :]
        examples.append({"input_ids": ids, "labels": labels})
    return examples


def peak_tflops(flag: float | None, device: str) -> float | None:
    if flag:
        return flag
    if not device.startswith("cuda"):
        return None
    import torch

    name = torch.cuda.get_device_name()
    if "H200" in name:
        return 790.0
    if "H100" in name:
        return 989.0
    return None


def reset_peak(device: str) -> None:
    gc.collect()
    if device.startswith("cuda"):
        import torch

        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def peak_gib(device: str) -> float | None:
    if device.startswith("cuda"):
        import torch

        return torch.cuda.max_memory_allocated() / 2**30
    return None


def profile_step(model, examples, pack_tokens: int, device: str) -> None:
    """torch.profiler over two packed train_lora steps: where the GPU time goes."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU]
    if device.startswith("cuda"):
        activities.append(ProfilerActivity.CUDA)
    with profile(activities=activities) as prof:
        _, peft_model = recipes.run_packed(model, examples, pack_tokens=pack_tokens, steps=2)
    table = None
    keys = ("self_device_time_total", "self_cuda_time_total") if device.startswith("cuda") else ()
    for sort in (*keys, "self_cpu_time_total"):
        try:
            table = prof.key_averages().table(sort_by=sort, row_limit=20)
            break
        except (AttributeError, KeyError, ValueError):
            continue
    print(table, flush=True)
    peft_model.unload()
    reset_peak(device)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="tiny config on CPU: a quick test")
    parser.add_argument("--rows", default=DEFAULT_ROWS, help="comma-separated rows to run")
    parser.add_argument("--skip-qlora", action="store_true")
    parser.add_argument("--real-tokens", type=int, default=None, help="per row (default 8x4096)")
    parser.add_argument("--peak-tflops", type=float, default=None)
    parser.add_argument("--n-params", type=float, default=None, help="N for MFU (7B: 6.7e9)")
    parser.add_argument("--profile", action="store_true", help="torch.profiler of packed steps")
    parser.add_argument("--budget-s", type=float, default=540, help="skip rows after this")
    parser.add_argument(
        "--dtype",
        choices=["auto", "float32", "bfloat16"],
        default="auto",
        help="weights (auto: bf16 on GPU, fp32 with --tiny)",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (--tiny)")
    parser.add_argument("--json", type=Path)
    parser.add_argument(
        "--processes", type=int, default=1, help="data-parallel processes (one per GPU)"
    )
    args = parser.parse_args(argv)
    if args.processes > 1 and "RANK" not in os.environ:
        return _launch_data_parallel(args.processes, sys.argv[1:] if argv is None else argv)
    from echo_pipeline.training.distributed import process_group, ranks_from_env

    with process_group(ranks_from_env()) as ranks:
        if not ranks.is_main:  # one report: rank 0's
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 (for the life of the process)
        return _run(args, ranks)


def _launch_data_parallel(processes: int, argv: list[str]) -> int:
    """This script again, on ``processes`` processes of this machine (torchrun)."""
    import subprocess

    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1"]
    command += ["--nproc-per-node", str(processes), str(Path(__file__).resolve()), *argv]
    return subprocess.call(command)


def _run(args: argparse.Namespace, ranks) -> int:
    started = time.perf_counter()

    import torch
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    import logging

    logging.getLogger("echo_pipeline").setLevel(logging.WARNING)

    if args.threads:
        torch.set_num_threads(args.threads)
    device = "cpu" if args.tiny or not torch.cuda.is_available() else "cuda"
    if ranks.is_distributed and device == "cuda":
        device = f"cuda:{ranks.local_rank}"
    if device == "cpu" and not args.tiny:
        raise SystemExit("no CUDA device: run with --tiny to test the script on CPU")
    if args.dtype == "auto":
        dtype = torch.float32 if device == "cpu" else torch.bfloat16
    else:
        dtype = getattr(torch, args.dtype)
    half = dtype == torch.bfloat16
    scale = 4 if args.tiny else 1  # tiny: packs 4x smaller, same code
    info = _common.machine("torch", "transformers", "peft", "accelerate", "bitsandbytes")
    on_gpu = device.startswith("cuda")
    info["device"] = torch.cuda.get_device_name() if on_gpu else _common.cpu_model()
    _common.print_machine(info)
    print(f"# device: {info['device']}", flush=True)
    config = llama_config(args.tiny)
    rows = [r for r in args.rows.split(",") if r]
    if ranks.is_distributed:
        rows = [r for r in rows if r.startswith(("packed-", "qlora-"))]
    if args.skip_qlora:
        rows = [r for r in rows if not r.startswith("qlora")]
    real_tokens = args.real_tokens or 8 * 4096 // scale  # 8 packs of 4096, 4 of 8192
    packs = [
        int(r.split("-")[-1] if r[-1].isdigit() else r.split("-")[1]) for r in rows if "-" in r
    ]
    longest = min([p // scale for p in packs] + [recipes.CUTOFF * 4])
    count = max(64, int(real_tokens / 89 * 1.2))
    examples = synthetic_examples(count, config.vocab_size, longest=longest)
    total, chosen = 0, []
    for example in examples:
        if total >= real_tokens and len(chosen) % recipes.MICRO_BATCH == 0:
            break
        chosen.append(example)
        total += len(example["input_ids"])
    examples = chosen
    print(f"# data: {len(examples)} samples, {total} real tokens", flush=True)

    t0 = time.perf_counter()
    model = build_model(config, device, dtype)
    n_params = args.n_params or (
        N_7B if not args.tiny else sum(p.numel() for p in model.parameters())
    )
    peak = peak_tflops(args.peak_tflops, device)
    print(
        f"# model built in {time.perf_counter() - t0:.1f} s; N={n_params:.3g}; peak "
        f"{peak or '-'} TFLOP/s",
        flush=True,
    )

    iso = recipes.isolation_check(model, examples, device)
    print(
        f"# isolation (max |logit diff| packed vs alone, logits up to {iso['logit_scale']:.2f}): "
        f"as trained {iso['use_cache=False']:.3g}; dense block mask {iso['dense mask']:.3g}; "
        f"cache left on {iso['cache on']:.3g}",
        flush=True,
    )
    if args.profile:
        profile_step(model, examples, 4096 // scale, device)

    results: dict[str, dict] = {}

    def record(name: str, summary: dict, note: str = "", pack: int | None = None) -> None:
        summary["peak_gib"] = peak_gib(device)
        tps = summary["real_tokens_per_s"]
        # N devices together: their summed peak.
        summary["mfu"] = tps * 4 * n_params / (peak * 1e12 * ranks.world_size) if peak else None
        summary["note"] = note
        summary["pack_tokens"] = pack
        summary["processes"] = ranks.world_size
        if ranks.is_distributed:
            name = f"{name} x{ranks.world_size}"
        results[name] = summary
        mfu = f"{summary['mfu']:.1%}" if summary["mfu"] is not None else "-"
        mem = f"{summary['peak_gib']:.1f} GiB" if summary["peak_gib"] is not None else "-"
        print(
            f"  {name:<16} {tps:9.1f} real tok/s  MFU {mfu:>6}  peak {mem:>9}  "
            f"waste {summary['padding_waste']:.1%}  steps {summary['steps']}  "
            f"{f'pack {pack}  ' if pack else ''}"
            f"({time.perf_counter() - started:.0f} s elapsed)",
            flush=True,
        )

    def over_budget(name: str) -> bool:
        if time.perf_counter() - started > args.budget_s:
            print(f"  {name:<16} skipped: past the {args.budget_s:.0f} s budget", flush=True)
            return True
        return False

    for name in [r for r in rows if not r.startswith("qlora")]:
        if over_budget(name):
            continue
        reset_peak(device)
        if name == "webui":
            summary, peft_model = recipes.run_webui(
                model, examples, lora="webui", device=device, bf16=half
            )
        elif name.startswith("packed-"):
            *flags, size = name.split("-")[1:]
            pack = int(size) // scale
            summary, peft_model = recipes.run_packed(
                model,
                examples,
                pack_tokens=pack,
                lora="webui" if "qv" in flags else "project",
                packed_attention="model" if "dense" in flags else "segments",
            )
        else:
            raise SystemExit(f"unknown row {name!r}")
        record(name, summary, pack=None if name == "webui" else pack)
        model = peft_model.unload()  # the base model again, adapter layers removed
        del peft_model

    qlora_rows = [r for r in rows if r.startswith("qlora")]
    if qlora_rows and not over_budget("qlora"):
        try:
            import bitsandbytes  # noqa: F401
        except ImportError as error:
            print(f"  qlora rows skipped: bitsandbytes unavailable ({error})", flush=True)
            qlora_rows = []
    if qlora_rows and not over_budget("qlora"):
        from echo_pipeline.training.base_model import load_causal_lm, resolve_base_model

        shm = Path("/dev/shm")
        need = sum(p.numel() * p.element_size() for p in model.parameters()) * 1.1
        root = shm if shm.is_dir() and shutil.disk_usage(shm).free > need else None
        with tempfile.TemporaryDirectory(dir=root) as folder:
            t0 = time.perf_counter()
            model.save_pretrained(folder)
            del model
            reset_peak(device)
            quantized = load_causal_lm(
                resolve_base_model(folder),
                dtype="bfloat16" if half else "float32",
                quantization="4bit",
                device=device,
            )
            print(f"# saved and reloaded in 4 bit in {time.perf_counter() - t0:.1f} s", flush=True)
        for name in qlora_rows:
            if over_budget(name):
                continue
            reset_peak(device)
            parts = name.split("-")
            pack = int(parts[1]) // scale
            summary, peft_model = recipes.run_packed(
                quantized, examples, pack_tokens=pack, gradient_checkpointing="gc" in parts
            )
            note = "nf4 double-quant" + (", grad ckpt" if "gc" in parts else "")
            record(name, summary, note=note, pack=pack)
            quantized = peft_model.unload()
            del peft_model

    print("\n| recipe | pack | real tokens/s | MFU (4N) | peak GPU memory | padding waste |")
    print("|---|---|---|---|---|---|")
    for name, s in results.items():
        mfu = f"{s['mfu']:.1%}" if s["mfu"] is not None else "-"
        mem = f"{s['peak_gib']:.1f} GiB" if s["peak_gib"] is not None else "-"
        pack = s["pack_tokens"] or f"{recipes.CUTOFF} x {recipes.MICRO_BATCH} padded"
        print(
            f"| {name} | {pack} | {s['real_tokens_per_s']:,.0f} | {mfu} | {mem} | "
            f"{s['padding_waste']:.1%} |"
        )
    if "webui" in results:
        base = results["webui"]["real_tokens_per_s"]
        for name, s in results.items():
            if name != "webui":
                print(f"{name} / webui: {s['real_tokens_per_s'] / base:.2f}x")
    if "packed-4096" in results and "qlora-4096" in results:
        q = results["qlora-4096"]["real_tokens_per_s"] / results["packed-4096"]["real_tokens_per_s"]
        print(f"qlora-4096 / packed-4096: {q:.2f}")
    print(f"# total {time.perf_counter() - started:.0f} s", flush=True)
    _common.write_json(
        args.json,
        {"machine": info, "command": _common.command_line(), "isolation": iso, "rows": results},
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
