"""Merge an adapter into its base for tools that want one model directory.

text-generation-webui, vLLM and llama.cpp's converters take a plain safetensors model; Ollama
also wants a ``Modelfile`` whose TEMPLATE is the prompt format the adapter was trained on.
The TEMPLATE is derived from the same renderer as training (with Go-template placeholders in
place of the prompt and system text), so it cannot drift from what the model learned.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from echo_pipeline.records import METADATA_FILE, AdapterMetadata
from echo_pipeline.storage import atomic_directory

_PROMPT_MARK = "\u0000PROMPT\u0000"
_SYSTEM_MARK = "\u0000SYSTEM\u0000"


def ollama_template(template: str, tokenizer: Any) -> str:
    """The training prompt format as an Ollama Go template (single turn with optional system)."""
    from echo_pipeline.templates import ChatPair, auto_bos_token_id, render_inference_prompt

    with_system = render_inference_prompt(
        template, ChatPair((), _PROMPT_MARK, None), system_prompt=_SYSTEM_MARK, tokenizer=tokenizer
    )
    without_system = render_inference_prompt(
        template, ChatPair((), _PROMPT_MARK, None), tokenizer=tokenizer
    )
    # The literal "<s>" of llama2_chat/nous_hermes is a BOS marker: the runtime adds the real
    # BOS where the model wants one, so the text must not carry it (nor Gemma's "<bos>"; not
    # SmolLM2's bos_token either, which is ChatML's "<|im_start|>" and never added as a BOS).
    bos_texts = {"<s>"}
    if auto_bos_token_id(tokenizer) is not None and getattr(tokenizer, "bos_token", None):
        bos_texts.add(tokenizer.bos_token)
    for bos in bos_texts:
        with_system = with_system.removeprefix(bos)
        without_system = without_system.removeprefix(bos)
    head, _, tail = with_system.partition(_SYSTEM_MARK)
    system_part = "{{ if .System }}" + head + "{{ .System }}" + tail.split(_PROMPT_MARK)[0]
    prompt_start = without_system.split(_PROMPT_MARK)[0]
    after_prompt = without_system.split(_PROMPT_MARK)[1]
    return system_part + "{{ else }}" + prompt_start + "{{ end }}{{ .Prompt }}" + after_prompt


def modelfile_text(template: str, tokenizer: Any, system_prompt: str, stop_text: str) -> str:
    def quoted(text: str) -> str:
        return '"""' + text.replace('"""', '\\"\\"\\"') + '"""'

    lines = ["FROM .", f"TEMPLATE {quoted(ollama_template(template, tokenizer))}"]
    if system_prompt:
        lines.append(f"SYSTEM {quoted(system_prompt)}")
    # The decoding the evaluation judged the adapter with (GenerationSettings' defaults).
    lines += [
        f"PARAMETER stop {json.dumps(stop_text)}",
        "PARAMETER temperature 0.7",
        "PARAMETER top_p 0.9",
        "PARAMETER repeat_penalty 1.1",
        "",
    ]
    return "\n".join(lines)


def export_merged(adapter_dir: str | Path, out_dir: str | Path) -> Path:
    """Write base+adapter merged (safetensors), the tokenizer with its chat template, and a Modelfile."""
    from peft import PeftModel
    from transformers import AutoTokenizer

    from echo_pipeline.adapters import base_model_config, validate_adapter_dir
    from echo_pipeline.base_model import load_causal_lm, resolve_base_model
    from echo_pipeline.tokenization import stop_token_id

    adapter_dir, out_dir = Path(adapter_dir), Path(out_dir)
    meta = AdapterMetadata.load(adapter_dir)
    base = resolve_base_model(meta.base_model.source, revision=meta.base_model.revision)
    validate_adapter_dir(adapter_dir, base_model_config(base))  # before anything is loaded
    tokenizer = AutoTokenizer.from_pretrained(adapter_dir, local_files_only=True)
    model = load_causal_lm(base, quantization="none", dtype="float32", device="cpu")
    merged = PeftModel.from_pretrained(model, adapter_dir).merge_and_unload()
    stop = tokenizer.decode([stop_token_id(meta.template, tokenizer)])
    with atomic_directory(out_dir) as staging:
        merged.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        shutil.copy2(adapter_dir / METADATA_FILE, staging / "echo_merged_from.json")
        (staging / "Modelfile").write_text(
            modelfile_text(meta.template, tokenizer, meta.system_prompt, stop),
            encoding="utf-8",
        )
    return out_dir
