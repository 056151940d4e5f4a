"""The two training recipes the benchmarks compare, shared by the CPU and the GPU scripts.

``run_packed``: the project's trainer, ``echo_pipeline.training.loop.train_lora``, called as the
training asset calls it (rows packed by ``pack_examples``, samples isolated by restarting
position_ids with ``use_cache=False``, vocabulary projection only where a reply token is
predicted), with evaluation and checkpoints switched off so only training steps are timed.

``run_webui``: text-generation-webui's "Train LoRA" tab with its defaults on a formatted dataset
(oobabooga/text-generation-webui, modules/training.py at commit 1bc6a48):

* ``tokenize()`` truncates to ``cutoff_len`` (256) and LEFT-pads with token id 0 (it sets
  ``shared.tokenizer.pad_token_id = 0``); ``attention_mask = input_ids != 0``;
* the Trainer's collator is ``DataCollatorForLanguageModeling(tokenizer, mlm=False)``, which
  replaces the labels by a copy of ``input_ids`` with pad positions set to -100: the loss covers
  the whole formatted text, prompt included ("Train Only After" is overwritten by the
  collator), and the model computes logits at every position of every row;
* micro-batch 4, batch 128 (gradient accumulation 32), LoRA r32 / alpha 64 / dropout 0.05 on
  ``q_proj`` and ``v_proj`` (peft's mapping for llama), adamw_torch, lr 3e-4, linear schedule,
  warmup ceil(100 / 32) steps, fp16 on GPU (bf16 here: the 7B is loaded in bf16), none on CPU;
* ``lora_model = torch.compile(lora_model)`` runs after ``transformers.Trainer(model=lora_model)``
  is built, so the Trainer trains the uncompiled model; nothing is compiled here either.

Both report real (non-padding) tokens per second over the optimizer steps / micro-batches after
the first (the first pays one-off allocations and, on GPU, kernel selection).
"""

from __future__ import annotations

import itertools
import math
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

CUTOFF = 256
MICRO_BATCH = 4
WEBUI_BATCH = 128
WEBUI_PAD_ID = 0


def _project_lora(**changes: Any) -> dict[str, Any]:
    """The adapter the project trains by default (TrainingConfig's own defaults), changed."""
    from echo_pipeline.training.config import TrainingConfig

    defaults = TrainingConfig()
    preset = {
        name: getattr(defaults, name)
        for name in ("lora_r", "lora_alpha", "lora_dropout", "target_modules")
    }
    return preset | changes


LORA_PRESETS = {
    # the project's TrainingConfig defaults
    "project": _project_lora(),
    # the same with and without LoRA dropout (one Bernoulli mask per adapted module and step is
    # costly on CPU), to show what it costs
    "project-nodrop": _project_lora(lora_dropout=0.0),
    "project-drop": _project_lora(lora_dropout=0.05),
    # text-generation-webui defaults (peft's target modules for llama)
    "webui": {
        "lora_r": 32,
        "lora_alpha": 64,
        "lora_dropout": 0.05,
        "target_modules": ["q_proj", "v_proj"],
    },
}


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def summarise(
    steps: Sequence[tuple[float, float]], *, processed: int, real: int, waste: float, rows: int
) -> dict[str, Any]:
    """Real tokens/s over the steps after the first, and with the first one included."""
    warm = list(steps[1:]) if len(steps) > 1 else list(steps)
    warm_real = sum(r for r, _ in warm)
    warm_s = sum(s for _, s in warm)
    all_real = sum(r for r, _ in steps)
    all_s = sum(s for _, s in steps)
    return {
        "real_tokens_per_s": warm_real / warm_s if warm_s else 0.0,
        "real_tokens_per_s_incl_first": all_real / all_s if all_s else 0.0,
        "steps": len(steps),
        "first_step_s": steps[0][1] if steps else 0.0,
        "train_seconds": all_s,
        "processed_tokens": processed,
        "real_tokens": real,
        "padding_waste": waste,
        "rows": rows,
    }


