"""Resumable checkpoints of a training run and the atomic save of its adapter: what a run
writes to disk between steps, and reads back after an interruption."""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from echo_pipeline.infra.storage import atomic_directory
from echo_pipeline.training.lora import input_device

logger = logging.getLogger(__name__)


CHECKPOINTS_DIR = "checkpoints"


ADAPTER_DIR = "adapter"


STATE_FILE = "trainer_state.json"


OPTIMIZER_FILE = "optimizer.pt"


RNG_FILE = "rng.pt"


BEST_FILE = "best_trainable.safetensors"


@dataclass
class RunState:
    """Everything besides tensors that a checkpoint restores."""

    step: int = 0
    train_losses: list[float] = field(default_factory=list)
    eval_losses: list[tuple[int, float]] = field(default_factory=list)
    eval_temperatures: list[tuple[int, float]] = field(default_factory=list)
    best_eval_loss: float | None = None
    best_step: int | None = None
    evals_without_improvement: int = 0
    early_stopped: bool = False
    tokens_processed: int = 0
    real_tokens: int = 0
    pad_tokens: int = 0
    train_seconds: float = 0.0


def checkpoint_dirs(root: Path) -> list[Path]:
    """Complete checkpoints (renamed into place), oldest first."""
    if not root.is_dir():
        return []
    found = []
    for path in root.iterdir():
        prefix, _, number = path.name.partition("-")
        if prefix == "step" and number.isdigit() and (path / STATE_FILE).is_file():
            found.append((int(number), path))
    return [path for _, path in sorted(found)]


def latest_checkpoint(root: Path) -> Path | None:
    dirs = checkpoint_dirs(root)
    return dirs[-1] if dirs else None


def save_checkpoint(
    root: Path,
    peft_model: Any,
    optimizer: Any,
    state: RunState,
    best_snapshot: dict[str, Any] | None,
    fingerprint: str,
    total_steps: int,
) -> Path:
    """Write ``root/step-N`` through :func:`~echo_pipeline.infra.storage.atomic_directory`: a
    checkpoint is on disk whole (fsynced) or not at all, so resume never meets half of one."""
    import torch
    from safetensors.torch import save_file

    final = root / f"step-{state.step}"
    with atomic_directory(final) as staging:
        peft_model.save_pretrained(staging)
        torch.save(optimizer.state_dict(), staging / OPTIMIZER_FILE)
        rng = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        torch.save(rng, staging / RNG_FILE)
        if best_snapshot is not None and state.best_step != state.step:
            best = {k: v.contiguous().cpu() for k, v in best_snapshot.items()}
            save_file(best, staging / BEST_FILE)
        payload = dataclasses.asdict(state) | {
            "fingerprint": fingerprint,
            "total_steps": total_steps,
        }
        (staging / STATE_FILE).write_text(json.dumps(payload))
    logger.info("checkpoint saved at step %d", state.step)
    return final


def load_checkpoint(
    path: Path, peft_model: Any, optimizer: Any, saved: dict[str, Any]
) -> tuple[RunState, dict[str, Any] | None]:
    import torch
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    device = input_device(peft_model)
    weights = load_file(path / "adapter_model.safetensors", device=str(device))
    outcome = set_peft_model_state_dict(peft_model, weights)
    missing = [k for k in outcome.missing_keys if "lora_" in k]
    if missing:
        raise RuntimeError(f"checkpoint {path} lacks adapter weights {missing[:3]}")
    # weights_only: a checkpoint folder is data, never code (pickles can run code on load).
    optimizer.load_state_dict(
        torch.load(path / OPTIMIZER_FILE, map_location=device, weights_only=True)
    )
    rng = torch.load(path / RNG_FILE, weights_only=True)
    torch.set_rng_state(rng["torch"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    best = None
    if (path / BEST_FILE).is_file():
        best = load_file(path / BEST_FILE, device=str(device))
    elif saved.get("best_step") == saved["step"]:
        best = {n: p.detach().clone() for n, p in peft_model.named_parameters() if p.requires_grad}
    fields = {f.name for f in dataclasses.fields(RunState)}
    state = RunState(**{k: v for k, v in saved.items() if k in fields})
    state.eval_losses = [(int(s), float(v)) for s, v in state.eval_losses]
    state.eval_temperatures = [(int(s), float(v)) for s, v in state.eval_temperatures]
    return state, best


def prune_checkpoints(root: Path, keep: int) -> None:
    """Keep the newest ``keep`` checkpoints. (What a killed save left is swept by storage.)"""
    for path in checkpoint_dirs(root)[:-keep]:
        shutil.rmtree(path)


def save_adapter_atomically(peft_model: Any, tokenizer: Any | None, adapter_dir: Path) -> None:
    with atomic_directory(adapter_dir) as staging:
        peft_model.save_pretrained(staging)
        if tokenizer is not None:
            tokenizer.save_pretrained(staging)
