"""What each asset is made from, as a digest, so a re-run can skip what is already current.

An asset partition's *provenance* is the version of the code that computes it, the data
versions of what it reads, and the config fields that shape its output. Its digest is the data
version the asset records, so re-making it from the same inputs yields the same version and
nothing downstream turns stale. The runner and the freshness schedule compute the provenance a
partition *would* have now and compare it with the one recorded on its last materialisation:
equal means up to date, and :meth:`Provenance.changes_from` says why not (code, data or config).

Dagster's own staleness sees code versions and upstream data versions but not run config; the
recorded provenance covers config too (a recipe, the pairing settings, max tokens).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import marshal
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import CodeType
from typing import Any

PACKAGE_ROOT = Path(__file__).resolve().parent
PROVENANCE_METADATA_KEY = "echo/provenance"  # materialisation metadata: Provenance.to_json()
DIGEST_CHARS = 16


def _stable_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def digest_of(value: Any) -> str:
    """A short sha256 of ``value`` as canonical JSON (key order and whitespace do not count)."""
    return hashlib.sha256(_stable_json(value).encode()).hexdigest()[:DIGEST_CHARS]


@dataclass(frozen=True)
class Provenance:
    """What one asset partition was (or would now be) computed from."""

    code_version: str
    inputs: Mapping[str, str] = field(default_factory=dict)  # upstream -> its data version
    config: Mapping[str, Any] = field(default_factory=dict)  # fields that shape the output

    def digest(self) -> str:
        return digest_of(self.as_dict())

    def as_dict(self) -> dict[str, Any]:
        return {
            "code_version": self.code_version,
            "inputs": dict(self.inputs),
            "config": json.loads(_stable_json(dict(self.config))),  # tuples -> lists, as stored
        }

    def to_json(self) -> str:
        return _stable_json(self.as_dict())

    @classmethod
    def from_json(cls, text: str | None) -> Provenance | None:
        """The recorded provenance, or None for a materialisation made before it was recorded."""
        if not text:
            return None
        try:
            raw = json.loads(text)
            return cls(str(raw["code_version"]), dict(raw["inputs"]), dict(raw["config"]))
        except (ValueError, KeyError, TypeError):
            return None

    def changes_from(self, recorded: Provenance | None) -> list[str]:
        """Why a partition recorded as ``recorded`` is stale now; empty when it is current."""
        if recorded is None:
            return ["no recorded provenance"]
        now, then = self.as_dict(), recorded.as_dict()
        reasons = []
        if now["code_version"] != then["code_version"]:
            reasons.append(f"code changed ({then['code_version']} -> {now['code_version']})")
        changed_inputs = sorted(
            k
            for k in now["inputs"].keys() | then["inputs"].keys()
            if now["inputs"].get(k) != then["inputs"].get(k)
        )
        if changed_inputs:
            reasons.append("data changed: " + ", ".join(changed_inputs))
        changed_config = [
            f"{k} {_short(then['config'].get(k))} -> {_short(now['config'].get(k))}"
            for k in sorted(now["config"].keys() | then["config"].keys())
            if now["config"].get(k) != then["config"].get(k)
        ]
        if changed_config:
            reasons.append("config changed: " + ", ".join(changed_config))
        return reasons


def _short(value: Any, limit: int = 40) -> str:
    text = _stable_json(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def provenance_config(values: Mapping[str, Any], ignore: Iterable[str] = ()) -> dict[str, Any]:
    """Config values that shape an output: ``ignore`` names the ones that only change how fast
    or where it is computed (threads, in or out of process)."""
    skip = set(ignore)
    return {k: v for k, v in values.items() if k not in skip}


# --- code versions -------------------------------------------------------------------------


def _compiled(path: Path) -> CodeType:
    """The module compiled without docstrings (``-OO``), from its ``opt-2`` pyc when that was
    compiled from these very bytes: compiling the assets' modules afresh costs 0.1 s of every
    code-location load. The pyc is hash-checked (PEP 552), so an edit is never missed."""
    source = path.read_bytes()
    cached = Path(importlib.util.cache_from_source(str(path), optimization=2))
    header = (
        importlib.util.MAGIC_NUMBER
        + (0b11).to_bytes(4, "little")  # hash-based, checked
        + importlib.util.source_hash(source)
    )
    with contextlib.suppress(OSError, ValueError, EOFError, TypeError):
        data = cached.read_bytes()
        if data[:16] == header:
            return marshal.loads(data[16:])
    code = compile(source, str(path), "exec", dont_inherit=True, optimize=2)
    with contextlib.suppress(OSError):  # a read-only install compiles every time, that is all
        cached.parent.mkdir(exist_ok=True)
        temp = cached.with_name(f"{cached.name}.{os.getpid()}.tmp")
        temp.write_bytes(header + marshal.dumps(code))
        os.replace(temp, cached)
    return code


def _code_parts(code: CodeType, out: list[bytes]) -> None:
    out += [code.co_code, repr(code.co_names).encode(), repr(code.co_varnames).encode()]
    for const in code.co_consts:
        if isinstance(const, CodeType):
            _code_parts(const, out)
        else:
            out.append(_const_repr(const).encode())


def _const_repr(const: object) -> str:
    """``repr`` with sets in sorted order: a frozenset's order follows the per-process string
    hash seed, and a version must not change between two processes."""
    if isinstance(const, frozenset):
        return "frozenset(" + ",".join(sorted(_const_repr(c) for c in const)) + ")"
    if isinstance(const, tuple):
        return "(" + ",".join(_const_repr(c) for c in const) + ")"
    return repr(const)


def module_digest(path: Path) -> str:
    """The module's bytecode without docstrings or line numbers: rewording a docstring, a
    comment or the layout does not change it; changing a default or a line of logic does."""
    parts: list[bytes] = []
    _code_parts(_compiled(path), parts)
    return hashlib.sha256(b"\0".join(parts)).hexdigest()


def module_files(modules: Iterable[str], root: Path = PACKAGE_ROOT) -> list[Path]:
    """``"training"`` -> ``training.py``; ``"exports"`` (a folder) -> every module in it."""
    files: list[Path] = []
    for name in modules:
        base = root.joinpath(*name.split("."))
        if base.is_dir():
            files += sorted(base.rglob("*.py"))
        elif base.with_suffix(".py").is_file():
            files.append(base.with_suffix(".py"))
        else:
            raise FileNotFoundError(f"{base}.py: no such module under {root} (code version)")
    return files


def code_version(*modules: str, root: Path = PACKAGE_ROOT) -> str:
    """A version of the code an asset's output depends on: a digest of those modules' code.

    Honest where a hand-bumped "1" is not: change a default in ``training.py`` and the adapters'
    version changes; reword a comment and it does not.
    """
    digest = hashlib.sha256()
    for path in module_files(modules, root):
        digest.update(path.relative_to(root).as_posix().encode())
        digest.update(module_digest(path).encode())
    return digest.hexdigest()[:12]
