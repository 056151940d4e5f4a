"""Does reply memory help? Held-out reply loss of the base model with k = 0, 2, 3, 4 examples.

A forward pass, no training: the real export's pairs are built with today's defaults, the
train pairs indexed with the shipped MiniLM (:mod:`echo_pipeline.pairs.memory`), and every held-out
pair (val and test) rendered in ``--template`` with its ``k`` most similar train exchanges
before the conversation, exactly as ``template_dataset`` renders it. The loss is the mean
cross-entropy of my held-out reply tokens, teacher-forced; the difference to k = 0 comes with a
95 % paired bootstrap interval over held-out pairs. ``random`` rows are the control: ``k``
train exchanges drawn at random (never the pair's session), which says whether similarity or
merely seeing my replies does the work.

    OMP_NUM_THREADS=1 python benchmarks/bench_memory.py --corpus amulius --ks 0,2,3,4 --random 3
    python benchmarks/bench_memory.py --corpus ece722 --template model_default --json out.json

On a shared machine run it with ``OMP_NUM_THREADS=1``: two spinning threads per process on two
busy cores were several times slower than one.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common
from bench_echo_quality import CORPORA, export_path


def held_out_losses(model, examples) -> tuple[list[float], list[int]]:
    """Per example: summed NLL of the labelled (reply) tokens, and how many there are."""
    import torch

    sums, counts = [], []
    with torch.inference_mode():
        for example in examples:
            ids = torch.tensor([example.input_ids])
            labels = torch.tensor([example.labels])
            logits = model(input_ids=ids).logits[0, :-1].float()
            target = labels[0, 1:]
            mask = target != -100
            nll = torch.nn.functional.cross_entropy(logits[mask], target[mask], reduction="sum")
            sums.append(float(nll))
            counts.append(int(mask.sum()))
    return sums, counts


def paired_interval(base, other, counts, seed: int = 0, rounds: int = 2000):
    """95 % bootstrap interval of (loss(other) - loss(base)) per reply token, pairs resampled."""
    import numpy as np

    base, other, counts = (np.asarray(x, float) for x in (base, other, counts))
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(base), (rounds, len(base)))
    diffs = (other[picks].sum(1) - base[picks].sum(1)) / counts[picks].sum(1)
    return float(np.percentile(diffs, 2.5)), float(np.percentile(diffs, 97.5))


def random_examples(index, sessions, k: int, seed: int = 0):
    import numpy as np

    rng = np.random.default_rng(seed)
    own = np.asarray(index.session_ids)
    shown = []
    for session in sessions:
        allowed = np.flatnonzero(own != str(session))
        picks = rng.choice(allowed, size=min(k, len(allowed)), replace=False)
        shown.append(tuple(index.example(int(i)) for i in sorted(picks)))
    return shown


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", default="amulius", choices=sorted(CORPORA))
    parser.add_argument("--template", default="chatml")
    parser.add_argument("--ks", default="0,2,3,4")
    parser.add_argument("--random", type=int, default=3, help="k of the random control (0: none)")
    parser.add_argument("--max-tokens", type=int, default=512)
    parser.add_argument(
        "--names",
        action="store_true",
        help="Add a k=0 variant with every speaker named (group-chat rendering on every pair).",
    )
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)

    import pyarrow as pa
    import torch

    from echo_pipeline.datasets.templates import default_system_prompt
    from echo_pipeline.datasets.tokenization import build_template_dataset
    from echo_pipeline.exports import read_exports
    from echo_pipeline.pairs.conversations import PairingConfig, build_pairs, pairs_identity
    from echo_pipeline.pairs.memory import ReplyMemory, build_index, load_encoder
    from echo_pipeline.training.base_model import load_causal_lm, load_tokenizer, resolve_base_model

    info = _common.machine("torch", "transformers")
    _common.print_machine(info)
    print(f"# load {_common.load_str()} (the machine is shared)", flush=True)
    torch.manual_seed(0)
    export, me = CORPORA[args.corpus]
    messages = read_exports([export_path(export)])
    pairs_table, _ = build_pairs(messages.to_pandas(), PairingConfig(me=(me,)))
    assert isinstance(pairs_table, pa.Table)
    system = default_system_prompt(next(iter(pairs_identity(pairs_table).names), ""))
    pairs = pairs_table.to_pandas()
    started = time.perf_counter()
    encode = load_encoder()
    index = build_index(pairs, encode)
    print(
        f"# {args.corpus}: {len(pairs)} pairs ({pairs['split'].value_counts().to_dict()}), "
        f"index of {len(index)} train pairs in {time.perf_counter() - started:.0f} s",
        flush=True,
    )
    held = pairs["split"].isin(["val", "test"]).to_numpy()
    resolved = resolve_base_model("smollm2-135m-instruct")
    tokenizer = load_tokenizer(resolved)
    model = load_causal_lm(resolved, quantization="none", dtype="float32", purpose="inference")
    model.eval()
    memory = ReplyMemory(index, encode, 0)
    prompts = pairs["prompt"].astype(str).tolist()
    sessions = pairs["session_id"].astype(str).tolist()

    variants = [(f"k={k}", int(k)) for k in args.ks.split(",")]
    if args.random:
        variants.append((f"random k={args.random}", -args.random))
    if args.names:
        variants.append(("k=0 names", "names"))
    rows, baseline = {}, None
    for name, k in variants:
        if k == "names":
            shown = [()] * len(pairs)
        elif k >= 0:
            memory.k = k
            shown = memory.examples_for(prompts, sessions)
        else:
            shown = random_examples(index, sessions, -k)
        _, examples = build_template_dataset(
            pairs,
            args.template,
            tokenizer,
            system_prompt=system,
            max_tokens=args.max_tokens,
            examples=shown,
            is_group=True if k == "names" else None,
        )
        chosen = [e for e, keep in zip(examples, held, strict=True) if keep]
        t0 = time.perf_counter()
        sums, counts = held_out_losses(model, chosen)
        loss = sum(sums) / sum(counts)
        row = {
            "reply_loss": loss,
            "pairs": len(chosen),
            "reply_tokens": sum(counts),
            "prompt_tokens_mean": sum(e.prompt_len for e in chosen) / len(chosen),
            "truncated": sum(e.truncated for e in chosen),
            "seconds": time.perf_counter() - t0,
        }
        if baseline is None:
            baseline = sums
        else:
            row["delta"] = loss - rows[variants[0][0]]["reply_loss"]
            row["delta_low"], row["delta_high"] = paired_interval(baseline, sums, counts)
        rows[name] = row
        extra = (
            f"  delta {row['delta']:+.3f} [{row['delta_low']:+.3f}, {row['delta_high']:+.3f}]"
            if "delta" in row
            else ""
        )
        print(
            f"{name:<12} held-out reply loss {loss:.3f} on {len(chosen)} pairs "
            f"({row['reply_tokens']} reply tokens, prompt {row['prompt_tokens_mean']:.0f} tokens "
            f"mean, {row['truncated']} truncated){extra}",
            flush=True,
        )
    _common.write_json(
        args.json,
        {"machine": info, "corpus": args.corpus, "template": args.template, "results": rows},
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
