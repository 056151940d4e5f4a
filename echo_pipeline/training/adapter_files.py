"""Adapter directories: published atomically, and checked before anything in one is loaded
(safetensors weights only, a LoRA config, shapes that fit the base), so an adapter from
elsewhere fails with one clear line instead of loading garbage or code."""

from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path
from typing import Any

from echo_pipeline.datasets.templates import jinja_chat_template
from echo_pipeline.infra.records import AdapterMetadata, write_adapter_metadata
from echo_pipeline.infra.storage import atomic_directory
from echo_pipeline.training.base_model import ResolvedBaseModel

logger = logging.getLogger(__name__)

ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
REQUIRED_CONFIG_KEYS = ("peft_type", "r", "lora_alpha", "target_modules")
#: Weight formats that are Python pickles: loading one can run arbitrary code.
PICKLE_SUFFIXES = frozenset({".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt"})


def write_adapter_dir(
    adapter_dir: Path,
    trained_dir: Path,
    tokenizer: Any | None,
    metadata: AdapterMetadata | dict[str, Any],
) -> Path:
    """Publish a trained adapter: weights, config, tokenizer and lineage together, or nothing.

    Everything is staged beside ``adapter_dir`` and renamed into place once complete, so a full
    disk or a read-only folder raises :class:`~echo_pipeline.infra.storage.AtomicWriteError` naming
    ``adapter_dir``, and the adapter that was there before (if any) stays whole and loadable.
    """
    adapter_dir, trained_dir = Path(adapter_dir), Path(trained_dir)
    with atomic_directory(adapter_dir) as staging:
        for item in sorted(trained_dir.iterdir()):
            if item.is_file():
                shutil.copy2(item, staging / item.name)
        missing = [n for n in (ADAPTER_WEIGHTS, ADAPTER_CONFIG) if not (staging / n).is_file()]
        if missing:
            raise ValueError(f"{trained_dir}: the trained adapter lacks {', '.join(missing)}")
        if tokenizer is not None:
            template = (
                metadata.template
                if isinstance(metadata, AdapterMetadata)
                else metadata.get("template")
            )
            chat_template = jinja_chat_template(template, tokenizer) if template else None
            if chat_template is not None:  # tools that format with the tokenizer use our format
                tokenizer.chat_template = chat_template
            tokenizer.save_pretrained(staging)
        write_adapter_metadata(staging, metadata)
    return adapter_dir


class AdapterValidationError(ValueError):
    """An adapter directory that must not be loaded; one line: ``<dir>: <what is wrong>``."""

    def __init__(self, path: str | Path, problem: str) -> None:
        self.path = Path(path)
        self.problem = " ".join(str(problem).split())
        super().__init__(f"{self.path}: {self.problem}")

    def __reduce__(self):
        return (type(self), (self.path, self.problem))


_LORA_KEY = re.compile(
    r"(?P<module>.+)\.(?P<part>lora_A|lora_B|lora_embedding_A|lora_embedding_B|lora_magnitude_vector)"
    r"(?:\.(?P<param>weight|bias))?"
)
_PEFT_PREFIX = "base_model.model."


def base_model_config(resolved: ResolvedBaseModel) -> Any:
    """The base model's transformers config: enough to know every layer's shape, no weights."""
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(
        resolved.path,
        revision=resolved.revision,
        trust_remote_code=resolved.trust_remote_code,
        local_files_only=resolved.is_local,
    )


def _base_layout(base: Any) -> tuple[dict[str, Any], dict[str, tuple[int, ...]]]:
    """Modules and parameter shapes of the base: a loaded model as is, a config on the meta
    device (no memory, no weights read)."""
    import torch

    if isinstance(base, torch.nn.Module):
        model = base
    else:
        from transformers import AutoModelForCausalLM

        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(base)
    modules = dict(model.named_modules())
    params = {n: tuple(p.shape) for n, p in model.named_parameters(remove_duplicate=False)}
    return modules, params


