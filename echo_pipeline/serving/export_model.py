"""Merge an adapter into its base for tools that want one model directory.

text-generation-webui, vLLM and llama.cpp's converters take a plain safetensors model; Ollama
also wants a ``Modelfile`` whose TEMPLATE is the prompt format the adapter was trained on.
The TEMPLATE is derived from the same renderer as training (with Go-template placeholders in
place of the prompt and system text), so it cannot drift from what the model learned.

Reply memory does not survive the export. An adapter trained with ``memory_k`` > 0 saw, before
each conversation, the k past exchanges of mine most similar to the message; an Ollama
Modelfile (or any plain model directory) cannot search an index per message, so there the
model is prompted without examples, a shorter prompt than any it trained on. The export still
writes everything, says so in its output and as a comment at the top of the Modelfile, and
records ``memory_k`` in ``echo_merged_from.json``; replies with memory come from
``echo-pipeline chat`` or the MLflow model, which retrieve as training did.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from echo_pipeline.infra.records import METADATA_FILE, AdapterMetadata
from echo_pipeline.infra.storage import atomic_directory

logger = logging.getLogger(__name__)

_PROMPT_MARK = "\u0000PROMPT\u0000"
_SYSTEM_MARK = "\u0000SYSTEM\u0000"


def ollama_template(template: str, tokenizer: Any) -> str:
    """The training prompt format as an Ollama Go template (single turn with optional system)."""
    from echo_pipeline.datasets.templates import (
        ChatPair,
        auto_bos_token_id,
        render_inference_prompt,
    )

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


def memory_note(memory_k: int) -> str:
    """What an export of an adapter trained with reply memory cannot do ("" without memory)."""
    if memory_k <= 0:
        return ""
    return (
        f"This adapter was trained with reply memory: every prompt began with the {memory_k} "
        "past exchanges of mine most similar to the message. An Ollama Modelfile cannot "
        "retrieve them, so Ollama prompts this model without examples (a shape it never saw "
        "in training; expect replies less like mine). For replies with memory use "
        "`echo-pipeline chat` or the MLflow model."
    )


def modelfile_text(
    template: str,
    tokenizer: Any,
    system_prompt: str,
    stop_text: str,
    memory_k: int = 0,
    temperature: float | None = None,
) -> str:
    """An Ollama Modelfile; ``temperature`` is the adapter's calibrated one (None: the default)."""
    from echo_pipeline.serving.generation import GenerationSettings

    def quoted(text: str) -> str:
        return '"""' + text.replace('"""', '\\"\\"\\"') + '"""'

    note = memory_note(memory_k)
    lines = [f"# {line}" for line in _wrapped(note)]
    lines += ["FROM .", f"TEMPLATE {quoted(ollama_template(template, tokenizer))}"]
    if system_prompt:
        lines.append(f"SYSTEM {quoted(system_prompt)}")
    sampling = GenerationSettings().for_adapter(temperature)
    # The decoding the evaluation judged the adapter with (GenerationSettings' defaults, at the
    # adapter's own temperature), but for the repetition penalty: Ollama's looks back over the
    # prompt too (repeat_last_n), where it falls on the stop token and the conversation's names
    # and words. On a trained clone that penalty cut the stop rate to 0.48 where none left 0.62
    # (benchmarks/RESULTS.md section 14), so it is off here.
    lines += [
        f"PARAMETER stop {json.dumps(stop_text)}",
        f"PARAMETER temperature {sampling.sampling_temperature:g}",
        f"PARAMETER top_p {sampling.top_p:g}",
        "PARAMETER repeat_penalty 1.0",
        "",
    ]
    return "\n".join(lines)


def _wrapped(text: str, width: int = 96) -> list[str]:
    import textwrap

    return textwrap.wrap(text, width) if text else []


def export_merged(adapter_dir: str | Path, out_dir: str | Path) -> Path:
    """Write base+adapter merged (safetensors), the tokenizer with its chat template, and a
    Modelfile. An adapter trained with reply memory is exported without it (see the module
    docstring); a warning says so."""
    from peft import PeftModel
    from transformers import AutoTokenizer

    from echo_pipeline.datasets.tokenization import stop_token_id
    from echo_pipeline.serving.chat import adapter_prompt
    from echo_pipeline.training.adapter_files import base_model_config, validate_adapter_dir
    from echo_pipeline.training.base_model import load_causal_lm, resolve_base_model

    adapter_dir, out_dir = Path(adapter_dir), Path(out_dir)
    meta = AdapterMetadata.load(adapter_dir)
    spec = adapter_prompt(adapter_dir, meta)
    memory_k = spec.memory_k
    if memory_k:
        logger.warning("%s: %s", adapter_dir, memory_note(memory_k))
    base = resolve_base_model(meta.base_model.source, revision=meta.base_model.revision)
    validate_adapter_dir(adapter_dir, base_model_config(base))  # before anything is loaded
    tokenizer = AutoTokenizer.from_pretrained(adapter_dir, local_files_only=True)
    model = load_causal_lm(base, quantization="none", dtype="float32", device="cpu")
    merged = PeftModel.from_pretrained(model, adapter_dir).merge_and_unload()
    stop = tokenizer.decode([stop_token_id(spec.template, tokenizer)])
    with atomic_directory(out_dir) as staging:
        merged.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        merged_from = json.loads((adapter_dir / METADATA_FILE).read_text(encoding="utf-8"))
        merged_from["memory"] = {
            "memory_k": memory_k,
            "exported": False,
            "note": memory_note(memory_k),
        }
        (staging / "echo_merged_from.json").write_text(
            json.dumps(merged_from, indent=2) + "\n", encoding="utf-8"
        )
        (staging / "Modelfile").write_text(
            modelfile_text(
                spec.template,
                tokenizer,
                spec.system_prompt,
                stop,
                memory_k,
                meta.calibrated_temperature,
            ),
            encoding="utf-8",
        )
    return out_dir
