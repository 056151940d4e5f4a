"""An adapter that changes nothing yet: LoRA freshly initialised (B = 0), saved like a real one.

Base + this adapter computes exactly what the base computes, so it is the control for
generation benchmarks and for tests of the evaluation (left padding, adapter switching,
reports) without minutes of training. The directory has everything a trained adapter has,
``echo_metadata.json`` included.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from echo_pipeline.adapters import METADATA_FILE, package_version
from echo_pipeline.base_model import ResolvedBaseModel


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
) -> Path:
    """Write a zero-effect LoRA adapter for ``base_model`` to ``out_dir`` and return it.

    ``random_b=True`` writes a random (non-zero) adapter instead, for tests that need one to matter.
    """
    from peft import LoraConfig, get_peft_model

    from echo_pipeline.base_model import load_causal_lm, load_tokenizer

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
    metadata = {
        "base_model": {
            "source": base_model.source,
            "path": base_model.path,
            "fingerprint": base_model.fingerprint,
            "revision": base_model.revision,
        },
        "template": template,
        "experiment": experiment,
        "system_prompt": system_prompt,
        "dataset": dataset or {"path": None, "digest": None, "rows": {}},
        "training": {"lora_r": lora_r, "max_steps": 0},
        "fingerprint": f"untrained-{template}-{experiment}",
        "results": {},
        "package_version": package_version(),
        "git_commit": None,
        "mlflow": mlflow or {"tracking_uri": None, "experiment_id": None, "run_id": None},
    }
    (out_dir / METADATA_FILE).write_text(json.dumps(metadata, indent=2), encoding="utf-8")
    return out_dir
