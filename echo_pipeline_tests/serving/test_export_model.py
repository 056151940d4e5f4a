"""Merging an adapter into its base gives the same greedy reply as base + adapter."""

from __future__ import annotations

import pytest
import torch

from echo_pipeline.datasets.templates import TEMPLATE_NAMES
from echo_pipeline.serving.export_model import export_merged, modelfile_text


def make_adapter(base_model, tmp_path, template: str = "chatml"):
    """A LoRA with random (non-zero) B matrices, so merging visibly changes the weights."""
    from untrained import write_untrained_adapter

    torch.manual_seed(0)
    return write_untrained_adapter(
        base_model,
        tmp_path / "adapter",
        template=template,
        system_prompt="You are alex.",
        lora_r=4,
        random_b=True,
        results={"calibrated_temperature": 0.93},
    )


@pytest.mark.slow
def test_merged_model_generates_like_base_plus_adapter(base_model, tmp_path):
    from transformers import AutoModelForCausalLM

    from echo_pipeline.serving.chat import ChatSession

    adapter = make_adapter(base_model, tmp_path)
    session = ChatSession.from_adapter(adapter, max_new_tokens=12)
    ids = session.prompt_ids("did you see the match last night?")
    expected = session.generate([ids])[0]

    merged_dir = export_merged(adapter, tmp_path / "merged")
    assert (merged_dir / "model.safetensors").exists() and (merged_dir / "Modelfile").exists()
    # Ollama samples at the adapter's own temperature, as the evaluation and chat do.
    assert "PARAMETER temperature 0.93\n" in (merged_dir / "Modelfile").read_text()
    merged = AutoModelForCausalLM.from_pretrained(merged_dir, use_safetensors=True)
    session.model = merged.eval()
    assert session.generate([ids])[0] == expected


@pytest.mark.parametrize("template", TEMPLATE_NAMES)
def test_modelfile_template_matches_training_prompt(template, smollm2_tokenizer):
    from echo_pipeline.datasets.templates import ChatPair, render_inference_prompt

    text = modelfile_text(template, smollm2_tokenizer, "You are alex.", "<|im_end|>")
    body = text.split('TEMPLATE """', 1)[1].split('"""', 1)[0]
    # Fill the Go template by hand for the with-system branch and compare with the renderer.
    with_system = body.split("{{ if .System }}", 1)[1].split("{{ else }}", 1)[0]
    after = body.split("{{ end }}", 1)[1]
    filled = (
        (with_system + after)
        .replace("{{ .System }}", "You are alex.")
        .replace("{{ .Prompt }}", "hey")
    )
    expected = render_inference_prompt(
        template,
        ChatPair((), "hey", None),
        system_prompt="You are alex.",
        tokenizer=smollm2_tokenizer,
    ).removeprefix("<s>")
    assert filled == expected
    assert 'PARAMETER stop "<|im_end|>"' in text


def test_a_modelfile_of_an_adapter_with_memory_says_it_cannot_retrieve(smollm2_tokenizer):
    plain = modelfile_text("chatml", smollm2_tokenizer, "You are alex.", "<|im_end|>")
    with_memory = modelfile_text(
        "chatml", smollm2_tokenizer, "You are alex.", "<|im_end|>", memory_k=3
    )
    note, _, rest = with_memory.partition("FROM .")
    assert "FROM ." + rest == plain  # the same model and prompt format, only the warning added
    assert all(line.startswith("# ") for line in note.strip().splitlines())
    assert "cannot retrieve" in note and "3 past exchanges" in " ".join(note.split())