def _layer_shape(layer: Any) -> tuple[str, int, int] | None:
    """(kind, in, out) of a layer LoRA can adapt; None for anything else."""
    import torch

    if isinstance(layer, torch.nn.Embedding):
        return "embedding", layer.num_embeddings, layer.embedding_dim
    if isinstance(getattr(layer, "in_features", None), int) and isinstance(
        getattr(layer, "out_features", None), int
    ):
        return "linear", layer.in_features, layer.out_features
    weight = getattr(layer, "weight", None)
    if type(layer).__name__ == "Conv1D" and weight is not None and weight.dim() == 2:
        return "linear", int(weight.shape[0]), int(weight.shape[1])  # GPT-2 style (in, out)
    return None


def _rank_for(module: str, config: dict[str, Any]) -> int:
    """The rank PEFT gives ``module``: the first matching ``rank_pattern`` entry, else ``r``."""
    for pattern, rank in (config.get("rank_pattern") or {}).items():
        if re.match(rf"(.*\.)?({pattern})$", module):
            return int(rank)
    return int(config["r"])


def _targets_found(targets: Any, modules: dict[str, Any]) -> list[str]:
    """Entries of ``target_modules`` that match no module of the base model."""
    names = [n for n in modules if n]
    if isinstance(targets, str):
        if targets == "all-linear":
            found = any(_layer_shape(modules[n]) for n in names)
        else:
            found = any(re.fullmatch(targets, n) for n in names)
        return [] if found else [targets]
    return [t for t in targets if not any(n == t or n.endswith("." + t) for n in names)]