def run_packed(
    model: Any,
    examples: Sequence[Any],
    *,
    pack_tokens: int,
    lora: str = "project",
    gradient_checkpointing: bool = False,
    steps: int | None = None,
    packed_attention: str = "segments",
    torch_threads: int | None = None,
) -> tuple[dict[str, Any], Any]:
    """One pass (or ``steps`` steps) of ``train_lora`` over ``examples`` packed into rows.

    ``torch_threads``: None keeps torch's current setting (what ``--threads`` set).

    ``packed_attention="model"`` runs the model's own sdpa with its dense block-diagonal mask
    instead of one attention call per sample (the project's default, ``"segments"``).

    Returns the summary and the trained PEFT model (``.unload()`` gives the base model back).
    """
    import torch

    from echo_pipeline.training.config import TrainingConfig
    from echo_pipeline.training.loop import train_lora
    from echo_pipeline.training.packing import pack_examples, padding_waste

    packs = pack_examples(examples, max_tokens=pack_tokens, seed=42, shuffle=False)
    config = TrainingConfig(
        pack_tokens=pack_tokens,
        max_steps=steps or len(packs),
        eval_every=0,
        checkpoint_every=0,
        log_every=1,
        restore_best=False,
        gradient_checkpointing=gradient_checkpointing,
        packed_attention=packed_attention,
        torch_threads=torch_threads or torch.get_num_threads(),
        **LORA_PRESETS[lora],
    )
    per_step: list[tuple[float, float]] = []
    seen = [0.0]

    def on_log(step: int, metrics: dict[str, float]) -> None:
        if "tokens_per_s" in metrics:
            real = metrics["real_tokens"] - seen[0]
            seen[0] = metrics["real_tokens"]
            per_step.append((real, real / metrics["tokens_per_s"]))

    with tempfile.TemporaryDirectory() as out:
        result = train_lora(model, None, examples, [], config, Path(out), on_log=on_log)
    summary = summarise(
        per_step,
        processed=result.tokens_processed,
        real=result.real_tokens,
        waste=padding_waste(packs),
        rows=len(packs),
    )
    summary["train_loss"] = result.final_train_loss
    return summary, result.model


def webui_rows(examples: Sequence[Any]) -> tuple[list[dict[str, Any]], int]:
    """webui's ``tokenize()`` applied to already tokenised texts: truncate, left-pad with 0."""
    import torch

    rows, real = [], 0
    for example in examples:
        ids = list(example["input_ids"] if isinstance(example, dict) else example.input_ids)
        ids = ids[:CUTOFF]
        real += len(ids)
        input_ids = torch.tensor([WEBUI_PAD_ID] * (CUTOFF - len(ids)) + ids)
        rows.append(
            {
                "input_ids": input_ids,
                "labels": [1] * CUTOFF,  # webui's placeholder; the collator replaces it
                "attention_mask": input_ids.ne(WEBUI_PAD_ID),
            }
        )
    return rows, real


def webui_collate(features: list[dict[str, Any]]) -> dict[str, Any]:
    """What ``DataCollatorForLanguageModeling(mlm=False)`` returns for webui's pre-padded rows
    (checked against the real collator by :func:`check_collator` where a tokenizer exists)."""
    import torch

    input_ids = torch.stack([f["input_ids"] for f in features])
    attention_mask = torch.stack([torch.as_tensor(f["attention_mask"]) for f in features])
    labels = input_ids.clone()
    labels[labels == WEBUI_PAD_ID] = -100
    return {"input_ids": input_ids, "attention_mask": attention_mask.long(), "labels": labels}


def check_collator(tokenizer: Any, rows: list[dict[str, Any]]) -> None:
    """Fail loudly if :func:`webui_collate` differs from transformers' collator on ``rows``."""
    import torch
    import transformers

    tokenizer.pad_token_id = WEBUI_PAD_ID
    tokenizer.padding_side = "left"
    real = transformers.DataCollatorForLanguageModeling(tokenizer, mlm=False)(rows[:MICRO_BATCH])
    ours = webui_collate(rows[:MICRO_BATCH])
    for key in ("input_ids", "labels"):
        if not torch.equal(real[key], ours[key]):
            raise AssertionError(
                f"webui_collate differs from DataCollatorForLanguageModeling: {key}"
            )
    if not torch.equal(real["attention_mask"].bool(), ours["attention_mask"].bool()):
        raise AssertionError("webui_collate's attention_mask differs")


