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
    ``packed-N``  the project's path: ``echo_pipeline.training.train_lora`` as the training asset
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

The machine may be shared: rounds interleave recipes (A B A B), the best round of each is
reported with the load average seen at its start.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common

CUTOFF = 256
MICRO_BATCH = 4
WEBUI_BATCH = 128
WEBUI_PAD_ID = 0  # webui sets shared.tokenizer.pad_token_id = 0 before tokenising


def training_examples(template: str, real_tokens: int) -> tuple[list, dict]:
    """The same examples for every recipe: train split of the bundled sample, in order."""
    from echo_pipeline.base_model import load_tokenizer, resolve_base_model
    from echo_pipeline.conversations import PairingConfig, build_pairs
    from echo_pipeline.exports import read_exports
    from echo_pipeline.paths import sample_export_dir
    from echo_pipeline.tokenization import build_template_dataset

    messages = read_exports([sample_export_dir()])
    pairs, _ = build_pairs(messages.to_pandas(), PairingConfig(me=("alex",)))
    tokenizer = load_tokenizer(resolve_base_model())
    frame, examples = build_template_dataset(pairs.to_pandas(), template, tokenizer)
    train = [ex for ex, split in zip(examples, frame["split"], strict=True) if split == "train"]
    chosen, total = [], 0
    for example in train:
        if total >= real_tokens and len(chosen) % MICRO_BATCH == 0:
            break
        chosen.append(example)
        total += len(example.input_ids)
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
    from echo_pipeline.base_model import load_causal_lm, resolve_base_model

    return load_causal_lm(resolve_base_model(), dtype="float32", quantization="none", device="cpu")


def run_packed(examples: list, pack_tokens: int, lora: str) -> dict:
    """train_lora exactly as the training asset runs it, one pass over the packed rows."""
    from echo_pipeline.packing import pack_examples, padding_waste
    from echo_pipeline.training import TrainingConfig, train_lora

    extra = {}
    if lora == "qv32":
        extra = {"lora_r": 32, "lora_alpha": 64, "target_modules": ["q_proj", "v_proj"]}
    packs = pack_examples(examples, max_tokens=pack_tokens, seed=42, shuffle=False)
    config = TrainingConfig(
        pack_tokens=pack_tokens,
        max_steps=len(packs),
        eval_every=0,
        checkpoint_every=0,
        log_every=1,
        restore_best=False,
        **extra,
    )
    steps: list[tuple[float, float]] = []  # (real tokens, seconds) per optimizer step
    last_real = [0.0]

    def on_log(step: int, metrics: dict[str, float]) -> None:
        if "tokens_per_s" in metrics:
            real = metrics["real_tokens"] - last_real[0]
            last_real[0] = metrics["real_tokens"]
            steps.append((real, real / metrics["tokens_per_s"]))

    model = load_model()
    with tempfile.TemporaryDirectory() as out:
        result = train_lora(model, None, examples, [], config, Path(out), on_log=on_log)
    return _summary(
        steps,
        processed=result.tokens_processed,
        real=result.real_tokens,
        waste=padding_waste(packs),
        rows=len(packs),
        train_loss=result.final_train_loss,
    )


