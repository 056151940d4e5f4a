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

import ast
import contextlib
import functools
import hashlib
import importlib.util
import json
import marshal
import os
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import CodeType
from typing import Any

PACKAGE_ROOT = Path(__file__).resolve().parents[1]
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


def _compiled(path: Path, source: bytes) -> CodeType:
    """The module (``source``, the bytes of ``path``) compiled without docstrings (``-OO``),
    from its ``opt-2`` pyc when that was compiled from these very bytes: compiling the assets'
    modules afresh costs 0.1 s of every code-location load. The pyc is hash-checked (PEP 552),
    so an edit is never missed."""
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
    source = path.read_bytes()
    key = (str(path), source)  # by its bytes, not its mtime: an edit within a clock tick counts
    if key not in _DIGESTS:  # eleven assets share most modules
        parts: list[bytes] = []
        _code_parts(_compiled(path, source), parts)
        _DIGESTS[key] = hashlib.sha256(b"\0".join(parts)).hexdigest()
    return _DIGESTS[key]


_DIGESTS: dict[tuple[str, bytes], str] = {}


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
    return _files_version(module_files(modules, root), root)


def _files_version(paths: Iterable[Path], root: Path) -> str:
    digest = hashlib.sha256()
    for path in paths:
        digest.update(path.relative_to(root).as_posix().encode())
        digest.update(module_digest(path).encode())
    return digest.hexdigest()[:12]


# --- what an asset's function reaches ------------------------------------------------------
#
# An asset's code version is the digest of every package module its function can reach: the
# names it uses, followed through imports (module-level and inside functions) and through the
# top-level functions, classes and constants they use in turn, across the package. A hand list
# of modules per asset was always one helper short; this cannot forget one.

WHOLE = "*"  # a symbol that stands for every top-level name of a module
BODY = "<module>"  # a module's top-level statements that bind no name
# Modules that record or quieten a run but never change what it writes: reaching them does not
# make an output stale (left off this list, a module only makes versions more cautious).
OBSERVERS = frozenset({"infra.tracking", "infra.quiet", "infra.progress"})
_SYMBOLS_CACHE_TAG = b"echo-symbols-1"


@dataclass(frozen=True)
class ModuleSymbols:
    """One module, read statically: what each local name is imported from, and what each
    top-level name (function, class, constant) uses."""

    imports: dict[str, str]  # local name -> "module" or "module:attr"
    uses: dict[str, tuple[tuple[str, ...], tuple[str, ...]]]  # name -> (names, import targets)


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join([root.name, *parts])


def _module_path(module: str, root: Path) -> Path | None:
    """The file of package module ``module`` (None: a library's, or an observer)."""
    return _package_files(root).get(module)


@functools.lru_cache(maxsize=8)
def _package_files(root: Path) -> dict[str, Path]:
    files = {_module_name(path, root): path for path in sorted(root.rglob("*.py"))}
    return {m: p for m, p in files.items() if m.partition(".")[2] not in OBSERVERS}


def _import_targets(node: ast.Import | ast.ImportFrom, module: str, is_package: bool):
    """(local name, "module" or "module:attr") for each name an import statement binds."""
    if isinstance(node, ast.Import):
        for alias in node.names:  # ``import a.b`` binds ``a``, and reaches all of ``a.b``
            yield (alias.asname or alias.name.split(".")[0]), alias.name
        return
    if node.level:
        here = module.split(".") if is_package else module.split(".")[:-1]
        here = here[: len(here) - (node.level - 1)]
        source = ".".join(here + ([node.module] if node.module else []))
    else:
        source = node.module or ""
    for alias in node.names:
        if alias.name != "*":
            yield (alias.asname or alias.name), f"{source}:{alias.name}"


class _Uses(ast.NodeVisitor):
    """The names a piece of code reads, the imports inside it, and module names written as
    strings (``python -m echo_pipeline.training.job``: reached, though never imported)."""

    def __init__(self, module: str, is_package: bool) -> None:
        self.module, self.is_package = module, is_package
        self.package = module.split(".")[0]
        self.names: set[str] = set()
        self.targets: set[str] = set()

    def visit_Name(self, node: ast.Name) -> None:
        self.names.add(node.id)

    def visit_Import(self, node: ast.Import) -> None:
        self.targets.update(t for _, t in _import_targets(node, self.module, self.is_package))

    visit_ImportFrom = visit_Import

    def visit_Constant(self, node: ast.Constant) -> None:
        text = node.value
        if isinstance(text, str) and text.startswith(self.package + ".") and _dotted(text):
            self.targets.add(text)


def _dotted(text: str) -> bool:
    return all(part.isidentifier() for part in text.split("."))