def validate_adapter_dir(adapter_dir: str | Path, base: Any) -> dict[str, Any]:
    """Check an adapter directory before any of it is loaded; raise AdapterValidationError.

    ``base`` is the base model it will be applied to: a loaded model, or (cheaper) its
    transformers config (see :func:`base_model_config`), instantiated on the meta device.
    Checked: the weights are ``adapter_model.safetensors`` (pickled ``.bin``/``.pt`` weights can
    run code on load, so they are never used); ``adapter_config.json`` is a LORA config with
    ``r``, ``lora_alpha`` and ``target_modules``; every target module exists in the base; every
    tensor belongs to a base layer and has the shape that layer and the rank imply (read from
    the safetensors header, not the data). Returns a summary: rank, modules and tensors.
    """
    path = Path(adapter_dir)
    if not path.is_dir():
        raise AdapterValidationError(path, "not a directory; expected a PEFT adapter directory")
    weights = path / ADAPTER_WEIGHTS
    pickles = sorted(p.name for p in path.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES)
    if not weights.is_file():
        if pickles:
            raise AdapterValidationError(
                path,
                f"only pickled weights ({', '.join(pickles)}), which can run code when loaded; "
                f"echo_pipeline loads {ADAPTER_WEIGHTS} only. Convert them with safetensors on a "
                "machine you trust, or use an adapter saved with a recent PEFT",
            )
        raise AdapterValidationError(
            path, f"no {ADAPTER_WEIGHTS}; is this a PEFT adapter directory?"
        )
    config_path = path / ADAPTER_CONFIG
    if not config_path.is_file():
        raise AdapterValidationError(
            path, f"no {ADAPTER_CONFIG}; is this a PEFT adapter directory?"
        )
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise AdapterValidationError(
            path, f"{ADAPTER_CONFIG} is not valid JSON ({error})"
        ) from error
    if not isinstance(config, dict):
        raise AdapterValidationError(path, f"{ADAPTER_CONFIG} is not a JSON object")
    missing = [key for key in REQUIRED_CONFIG_KEYS if key not in config]
    if missing:
        raise AdapterValidationError(path, f"{ADAPTER_CONFIG} lacks {', '.join(missing)}")
    if config["peft_type"] != "LORA":
        raise AdapterValidationError(
            path, f"peft_type is {config['peft_type']!r}; only LORA adapters are supported"
        )
    r, alpha = config["r"], config["lora_alpha"]
    if not isinstance(r, int) or isinstance(r, bool) or r <= 0:
        raise AdapterValidationError(path, f"r must be a positive integer, got {r!r}")
    if not isinstance(alpha, int | float) or isinstance(alpha, bool) or alpha <= 0:
        raise AdapterValidationError(path, f"lora_alpha must be a positive number, got {alpha!r}")
    targets = config["target_modules"]
    if not (
        isinstance(targets, str)
        or (isinstance(targets, list) and targets and all(isinstance(t, str) for t in targets))
    ):
        raise AdapterValidationError(
            path, "target_modules must be a list of module names or a regex"
        )

    modules, params = _base_layout(base)
    absent = _targets_found(targets, modules)
    if absent:
        raise AdapterValidationError(
            path, f"target modules not in the base model: {', '.join(map(str, absent[:5]))}"
        )

    from safetensors import safe_open

    try:
        with safe_open(weights, framework="pt") as fh:  # reads the header only
            shapes = {key: tuple(fh.get_slice(key).get_shape()) for key in fh.keys()}  # noqa: SIM118
    except Exception as error:
        raise AdapterValidationError(
            path, f"{ADAPTER_WEIGHTS} is not a readable safetensors file ({error})"
        ) from error
    if not shapes:
        raise AdapterValidationError(path, f"{ADAPTER_WEIGHTS} holds no tensors")

    parts_by_module: dict[str, dict[str, tuple[int, ...]]] = {}
    for key, shape in sorted(shapes.items()):
        if not key.startswith(_PEFT_PREFIX):
            raise AdapterValidationError(
                path, f"unexpected tensor {key!r} (not a PEFT adapter key)"
            )
        name = key[len(_PEFT_PREFIX) :]
        match = _LORA_KEY.fullmatch(name)
        if match is None:  # modules_to_save: a full copy of a base parameter
            if params.get(name) != shape:
                expected = params.get(name)
                raise AdapterValidationError(
                    path,
                    f"tensor {key!r} has shape {list(shape)} but the base model "
                    + (f"has {list(expected)}" if expected else "has no such parameter"),
                )
            continue
        part = match["part"] + ("" if match["param"] in (None, "weight") else "." + match["param"])
        parts_by_module.setdefault(match["module"], {})[part] = shape

    for module, parts in parts_by_module.items():
        layer = modules.get(module)
        layout = _layer_shape(layer) if layer is not None else None
        if layout is None:
            what = "does not exist" if layer is None else f"is a {type(layer).__name__}"
            raise AdapterValidationError(path, f"adapts {module!r}, which in the base model {what}")
        kind, n_in, n_out = layout
        rank = _rank_for(module, config)
        if kind == "embedding":
            expected = {"lora_embedding_A": (rank, n_in), "lora_embedding_B": (n_out, rank)}
        else:
            expected = {
                "lora_A": (rank, n_in),
                "lora_B": (n_out, rank),
                "lora_B.bias": (n_out,),
                "lora_magnitude_vector": (n_out,),
            }
        pair = [p for p in expected if p.endswith(("_A", "_B"))]
        if not all(p in parts for p in pair):
            raise AdapterValidationError(
                path, f"{module!r} lacks {' or '.join(p for p in pair if p not in parts)}"
            )
        for part, shape in parts.items():
            if part not in expected:
                raise AdapterValidationError(path, f"{module!r}.{part} does not fit a {kind} layer")
            if shape != expected[part]:
                raise AdapterValidationError(
                    path,
                    f"{module}.{part} has shape {list(shape)}, but the base layer "
                    f"({n_in} -> {n_out}) with rank {rank} needs {list(expected[part])}",
                )
    if pickles:
        logger.warning("%s: ignoring pickled files %s (never loaded)", path, pickles)
    return {
        "r": r,
        "lora_alpha": alpha,
        "modules": len(parts_by_module),
        "tensors": len(shapes),
        "ignored_pickles": pickles,
    }
