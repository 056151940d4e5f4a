"""The model side of training: LoRA attached to all linear layers, dtypes, devices and
data parallelism."""

from __future__ import annotations

import inspect
from typing import Any

from echo_pipeline.training.config import TrainingConfig


def data_parallel(peft_model: Any, device: Any) -> Any:
    """``peft_model`` in DDP, syncing only the LoRA weights: the frozen base is loaded from the
    same files on every rank, so broadcasting it (or a 4-bit base's packed weights) is waste."""
    from torch.nn.parallel import DistributedDataParallel

    frozen = [name for name, p in peft_model.named_parameters() if not p.requires_grad]
    frozen += [name for name, _ in peft_model.named_buffers()]
    DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(peft_model, frozen)
    on_gpu = getattr(device, "type", str(device)).startswith("cuda")
    return DistributedDataParallel(
        peft_model, device_ids=[device] if on_gpu else None, broadcast_buffers=False
    )


def input_device(model: Any) -> Any:
    """Where input ids must live: the embedding's device (models may span several devices)."""
    return model.get_input_embeddings().weight.device


def accepts_logits_to_keep(model: Any) -> bool:
    causal_lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    cached = getattr(causal_lm, "_echo_accepts_logits_to_keep", None)
    if cached is None:
        cached = "logits_to_keep" in inspect.signature(causal_lm.forward).parameters
        causal_lm._echo_accepts_logits_to_keep = cached
    return cached


def model_identity(model: Any) -> str:
    config = getattr(model, "config", None)
    name = getattr(config, "_name_or_path", "") or ""
    parameters = sum(p.numel() for p in model.parameters())
    return f"{type(model).__name__}:{name}:{parameters}"


def attach_lora(model: Any, config: TrainingConfig) -> Any:
    """Wrap the base model in a PEFT LoRA model (frozen base, optional gradient checkpointing)."""
    import torch
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from peft.tuners.tuners_utils import BaseTunerLayer

    if any(isinstance(module, BaseTunerLayer) for module in model.modules()):
        raise ValueError(
            "the model already carries adapter layers: pass a freshly loaded base model "
            "(train_lora injects the LoRA layers in place)"
        )
    compute_dtype = compute_dtype_of(model)
    gc_kwargs = {"use_reentrant": False}
    if is_quantized(model) and compute_dtype == torch.float16:
        # fp16 k-bit training (GPUs without bf16) needs peft's fp32 norms, embeddings and head.
        model = prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=config.gradient_checkpointing,
            gradient_checkpointing_kwargs=gc_kwargs,
        )
    else:
        # bf16/fp32 bases keep their dtypes: peft's preparation would upcast every non-quantised
        # weight (embeddings, lm_head, norms: 1 GiB instead of 0.5 at 7B) to fp32 and, through
        # it, the adapters.
        for parameter in model.parameters():
            parameter.requires_grad_(False)
        if config.gradient_checkpointing:
            if hasattr(model, "activation_checkpointing_enable"):  # the name since transformers 5.x
                model.activation_checkpointing_enable(activation_checkpointing_kwargs=gc_kwargs)
            else:
                model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=gc_kwargs)

    on_cuda = next(model.parameters()).device.type == "cuda"
    adapter_dtype = resolve_adapter_dtype(config.adapter_dtype, compute_dtype, on_cuda=on_cuda)
    lora = LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=config.target_modules,
        bias="none",
        task_type="CAUSAL_LM",
    )
    peft_model = get_peft_model(model, lora, autocast_adapter_dtype=adapter_dtype == "float32")
    wanted = getattr(torch, adapter_dtype)
    for parameter in peft_model.parameters():
        if parameter.requires_grad and parameter.dtype != wanted:
            parameter.data = parameter.data.to(wanted)
    return peft_model


def is_quantized(model: Any) -> bool:
    return bool(
        getattr(model, "is_quantized", False)
        or getattr(model, "is_loaded_in_4bit", False)
        or getattr(model, "is_loaded_in_8bit", False)
    )


def compute_dtype_of(model: Any) -> Any:
    """The dtype the base's matmuls run in: a 4-bit model's ``bnb_4bit_compute_dtype``, else
    the dtype of its first floating-point weight."""
    import torch

    quantization = getattr(getattr(model, "config", None), "quantization_config", None)
    if quantization is not None and not isinstance(quantization, dict):
        quantization = quantization.to_dict()
    if quantization and quantization.get("load_in_4bit"):
        declared = getattr(torch, str(quantization.get("bnb_4bit_compute_dtype")), None)
        if isinstance(declared, torch.dtype):
            return declared
    return next(p.dtype for p in model.parameters() if p.is_floating_point())


def resolve_adapter_dtype(requested: str, compute_dtype: Any, *, on_cuda: bool) -> str:
    """``"auto"``: bf16 adapters when the base computes in bf16 on a GPU (no cast per LoRA
    matmul and tensor-core GEMMs: ~30 % faster per step), fp32 otherwise."""
    if requested != "auto":
        return requested
    import torch

    return "bfloat16" if on_cuda and compute_dtype == torch.bfloat16 else "float32"
