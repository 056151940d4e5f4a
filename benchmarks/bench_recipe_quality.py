"""What a training choice costs or buys: held-out reply loss and speed of the same recipe with
one setting changed, on the bundled sample and the bundled base model (CPU).

    python benchmarks/bench_recipe_quality.py --variants "lora_dropout=0.05;lora_dropout=0.0"
    python benchmarks/bench_recipe_quality.py --template llama2_chat --experiment demo \\
        --variants "pack_tokens=512;pack_tokens=1024" --threads 1

Each variant trains a fresh adapter with ``train_lora`` on the template's train split (the
``--experiment`` recipe from ``echo_pipeline.training.experiments`` plus the variant's overrides; the
validation split drives evaluation and best-adapter restore as in the pipeline), then measures
the mean reply-token cross-entropy on the **test** split (pairs never seen in training or
selection) with ``reply_loss``. The base model's test loss is printed once for scale. Speed is
the trainer's own real tokens/s over its training steps. A ``dtype=bfloat16`` override loads
the base model in bf16 (the adapter stays fp32) and evaluates it in bf16 too.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common


def parse_variants(text: str) -> list[dict]:
    """``"a=1,b=x;c=0.5"`` -> ``[{"a": 1, "b": "x"}, {"c": 0.5}]`` (numbers parsed)."""
    variants = []
    for chunk in text.split(";"):
        overrides: dict = {}
        for item in filter(None, (part.strip() for part in chunk.split(","))):
            key, _, raw = item.partition("=")
            value: object = raw
            for cast in (int, float):
                try:
                    value = cast(raw)
                    break
                except ValueError:
                    continue
            overrides[key.strip()] = value
        variants.append(overrides)
    return variants


def splits(template: str):
    from echo_pipeline.datasets.tokenization import build_template_dataset
    from echo_pipeline.exports import read_exports
    from echo_pipeline.infra.paths import sample_export_dir
    from echo_pipeline.pairs.conversations import PairingConfig, build_pairs, pairs_identity
    from echo_pipeline.pairs.pairing_config import SAMPLE_ME
    from echo_pipeline.training.base_model import load_tokenizer, resolve_base_model

    messages = read_exports([sample_export_dir()])
    pairs, _ = build_pairs(messages.to_pandas(), PairingConfig(me=(SAMPLE_ME,)))
    tokenizer = load_tokenizer(resolve_base_model())
    me_name = next(iter(pairs_identity(pairs).names), "")
    frame, examples = build_template_dataset(
        pairs.to_pandas(), template, tokenizer, me_name=me_name
    )
    by_split: dict[str, list] = {"train": [], "val": [], "test": []}
    for example, split in zip(examples, frame["split"], strict=True):
        by_split[split].append(example)
    return by_split


def load_model(dtype: str = "float32"):
    from echo_pipeline.training.base_model import load_causal_lm, resolve_base_model

    return load_causal_lm(resolve_base_model(), dtype=dtype, quantization="none", device="cpu")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--template", default="chatml")
    parser.add_argument("--experiment", default="demo")
    parser.add_argument("--variants", default="lora_dropout=0.05;lora_dropout=0.0")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)

    import logging

    import torch
    import transformers

    from echo_pipeline.training.experiments import experiment_config
    from echo_pipeline.training.loop import train_lora
    from echo_pipeline.training.losses import reply_loss

    transformers.logging.set_verbosity_error()
    logging.getLogger("echo_pipeline").setLevel(logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)
    info = _common.machine("torch", "transformers", "peft")
    info["torch_threads"] = torch.get_num_threads()
    _common.print_machine(info)
    data = splits(args.template)
    print(
        f"# {args.template}: {len(data['train'])} train / {len(data['val'])} val / "
        f"{len(data['test'])} test examples; recipe {args.experiment!r}",
        flush=True,
    )
    base_loss = reply_loss(load_model(), data["test"])
    print(f"# base model test reply loss {base_loss:.3f}", flush=True)

    rows = []
    for overrides in parse_variants(args.variants):
        config = experiment_config(args.experiment, overrides)
        load = _common.load_str()
        with tempfile.TemporaryDirectory() as out:
            model = load_model(config.dtype)  # "auto" is float32 on CPU
            result = train_lora(model, None, data["train"], data["val"], config, Path(out))
        test_loss = reply_loss(result.model, data["test"])
        row = {
            "overrides": overrides,
            "test_reply_loss": test_loss,
            "best_val_loss": result.best_eval_loss,
            "best_step": result.best_step,
            "steps": result.steps,
            "real_tokens_per_s": result.tokens_per_s,
            "train_seconds": result.seconds,
            "load_at_start": load,
        }
        rows.append(row)
        print(
            f"  {overrides}: test reply loss {test_loss:.3f} (base {base_loss:.3f}), best val "
            f"{result.best_eval_loss:.3f} at step {result.best_step}/{result.steps}, "
            f"{result.tokens_per_s:.1f} real tok/s, load {load}",
            flush=True,
        )
    print("\n| overrides | test reply loss | best val loss (step) | real tokens/s |")
    print("|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['overrides']} | {r['test_reply_loss']:.3f} | {r['best_val_loss']:.3f} "
            f"({r['best_step']}) | {r['real_tokens_per_s']:.1f} |"
        )
    _common.write_json(
        args.json,
        {
            "machine": info,
            "command": _common.command_line(),
            "template": args.template,
            "experiment": args.experiment,
            "base_test_reply_loss": base_loss,
            "variants": rows,
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