def run_webui(
    model: Any,
    examples: Sequence[Any],
    *,
    lora: str = "webui",
    device: str = "cpu",
    bf16: bool = False,
    collator: Callable[[list[dict[str, Any]]], dict[str, Any]] = webui_collate,
    max_micro_batches: int | None = None,
) -> tuple[dict[str, Any], Any]:
    """text-generation-webui's LoRA training (see module docstring) on ``examples``."""
    import transformers
    from peft import LoraConfig, get_peft_model

    preset = LORA_PRESETS[lora]
    rows, real_total = webui_rows(examples)
    if max_micro_batches:
        rows = rows[: max_micro_batches * MICRO_BATCH]
        real_total = int(sum(int(r["attention_mask"].sum()) for r in rows))
    batch_real: list[int] = []

    def counting(features: list[dict[str, Any]]) -> dict[str, Any]:
        batch = collator(features)
        batch_real.append(int(batch["attention_mask"].sum()))
        return batch

    marks: list[float] = []

    class Clock(transformers.TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            if not marks:
                _sync(device)
                marks.append(time.perf_counter())

        def on_substep_end(self, args, state, control, **kwargs):
            _sync(device)
            marks.append(time.perf_counter())

        def on_step_end(self, args, state, control, **kwargs):
            _sync(device)
            marks.append(time.perf_counter())

    config = LoraConfig(
        r=preset["lora_r"],
        lora_alpha=preset["lora_alpha"],
        target_modules=preset["target_modules"],
        lora_dropout=preset["lora_dropout"],
        bias="none",
        task_type="CAUSAL_LM",
    )
    peft_model = get_peft_model(model, config)
    peft_model.config.use_cache = False
    accumulation = WEBUI_BATCH // MICRO_BATCH
    with tempfile.TemporaryDirectory() as out:
        trainer = transformers.Trainer(
            model=peft_model,
            train_dataset=rows,
            args=transformers.TrainingArguments(
                output_dir=out,
                per_device_train_batch_size=MICRO_BATCH,
                gradient_accumulation_steps=accumulation,
                warmup_steps=math.ceil(100 / accumulation),
                num_train_epochs=1,
                learning_rate=3e-4,
                bf16=bf16,
                optim="adamw_torch",
                logging_steps=5,
                save_strategy="no",
                lr_scheduler_type="linear",
                use_cpu=not device.startswith("cuda"),
                report_to="none",
                disable_tqdm=True,
                seed=42,
                dataloader_pin_memory=False,
            ),
            data_collator=counting,
            callbacks=[Clock()],
        )
        output = trainer.train()
    seconds = [b - a for a, b in itertools.pairwise(marks)]
    per_step = list(zip(batch_real, seconds, strict=False))
    processed = len(rows) * CUTOFF
    summary = summarise(
        per_step,
        processed=processed,
        real=real_total,
        waste=1 - real_total / processed,
        rows=len(rows),
    )
    summary["train_loss"] = output.training_loss
    del trainer
    return summary, peft_model


def isolation_check(model, examples, device: str) -> dict:
    """Max |logit difference| between each sample packed in one row and the same sample alone:
    as the trainer calls the model (position_ids, ``use_cache=False``, per-sample attention:
    ``segments``), with the model's own attention and its dense block mask (``dense mask``), and
    with the cache left on (transformers then ignores the restarts and samples attend to each
    other: the negative control)."""
    import contextlib

    import torch

    from echo_pipeline.training.packed_attention import segment_attention
    from echo_pipeline.training.packing import example_fields, pack_examples

    chosen = [example_fields(e)[0] for e in examples[:6]]
    samples = [{"input_ids": ids, "labels": ids} for ids in chosen]
    row = pack_examples(samples, max_tokens=sum(map(len, chosen)))[0]
    ids = torch.tensor([row.input_ids], device=device)
    pos = torch.tensor([row.position_ids], device=device)
    out: dict[str, float] = {}
    with torch.no_grad():
        alone = []
        for index in row.example_indices:
            single = torch.tensor([chosen[index]], device=device)
            alone.append(model(input_ids=single, use_cache=False).logits[0].float())
        calls = (
            ("use_cache=False", {"use_cache": False}, True),
            ("dense mask", {"use_cache": False}, False),
            ("cache on", {}, False),
        )
        for label, kwargs, segments in calls:
            block = segment_attention(model) if segments else contextlib.nullcontext()
            with block:
                packed = model(input_ids=ids, position_ids=pos, **kwargs).logits[0].float()
            worst, start = 0.0, 0
            for logits in alone:
                segment = packed[start : start + logits.shape[0]]
                worst = max(worst, float((segment - logits).abs().max()))
                start += logits.shape[0]
            out[label] = worst
        out["logit_scale"] = float(torch.cat(alone).abs().max())
    return out
