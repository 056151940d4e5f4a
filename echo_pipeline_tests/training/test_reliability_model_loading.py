"""Model loading safety: safetensors only, no pickles, no remote code, adapters validated first.

An adapter directory from elsewhere (a download, a colleague, a tampered copy) is checked
before any of it is loaded: files, config keys, LORA, target modules and tensor shapes against
the base model. The tampered variants here are the ways that goes wrong in practice.
"""

from __future__ import annotations

import ast
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from echo_pipeline.infra.paths import PROJECT_ROOT
from echo_pipeline.training.adapter_files import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    AdapterValidationError,
    validate_adapter_dir,
)
from echo_pipeline.training.adapters import METADATA_FILE
from echo_pipeline.training.base_model import ResolvedBaseModel

PACKAGE = PROJECT_ROOT / "echo_pipeline"
RANK = 4


def tiny_config(vocab_size: int = 1000):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=True,
    )


def tiny_llama(vocab_size: int = 1000):
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(tiny_config(vocab_size))


def save_adapter(model, folder: Path, **lora) -> Path:
    from peft import LoraConfig, get_peft_model

    settings = {"r": RANK, "lora_alpha": 8, "target_modules": "all-linear"} | lora
    peft_model = get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", **settings))
    peft_model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def good_adapter(tmp_path_factory) -> Path:
    torch.set_num_threads(1)
    return save_adapter(tiny_llama(), tmp_path_factory.mktemp("adapter") / "good")


@pytest.fixture
def adapter(good_adapter, tmp_path) -> Path:
    """A fresh copy of the good adapter, to tamper with."""
    return Path(shutil.copytree(good_adapter, tmp_path / "adapter"))


def edit_config(folder: Path, **changes) -> None:
    path = folder / ADAPTER_CONFIG
    config = json.loads(path.read_text())
    for key, value in changes.items():
        if value is None:
            config.pop(key, None)
        else:
            config[key] = value
    path.write_text(json.dumps(config))


def edit_weights(folder: Path, change) -> None:
    path = folder / ADAPTER_WEIGHTS
    tensors = load_file(path)
    change(tensors)
    save_file(tensors, path)


def refused(folder: Path, base=None) -> str:
    with pytest.raises(AdapterValidationError) as caught:
        validate_adapter_dir(folder, tiny_config() if base is None else base)
    message = str(caught.value)
    assert message.startswith(f"{folder}: ") and "\n" not in message
    return message


def test_a_peft_adapter_passes_against_the_config_and_against_the_loaded_model(good_adapter):
    summary = validate_adapter_dir(good_adapter, tiny_config())
    assert summary["r"] == RANK and summary["modules"] == 14 and summary["tensors"] == 28
    assert validate_adapter_dir(good_adapter, tiny_llama()) == summary
    from peft import PeftModel

    PeftModel.from_pretrained(tiny_llama(), good_adapter)  # what validation vouches for loads


def test_a_tensor_of_the_wrong_shape_is_refused(adapter):
    key = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"
    edit_weights(adapter, lambda t: t.__setitem__(key, torch.zeros(RANK, 33)))
    message = refused(adapter)
    assert "model.layers.0.self_attn.q_proj.lora_A has shape [4, 33]" in message
    assert "(32 -> 32) with rank 4 needs [4, 32]" in message


def test_an_adapter_for_a_different_base_is_refused(adapter):
    """Trained on a 32-wide model, applied to a 64-wide one: every shape is off."""
    wider = tiny_config()
    wider.hidden_size, wider.intermediate_size = 64, 128
    assert "has shape" in refused(adapter, wider)


def test_a_rank_that_disagrees_with_the_config_is_refused(adapter):
    edit_config(adapter, r=8)
    assert "has shape [4, 64], but the base layer (64 -> 32) with rank 8 needs [8, 64]" in (
        refused(adapter)
    )


@pytest.mark.parametrize("missing", [ADAPTER_WEIGHTS, ADAPTER_CONFIG])
def test_a_missing_file_is_refused(adapter, missing):
    (adapter / missing).unlink()
    assert f"no {missing}" in refused(adapter)


def test_pickled_weights_alone_are_refused_without_being_opened(adapter):
    tensors = load_file(adapter / ADAPTER_WEIGHTS)
    (adapter / ADAPTER_WEIGHTS).unlink()
    torch.save(tensors, adapter / "adapter_model.bin")
    message = refused(adapter)
    assert "only pickled weights (adapter_model.bin)" in message and "can run code" in message


