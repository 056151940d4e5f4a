"""LoRA training on CPU: the project's packed trainer against text-generation-webui's recipe.

    python benchmarks/bench_train_cpu.py                          # webui vs packed 1024 / 512
    python benchmarks/bench_train_cpu.py --recipes webui,packed-256,packed-512 --rounds 2
    python benchmarks/bench_train_cpu.py --real-tokens 2048 --threads 1   # quick look

Both recipes train SmolLM2-135M-Instruct (the bundled base, fp32) on the same examples: the
bundled sample export -> ``build_pairs`` -> ``build_template_dataset`` (train split, first
examples until ``--real-tokens`` is reached, rounded to whole micro-batches), so they process the
same real (non-padding) tokens. Reported: real tokens/s over the steps after the first (the first
step pays one-off allocations; it is reported apart), padding waste, and the ratio.

Recipes
    ``packed-N``  the project's path: ``echo_pipeline.training.loop.train_lora`` as the training asset
                  calls it (rows of <= N tokens packed by ``pack_examples``, samples isolated by
                  restarting position_ids, logits only at reply positions, loss on the reply),
                  project LoRA defaults (r16, alpha 32, all linear layers), no eval/checkpoints.
    ``webui``     what text-generation-webui's "Train LoRA" tab does by default with a formatted
                  dataset (modules/training.py, commit 1bc6a48): every example left-padded with
                  token id 0 to cutoff_len=256 (truncated beyond), micro-batch 4, batch 128
                  (gradient accumulation 32), LoRA r32 / alpha 64 / dropout 0.05 on q_proj and
                  v_proj, AdamW (adamw_torch) lr 3e-4, linear schedule, transformers ``Trainer``
                  with ``DataCollatorForLanguageModeling(mlm=False)``, which sets labels = input
                  ids with padding masked: the loss covers the whole formatted text (prompt
                  included) and the logits of every position are computed. Its
                  ``torch.compile(lora_model)`` comes after the Trainer is built and so does not
                  change the model the Trainer runs; it is not applied here either.
    ``webui-alllinear``  the same padded recipe with the project's LoRA (r16 all linear), to
                  separate the effect of the recipe from that of the adapter's size.
    ``packed-qv-N`` the packed path with webui's adapter (r32 q,v), for the same reason.
    ``packed-nodrop-N``, ``packed-drop-N`` the project's adapter without / with LoRA dropout
                  0.05 (what the dropout costs).
    ``packed-dense-N`` the packed path with the model's own sdpa attention and its dense
                  block-diagonal mask instead of one attention call per packed sample (flags
                  combine: ``packed-dense-qv-512``).

The machine may be shared: rounds interleave recipes (A B A B), the best round of each is
reported with the load average seen at its start.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common
import _train_recipes as recipes


def training_examples(template: str, real_tokens: int) -> tuple[list, dict]:
    """The same examples for every recipe: train split of the bundled sample, in order."""
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
    train = [ex for ex, split in zip(examples, frame["split"], strict=True) if split == "train"]
    chosen, total = [], 0
    for example in train:
        if total >= real_tokens and len(chosen) % recipes.MICRO_BATCH == 0:
            break
        chosen.append(example)
        total += len(example.input_ids)
    # The padded recipe's collator stand-in must equal transformers' collator on these rows.
    recipes.check_collator(tokenizer, recipes.webui_rows(chosen)[0])
    lengths = [len(ex.input_ids) for ex in chosen]
    labelled = sum(sum(1 for x in ex.labels if x != -100) for ex in chosen)
    info = {
        "template": template,
        "examples": len(chosen),
        "real_tokens": total,
        "mean_tokens": total / len(chosen),
        "max_tokens": max(lengths),
        "reply_label_share": labelled / total,
    }
    return chosen, info


def load_model():
    from echo_pipeline.training.base_model import load_causal_lm, resolve_base_model

    return load_causal_lm(resolve_base_model(), dtype="float32", quantization="none", device="cpu")


def run_recipe(name: str, examples: list) -> dict:
    """A fresh base model per run: both recipes inject LoRA layers into it."""
    if name in ("webui", "webui-alllinear"):
        lora = "webui" if name == "webui" else "project"
        result, _ = recipes.run_webui(load_model(), examples, lora=lora, device="cpu")
    elif name.startswith("packed-"):
        *flags, pack = name.split("-")[1:]
        unknown = set(flags) - {"qv", "nodrop", "drop", "dense"}
        if unknown or not pack.isdigit():
            raise SystemExit(f"unknown recipe {name!r}")
        lora = "project"
        for flag, preset in (
            ("qv", "webui"),
            ("nodrop", "project-nodrop"),
            ("drop", "project-drop"),
        ):
            if flag in flags:
                lora = preset
        result, _ = recipes.run_packed(
            load_model(),
            examples,
            pack_tokens=int(pack),
            lora=lora,
            packed_attention="model" if "dense" in flags else "segments",
        )
    else:
        raise SystemExit(f"unknown recipe {name!r}")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipes", default="webui,packed-1024,packed-512,packed-qv-512")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved repetitions")
    parser.add_argument("--real-tokens", type=int, default=4096, help="real tokens per run")
    parser.add_argument("--template", default="chatml")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    parser.add_argument(
        "--profile",
        metavar="RECIPE",
        help="run RECIPE once under torch.profiler and print "
        "the operators by self CPU time (use a small --real-tokens)",
    )
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)

    import logging

    import torch
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    logging.getLogger("echo_pipeline").setLevel(logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)
    info = _common.machine("torch", "transformers", "peft", "accelerate")
    info["torch_threads"] = torch.get_num_threads()
    _common.print_machine(info)
    examples, data = training_examples(args.template, args.real_tokens)
    iso = recipes.isolation_check(load_model().eval(), examples, "cpu")
    data["isolation"] = iso
    print(
        f"# isolation (max |logit diff| of 6 samples packed vs alone, logits up to "
        f"{iso['logit_scale']:.1f}): as trained (per-sample attention, use_cache=False) "
        f"{iso['use_cache=False']:.2g}; sdpa with a dense block mask {iso['dense mask']:.2g}; "
        f"cache left on {iso['cache on']:.2g}",
        flush=True,
    )
    print(
        f"# data: {data['examples']} {data['template']} examples, {data['real_tokens']} real "
        f"tokens (mean {data['mean_tokens']:.1f}, max {data['max_tokens']}), reply labels "
        f"{data['reply_label_share']:.1%} of tokens; torch threads {info['torch_threads']}",
        flush=True,
    )
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU]) as prof:
            result = run_recipe(args.profile, examples)
        print(f"{args.profile}: {result['real_tokens_per_s']:.1f} real tok/s under the profiler")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))
        return 0
    names = args.recipes.split(",")
    runs: dict[str, list[dict]] = {name: [] for name in names}
    for round_no in range(args.rounds):
        for name in names if round_no % 2 == 0 else names[::-1]:
            load = _common.load_str()
            result = run_recipe(name, examples)
            result["load_at_start"] = load
            result["load_at_end"] = _common.load_str()
            runs[name].append(result)
            print(
                f"  round {round_no + 1} {name:<16} {result['real_tokens_per_s']:7.1f} real tok/s "
                f"(incl. first step {result['real_tokens_per_s_incl_first']:6.1f}; "
                f"{result['steps']} steps, first {result['first_step_s']:.1f} s) "
                f"waste {result['padding_waste']:.1%} processed {result['processed_tokens']} "
                f"loss {result['train_loss']:.3f} load {load} -> {result['load_at_end']}",
                flush=True,
            )
    best = {name: max(r, key=lambda x: x["real_tokens_per_s"]) for name, r in runs.items()}
    print("\n| recipe | real tokens/s (best) | padding waste | processed tokens | load at start |")
    print("|---|---|---|---|---|")
    for name in names:
        b = best[name]
        print(
            f"| {name} | {b['real_tokens_per_s']:.1f} | {b['padding_waste']:.1%} | "
            f"{b['processed_tokens']} | {b['load_at_start']} |"
        )
    ratios = {}
    if "webui" in best:
        base = best["webui"]["real_tokens_per_s"]
        for name in names:
            if name != "webui":
                ratios[name] = best[name]["real_tokens_per_s"] / base
                print(f"{name} / webui: {ratios[name]:.2f}x")
    _common.write_json(
        args.json,
        {
            "machine": info,
            "command": _common.command_line(),
            "data": data,
            "runs": runs,
            "best": best,
            "ratios_vs_webui": ratios,
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
