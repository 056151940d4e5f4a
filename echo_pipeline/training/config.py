"""What an adapter is trained with: its hyper-parameters, the fingerprint that ties a checkpoint
to them, and the learning-rate schedule."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from echo_pipeline.infra.settings import setting, speed_only
from echo_pipeline.training.packing import example_fields


@dataclass
class TrainingConfig:
    """Hyper-parameters of one adapter. Defaults suit a small chat dataset on SmolLM2-135M."""

    lora_r: int = setting(16, "LoRA rank.", ge=1)
    lora_alpha: int = setting(32, "LoRA alpha (the update is scaled by alpha / rank).", ge=1)
    # peft's own default: on the sample's held-out test split 0.0 scored a reply loss of 3.152
    # against 3.160 for 0.05, and trains ~15 % faster on CPU (one mask per adapted module and
    # step). benchmarks/RESULTS.md, bench_recipe_quality.py.
    lora_dropout: float = setting(
        0.0, "LoRA dropout (0: measured no better at 0.05, and slower).", ge=0, lt=1
    )
    target_modules: str | list[str] = setting(
        "all-linear", "Modules that get an adapter: 'all-linear', or their names."
    )
    learning_rate: float = setting(2e-4, "Peak learning rate of the cosine schedule.", gt=0)
    warmup_ratio: float = setting(0.05, "Share of the steps spent warming up.", ge=0, lt=1)
    warmup_steps: int | None = setting(None, "Warm-up steps; overrides warmup_ratio.", ge=0)
    min_lr_ratio: float = setting(0.0, "The cosine decays to learning_rate times this.", ge=0, le=1)
    max_steps: int = setting(0, "Optimizer steps; 0 derives them from epochs.", ge=0)
    epochs: float = setting(1.0, "Passes over the train split when max_steps is 0.", gt=0)
    max_steps_cap: int = setting(
        0, "With epochs: never more than this many steps (a compute budget); 0: no cap.", ge=0
    )
    pack_tokens: int = setting(
        1024, "Tokens per packed row (samples never attend to each other).", ge=64
    )
    grad_accum: int = setting(1, "Packed rows per optimizer step.", ge=1)
    max_grad_norm: float = setting(
        1.0, "Gradient clipping norm (0: none; the norm is still reported).", ge=0
    )
    weight_decay: float = setting(0.0, "AdamW weight decay.", ge=0)
    eval_every: int = setting(50, "Steps between validation losses (0: end only).", ge=0)
    # The split grows with the export while the step budget does not (RESULTS section 16).
    eval_max_pairs: int = setting(
        0,
        "Validation pairs scored per pass (a seeded sample, the same each time); 0: all.",
        ge=0,
    )
    early_stopping_patience: int = setting(
        0, "Evaluations without improvement before stopping (0: off).", ge=0
    )
    early_stopping_min_delta: float = setting(
        0.0, "The least drop in validation loss that counts as an improvement.", ge=0
    )
    restore_best: bool = setting(
        True, "The final adapter is the one with the lowest validation loss."
    )
    checkpoint_every: int = setting(
        50,
        "Steps between resumable checkpoints (0: only when asked to stop).",
        ge=0,
        speed_only=True,
    )
    keep_checkpoints: int = setting(2, "Checkpoints kept on disk.", ge=1, speed_only=True)
    log_every: int = setting(10, "Steps between logged training losses.", ge=1, speed_only=True)
    seed: int = setting(42, "Random seed (training is deterministic on CPU).")
    # quantization and dtype are for the caller's base_model.load_causal_lm(); train_lora reads
    # the loaded model itself (bf16/fp32 weights keep their dtype; fp16 k-bit gets peft's fp32 prep).
    quantization: Literal["auto", "4bit", "8bit", "none"] = setting(
        "auto", "'auto' (4-bit QLoRA on CUDA, none on CPU), '4bit', '8bit' or 'none'."
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = setting(
        "auto",
        "'auto': bf16 on GPUs and on CPUs with native bf16 (AVX512-BF16 or AMX; env "
        "ECHO_CPU_BF16=0/1 overrides), fp32 on other CPUs; or 'float32', 'bfloat16', "
        "'float16'. The dtype used is logged as train.resolved_dtype.",
    )
    gradient_checkpointing: bool = setting(
        False, "Trade compute for memory (long packs, big models)."
    )
    adapter_dtype: Literal["auto", "float32", "bfloat16"] = setting(
        "auto", "The saved adapter's weights: 'auto' keeps the compute dtype's precision."
    )
    torch_threads: int | None = setting(
        None,
        "CPU threads for torch (unset: the cores free when training starts, at most one per "
        "core; on a busy machine more threads than free cores is several times slower).",
        ge=1,
        speed_only=True,
    )
    # the same mathematics either way, a different kernel
    packed_attention: Literal["segments", "model"] = setting(
        "segments",
        "'segments': each packed sample attends in its own sdpa call (packed_attention.py); "
        "'model': the model's own implementation (a dense block-diagonal mask).",
        speed_only=True,
    )

    def __post_init__(self) -> None:
        positive = {"lora_r": self.lora_r, "pack_tokens": self.pack_tokens}
        positive |= {"grad_accum": self.grad_accum, "log_every": self.log_every}
        positive |= {"keep_checkpoints": self.keep_checkpoints}
        for name, value in positive.items():
            if value <= 0:
                raise ValueError(f"TrainingConfig.{name} must be positive, got {value}")
        if self.eval_max_pairs < 0:
            raise ValueError("TrainingConfig.eval_max_pairs must be >= 0")
        if self.max_steps_cap < 0:
            raise ValueError("TrainingConfig.max_steps_cap must be >= 0")
        if self.max_steps < 0 or (self.epochs <= 0 and self.max_steps == 0):
            raise ValueError("set max_steps > 0 or epochs > 0")
        if self.quantization not in ("auto", "4bit", "8bit", "none"):
            raise ValueError(f"unknown quantization {self.quantization!r}")
        if self.packed_attention not in ("segments", "model"):
            raise ValueError(f"unknown packed_attention {self.packed_attention!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def fingerprint_run(
    config: TrainingConfig,
    train_examples: Sequence[Any],
    val_examples: Sequence[Any],
    *,
    base_model_id: str = "",
    world_size: int = 1,
) -> str:
    """A digest of what determines the trained weights: config, data and base model identity.

    The rows per optimizer step are those of all ``world_size`` processes, so a checkpoint of
    2 processes x ``grad_accum`` 1 resumes under 1 process x ``grad_accum`` 2 (the same run).
    """
    digest = hashlib.sha256()
    settings = {k: v for k, v in config.to_dict().items() if k not in speed_only(TrainingConfig)}
    settings["grad_accum"] = config.grad_accum * world_size
    digest.update(json.dumps(settings, sort_keys=True, default=str).encode())
    digest.update(base_model_id.encode())
    for split in (train_examples, val_examples):
        digest.update(b"|split|")
        for example in split:
            input_ids, labels = example_fields(example)
            digest.update(json.dumps([input_ids, labels]).encode())
    return digest.hexdigest()[:24]


def lr_at(
    step: int, *, peak: float, warmup_steps: int, total_steps: int, min_ratio: float
) -> float:
    """Learning rate for optimizer step ``step`` (0-based): linear warmup, then cosine decay.

    A pure function of the step, so resuming needs no scheduler object: the step is the state.
    """
    if step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    decay_steps = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    cosine = 0.5 * (1.0 + math.cos(math.pi * progress))
    return peak * (min_ratio + (1.0 - min_ratio) * cosine)