def run_webui(examples: list, lora: str) -> dict:
    """text-generation-webui's formatted-dataset LoRA training, its defaults, on CPU."""
    import torch
    import transformers
    from peft import LoraConfig, get_peft_model

    from echo_pipeline.base_model import load_tokenizer, resolve_base_model

    tokenizer = load_tokenizer(resolve_base_model())
    tokenizer.pad_token_id = WEBUI_PAD_ID
    tokenizer.padding_side = "left"
    rows, real_total, processed = [], 0, 0
    for example in examples:
        ids = list(example.input_ids)[:CUTOFF]  # webui encodes with truncation=True, max_length
        ids = [WEBUI_PAD_ID] * (CUTOFF - len(ids)) + ids
        input_ids = torch.tensor(ids)
        rows.append(
            {
                "input_ids": input_ids,
                "labels": [1] * len(ids),  # replaced by the collator, as in webui
                "attention_mask": input_ids.ne(WEBUI_PAD_ID),
            }
        )
        real_total += int(input_ids.ne(WEBUI_PAD_ID).sum())
        processed += CUTOFF

    collate = transformers.DataCollatorForLanguageModeling(tokenizer, mlm=False)
    batch_real: list[int] = []

    def counting_collator(features):
        batch = collate(features)
        batch_real.append(int(batch["attention_mask"].sum()))
        return batch

    marks: list[float] = []

    class Clock(transformers.TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            if not marks:
                marks.append(time.perf_counter())

        def on_substep_end(self, args, state, control, **kwargs):
            marks.append(time.perf_counter())

        def on_step_end(self, args, state, control, **kwargs):
            marks.append(time.perf_counter())

    if lora == "qv32":
        lora_config = LoraConfig(
            r=32,
            lora_alpha=64,
            target_modules=["q_proj", "v_proj"],
            lora_dropout=0.05,
            bias="none",
            task_type="CAUSAL_LM",
        )
    else:
        lora_config = LoraConfig(
            r=16,
            lora_alpha=32,
            target_modules="all-linear",
            lora_dropout=0.05,
            bias="none",
            task_type="CAUSAL_LM",
        )
    model = get_peft_model(load_model(), lora_config)
    model.config.use_cache = False
    accumulation = WEBUI_BATCH // MICRO_BATCH
    with tempfile.TemporaryDirectory() as out:
        trainer = transformers.Trainer(
            model=model,
            train_dataset=rows,
            args=transformers.TrainingArguments(
                output_dir=out,
                per_device_train_batch_size=MICRO_BATCH,
                gradient_accumulation_steps=accumulation,
                warmup_steps=math.ceil(100 / accumulation),
                num_train_epochs=1,
                learning_rate=3e-4,
                fp16=False,
                optim="adamw_torch",
                logging_steps=5,
                save_strategy="no",
                lr_scheduler_type="linear",
                use_cpu=True,
                report_to="none",
                disable_tqdm=True,
                seed=42,
            ),
            data_collator=counting_collator,
            callbacks=[Clock()],
        )
        output = trainer.train()
    seconds = [b - a for a, b in zip(marks, marks[1:], strict=False)]
    steps = list(zip(batch_real, seconds, strict=False))
    return _summary(
        steps,
        processed=processed,
        real=real_total,
        waste=1 - real_total / processed,
        rows=len(rows),
        train_loss=output.training_loss,
    )


def _summary(steps, *, processed: int, real: int, waste: float, rows: int, train_loss) -> dict:
    """tokens/s over the steps after the first, and with the first included."""
    warm = steps[1:] if len(steps) > 1 else steps
    warm_real = sum(r for r, _ in warm)
    warm_s = sum(s for _, s in warm)
    all_real = sum(r for r, _ in steps)
    all_s = sum(s for _, s in steps)
    return {
        "real_tokens_per_s": warm_real / warm_s,
        "real_tokens_per_s_incl_first": all_real / all_s,
        "steps": len(steps),
        "first_step_s": steps[0][1] if steps else None,
        "train_seconds": all_s,
        "processed_tokens": processed,
        "real_tokens": real,
        "padding_waste": waste,
        "rows": rows,
        "train_loss": train_loss,
    }


def run_recipe(name: str, examples: list) -> dict:
    if name == "webui":
        return run_webui(examples, "qv32")
    if name == "webui-alllinear":
        return run_webui(examples, "all-linear")
    if name.startswith("packed-qv-"):
        return run_packed(examples, int(name.rsplit("-", 1)[1]), "qv32")
    if name.startswith("packed-"):
        return run_packed(examples, int(name.rsplit("-", 1)[1]), "default")
    raise SystemExit(f"unknown recipe {name!r}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipes", default="webui,packed-1024,packed-512")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved repetitions")
    parser.add_argument("--real-tokens", type=int, default=4096, help="real tokens per run")
    parser.add_argument("--template", default="chatml")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)

    import logging

    import torch
    import transformers

    transformers.logging.set_verbosity_error()
    logging.getLogger("echo_pipeline").setLevel(logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)
    info = _common.machine("torch", "transformers", "peft", "accelerate")
    info["torch_threads"] = torch.get_num_threads()
    _common.print_machine(info)
    examples, data = training_examples(args.template, args.real_tokens)
    print(
        f"# data: {data['examples']} {data['template']} examples, {data['real_tokens']} real "
        f"tokens (mean {data['mean_tokens']:.1f}, max {data['max_tokens']}), reply labels "
        f"{data['reply_label_share']:.1%} of tokens; torch threads {info['torch_threads']}",
        flush=True,
    )
    recipes = args.recipes.split(",")
    runs: dict[str, list[dict]] = {name: [] for name in recipes}
    for round_no in range(args.rounds):
        for name in recipes if round_no % 2 == 0 else recipes[::-1]:
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
    for name in recipes:
        b = best[name]
        print(
            f"| {name} | {b['real_tokens_per_s']:.1f} | {b['padding_waste']:.1%} | "
            f"{b['processed_tokens']} | {b['load_at_start']} |"
        )
    ratios = {}
    if "webui" in best:
        base = best["webui"]["real_tokens_per_s"]
        for name in recipes:
            if name != "webui":
                ratios[name] = best[name]["real_tokens_per_s"] / base
                print(f"{name} / webui: {ratios[name]:.2f}x")
    _common.write_json(
        args.json,
        {"machine": info, "command": _common.command_line(), "data": data, "runs": runs,
         "best": best, "ratios_vs_webui": ratios},
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