def test_a_pickle_beside_safetensors_is_never_used(adapter, monkeypatch):
    (adapter / "training_args.bin").write_bytes(b"\x80\x04 not to be unpickled")
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("torch.load was called"))
    assert validate_adapter_dir(adapter, tiny_config())["ignored_pickles"] == ["training_args.bin"]


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"peft_type": "IA3"}, "peft_type is 'IA3'; only LORA adapters are supported"),
        ({"target_modules": None}, "adapter_config.json lacks target_modules"),
        ({"r": None, "lora_alpha": None}, "adapter_config.json lacks r, lora_alpha"),
        ({"r": 0}, "r must be a positive integer"),
        ({"lora_alpha": "big"}, "lora_alpha must be a positive number"),
        ({"target_modules": ["q_proj", "wqkv"]}, "target modules not in the base model: wqkv"),
        ({"target_modules": 7}, "target_modules must be a list of module names or a regex"),
    ],
)
def test_a_config_without_the_expected_keys_and_values_is_refused(adapter, changes, expected):
    edit_config(adapter, **changes)
    assert expected in refused(adapter)


def test_an_unreadable_config_is_refused(adapter):
    (adapter / ADAPTER_CONFIG).write_text("{not json")
    assert "adapter_config.json is not valid JSON" in refused(adapter)
    (adapter / ADAPTER_CONFIG).write_text("[]")
    assert "is not a JSON object" in refused(adapter)


def test_a_weights_file_that_is_not_safetensors_is_refused(adapter):
    (adapter / ADAPTER_WEIGHTS).write_bytes(b"\x00" * 64)
    assert "is not a readable safetensors file" in refused(adapter)


def test_tensors_for_layers_the_base_does_not_have_are_refused(adapter):
    def add_layer_9(tensors):
        prefix = "base_model.model.model.layers.9.self_attn.q_proj"
        tensors[f"{prefix}.lora_A.weight"] = torch.zeros(RANK, 32)
        tensors[f"{prefix}.lora_B.weight"] = torch.zeros(32, RANK)

    edit_weights(adapter, add_layer_9)
    assert "adapts 'model.layers.9.self_attn.q_proj', which in the base model does not exist" in (
        refused(adapter)
    )


def test_half_a_lora_pair_and_foreign_keys_are_refused(adapter, good_adapter):
    key = "base_model.model.model.layers.1.mlp.up_proj.lora_B.weight"
    edit_weights(adapter, lambda t: t.pop(key))
    assert "'model.layers.1.mlp.up_proj' lacks lora_B" in refused(adapter)

    shutil.copy2(good_adapter / ADAPTER_WEIGHTS, adapter / ADAPTER_WEIGHTS)
    edit_weights(adapter, lambda t: t.__setitem__("lm_head.payload", torch.zeros(1)))
    assert "unexpected tensor 'lm_head.payload'" in refused(adapter)

    shutil.copy2(good_adapter / ADAPTER_WEIGHTS, adapter / ADAPTER_WEIGHTS)
    edit_weights(
        adapter, lambda t: t.__setitem__("base_model.model.model.norm.weight", torch.zeros(7))
    )
    assert "'base_model.model.model.norm.weight' has shape [7] but the base model has [32]" in (
        refused(adapter)
    )


def test_rank_pattern_and_modules_to_save_adapters_pass(tmp_path):
    folder = save_adapter(
        tiny_llama(),
        tmp_path / "patterned",
        target_modules=["q_proj", "v_proj"],
        rank_pattern={"v_proj": 2},
        modules_to_save=["lm_head"],
    )
    summary = validate_adapter_dir(folder, tiny_config())
    assert summary["modules"] == 4


# --- the adapter is validated where it is loaded ----------------------------------------


@pytest.fixture
def chat_base(tmp_path, smollm2_tokenizer) -> ResolvedBaseModel:
    """A tiny base with SmolLM2's vocabulary, saved as safetensors like a real local base."""
    folder = tmp_path / "base"
    tiny_llama(vocab_size=len(smollm2_tokenizer)).save_pretrained(folder, safe_serialization=True)
    return ResolvedBaseModel(source=str(folder), path=str(folder), fingerprint="test:tiny")


def chat_adapter(base: ResolvedBaseModel, tokenizer, folder: Path) -> Path:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base.path, use_safetensors=True)
    save_adapter(model, folder)
    tokenizer.save_pretrained(folder)
    meta = {"template": "chatml", "system_prompt": "", "base_model": {"source": base.source}}
    (folder / METADATA_FILE).write_text(json.dumps(meta))
    return folder