def _bound_names(node: ast.stmt) -> list[str]:
    if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
        return [node.name]
    if isinstance(node, ast.Assign):
        targets = node.targets
    elif isinstance(node, ast.AnnAssign | ast.AugAssign):
        targets = [node.target]
    else:
        return []
    return [n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)]


def read_module_symbols(path: Path, root: Path = PACKAGE_ROOT) -> ModuleSymbols:
    """The import bindings and per-name uses of one module (cached beside its bytecode, and
    in this process by the module's bytes)."""
    source = path.read_bytes()
    if (str(path), source) in _SYMBOLS:
        return _SYMBOLS[str(path), source]
    _SYMBOLS[str(path), source] = symbols = _parse_symbols(path, source, root)
    return symbols


_SYMBOLS: dict[tuple[str, bytes], ModuleSymbols] = {}


def _parse_symbols(path: Path, source: bytes, root: Path) -> ModuleSymbols:
    key = importlib.util.source_hash(_SYMBOLS_CACHE_TAG + source)
    cached = path.parent / "__pycache__" / f"{path.stem}.{sys.implementation.cache_tag}.symbols"
    with contextlib.suppress(OSError, ValueError, EOFError, TypeError):
        data = cached.read_bytes()
        if data[:8] == key:
            imports, uses = marshal.loads(data[8:])
            return ModuleSymbols(imports, uses)
    module, is_package = _module_name(path, root), path.name == "__init__.py"
    imports: dict[str, str] = {}
    uses: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {}
    body = _Uses(module, is_package)
    for node in ast.parse(source, str(path)).body:
        if isinstance(node, ast.Import | ast.ImportFrom):
            imports.update(_import_targets(node, module, is_package))
            continue
        names = _bound_names(node)
        visitor = _Uses(module, is_package) if names else body
        visitor.visit(node)
        for name in names:
            old_names, old_targets = uses.get(name, ((), ()))
            uses[name] = (
                tuple(sorted(set(old_names) | visitor.names - {name})),
                tuple(sorted(set(old_targets) | visitor.targets)),
            )
    uses[BODY] = (tuple(sorted(body.names)), tuple(sorted(body.targets)))
    with contextlib.suppress(OSError):
        cached.parent.mkdir(exist_ok=True)
        temp = cached.with_name(f"{cached.name}.{os.getpid()}.tmp")
        temp.write_bytes(key + marshal.dumps((imports, uses)))
        os.replace(temp, cached)
    return ModuleSymbols(imports, uses)


def reached_modules(module: str, function: str, root: Path = PACKAGE_ROOT) -> list[str]:
    """Every package module that ``module.function`` can reach (its own module included), by
    the names it uses, followed through imports and the top-level names they lead to.

    A module reached at all counts whole (its digest is the module's): finer would miss a
    module-level constant read through a class attribute, and coarser (a module's imports)
    would make every asset depend on every other one through ``defs``.
    """
    symbols: dict[str, ModuleSymbols] = {}
    seen: set[tuple[str, str]] = set()
    todo = [(module, function)]
    while todo:
        current, name = todo.pop()
        if (current, name) in seen:
            continue
        seen.add((current, name))
        path = _module_path(current, root)
        if path is None:  # not ours (a library), or a name that is not a module
            continue
        if current not in symbols:
            symbols[current] = read_module_symbols(path, root)
            todo.append((current, BODY))
            parent = current.rpartition(".")[0]
            if parent:  # importing a submodule runs its package's __init__ first
                todo.append((parent, BODY))
        table = symbols[current]
        if name == WHOLE:
            todo += [(current, n) for n in table.uses]
            continue
        if name in table.uses:
            names, targets = table.uses[name]
        elif name in table.imports:  # a name the module re-exports
            names, targets = (), (table.imports[name],)
        elif _module_path(f"{current}.{name}", root) is not None:  # a submodule of a package
            names, targets = (), (f"{current}.{name}",)
        else:
            continue
        for used in names:
            if used in table.uses:
                todo.append((current, used))
            elif used in table.imports:
                todo.append(_target(table.imports[used], root))
        todo += [_target(t, root) for t in targets]
    return sorted(m for m in symbols)


def _target(target: str, root: Path) -> tuple[str, str]:
    """``"a.b"`` (a module object) -> all of it; ``"a.b:c"`` -> name ``c`` of ``a.b``, or the
    whole of submodule ``a.b.c`` when ``c`` is one."""
    module, _, attr = target.partition(":")
    if not attr:
        return module, WHOLE
    if _module_path(f"{module}.{attr}", root) is not None:
        return f"{module}.{attr}", WHOLE
    return module, attr


def function_code_version(module: str, function: str, root: Path = PACKAGE_ROOT) -> str:
    """The code version of ``module.function``: every module it reaches, digested."""
    paths = [_module_path(m, root) for m in reached_modules(module, function, root)]
    return _files_version([p for p in paths if p is not None], root)
