"""An adapter that changes nothing yet: LoRA freshly initialised (B = 0), saved like a real one.

Base + this adapter computes exactly what the base computes, so it is the control for
generation benchmarks and for tests of the evaluation (left padding, adapter switching,
reports) without minutes of training. The directory has everything a trained adapter has,
``echo_metadata.json`` included.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from echo_pipeline.infra.records import AdapterMetadata, DatasetRecord, TrackingRecord
from echo_pipeline.training.adapters import base_model_record, package_version
from echo_pipeline.training.base_model import ResolvedBaseModel


def write_untrained_adapter(
    base_model: ResolvedBaseModel,
    out_dir: str | Path,
    *,
    template: str = "chatml",
    experiment: str = "untrained",
    system_prompt: str = "",
    lora_r: int = 8,
    random_b: bool = False,
    dataset: dict[str, Any] | None = None,
    mlflow: dict[str, Any] | None = None,
    results: dict[str, float] | None = None,
) -> Path:
    """Write a zero-effect LoRA adapter for ``base_model`` to ``out_dir`` and return it.

    ``random_b=True`` writes a random (non-zero) adapter instead, for tests that need one to matter.
    ``results`` are the training results recorded with it (e.g. a calibrated temperature).
    """
    from peft import LoraConfig, get_peft_model

    from echo_pipeline.training.base_model import load_causal_lm, load_tokenizer

    out_dir = Path(out_dir)
    model = get_peft_model(
        load_causal_lm(base_model),
        LoraConfig(
            r=lora_r,
            lora_alpha=2 * lora_r,
            target_modules="all-linear",
            task_type="CAUSAL_LM",
            # random_b: non-zero B matrices, so merging visibly changes the weights (export tests).
            init_lora_weights=not random_b,
        ),
    )
    model.save_pretrained(out_dir)
    load_tokenizer(base_model).save_pretrained(out_dir)
    AdapterMetadata(
        template=template,
        base_model=base_model_record(base_model),
        experiment=experiment,
        system_prompt=system_prompt,
        dataset=DatasetRecord(**(dataset or {})),
        training={"lora_r": lora_r, "max_steps": 0},
        fingerprint=f"untrained-{template}-{experiment}",
        results=dict(results or {}),
        package_version=package_version(),
        mlflow=TrackingRecord(**(mlflow or {})),
    ).write(out_dir)
    return out_dir