def test_chat_refuses_a_tampered_adapter_before_loading_any_weights(
    chat_base, smollm2_tokenizer, tmp_path, monkeypatch
):
    from echo_pipeline.serving.chat import ChatSession
    from echo_pipeline.training import base_model as base_model_module

    folder = chat_adapter(chat_base, smollm2_tokenizer, tmp_path / "adapter")
    tensors = load_file(folder / ADAPTER_WEIGHTS)
    (folder / ADAPTER_WEIGHTS).unlink()
    torch.save(tensors, folder / "adapter_model.bin")
    monkeypatch.setattr(
        base_model_module, "load_causal_lm", lambda *a, **k: pytest.fail("base model loaded")
    )
    with pytest.raises(AdapterValidationError, match="only pickled weights"):
        ChatSession.from_adapter(folder, base_model=chat_base)


def test_chat_loads_a_valid_adapter_and_replies(chat_base, smollm2_tokenizer, tmp_path):
    from echo_pipeline.serving.chat import ChatSession

    torch.set_num_threads(1)
    folder = chat_adapter(chat_base, smollm2_tokenizer, tmp_path / "adapter")
    session = ChatSession.from_adapter(folder, base_model=chat_base, max_new_tokens=3)
    assert session.template == "chatml"
    assert isinstance(session.reply_once("hey"), str)


def test_chat_prompts_as_the_adapter_was_trained_and_knows_my_name(
    chat_base, smollm2_tokenizer, tmp_path
):
    from echo_pipeline.infra.records import AdapterMetadata, BaseModelRecord
    from echo_pipeline.serving.chat import ChatSession

    torch.set_num_threads(1)
    folder = chat_adapter(chat_base, smollm2_tokenizer, tmp_path / "adapter")
    system = "You are alex. Reply the way alex would in a casual chat."
    AdapterMetadata(
        template="chatml",
        base_model=BaseModelRecord(chat_base.source, fingerprint=chat_base.fingerprint),
        system_prompt=system,
        me_names=("alex",),
    ).write(folder)
    session = ChatSession.from_adapter(folder, base_model=chat_base, max_new_tokens=2)
    assert session.prompt.system_prompt == system and session.me == "alex"
    assert smollm2_tokenizer.decode(session.prompt_ids("hey")).startswith(
        f"<|im_start|>system\n{system}<|im_end|>"
    )
    session.say("hey")
    assert [t["speaker"] for t in session.history] == ["friend", "alex"]


# --- the package never loads pickles or remote code by default -------------------------


def package_calls():
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                yield path.relative_to(PROJECT_ROOT), node


def call_name(node: ast.Call) -> str:
    return ast.unparse(node.func)


def keyword(node: ast.Call, name: str):
    return next((k.value for k in node.keywords if k.arg == name), None)


def test_every_torch_load_passes_weights_only_true():
    loads = [(path, node) for path, node in package_calls() if call_name(node) == "torch.load"]
    assert loads, "expected the checkpoint loader's torch.load calls"
    for path, node in loads:
        value = keyword(node, "weights_only")
        assert isinstance(value, ast.Constant) and value.value is True, f"{path}:{node.lineno}"


def test_no_pickle_loading_and_no_remote_code_switched_on_in_the_package():
    for path, node in package_calls():
        name = call_name(node)
        where = f"{path}:{node.lineno}"
        assert name not in {"pickle.load", "pickle.loads", "joblib.load", "dill.load"}, where
        trust = keyword(node, "trust_remote_code")
        assert not (isinstance(trust, ast.Constant) and trust.value is True), where
        safetensors = keyword(node, "use_safetensors")
        assert not (isinstance(safetensors, ast.Constant) and safetensors.value is False), where


def test_model_weights_load_with_use_safetensors():
    """Every AutoModel*.from_pretrained in the package insists on safetensors."""
    calls = [
        (path, node)
        for path, node in package_calls()
        if call_name(node).startswith("AutoModel") and call_name(node).endswith(".from_pretrained")
    ]
    unsafe = []
    for path, node in calls:
        value = keyword(node, "use_safetensors")
        passes_kwargs = any(k.arg is None for k in node.keywords)  # **kwargs built above
        if not (isinstance(value, ast.Constant) and value.value is True) and not passes_kwargs:
            unsafe.append(f"{path}:{node.lineno}")
    # base_model.convert_gguf reads the packaged GGUF (not a pickle) to write safetensors once.
    assert [u for u in unsafe if not u.startswith("echo_pipeline/training/base_model.py")] == []


def test_remote_code_is_off_unless_the_user_turns_it_on():
    import inspect

    from echo_pipeline.defs.resources import BaseModelResource
    from echo_pipeline.training.base_model import resolve_base_model

    assert ResolvedBaseModel("s", "p", "f").trust_remote_code is False
    default = inspect.signature(resolve_base_model).parameters["trust_remote_code"].default
    assert default is False
    assert BaseModelResource().trust_remote_code is False
