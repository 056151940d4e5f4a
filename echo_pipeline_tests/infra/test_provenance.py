"""Provenance and code versions: the same inputs give the same digest, in any process; a changed
default changes the code version, a reworded docstring or comment does not; reasons name what
changed."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from echo_pipeline.infra.provenance import (
    PACKAGE_ROOT,
    Provenance,
    code_version,
    digest_of,
    function_code_version,
    module_files,
    provenance_config,
    reached_modules,
)


def test_digest_ignores_key_order_and_json_spelling():
    assert digest_of({"a": 1, "b": [1, 2]}) == digest_of({"b": [1, 2], "a": 1})
    assert digest_of({"a": 1}) != digest_of({"a": 2})
    one = Provenance("c1", {"pairs": "v1"}, {"me": ("alex",), "gap": 300.0})
    assert Provenance.from_json(one.to_json()).digest() == one.digest()  # tuples stored as lists


def test_changes_name_code_data_and_config():
    then = Provenance("c1", {"pairs": "v1", "base": "b"}, {"max_tokens": 512, "seed": 0})
    assert then.changes_from(then) == []
    now = Provenance("c2", {"pairs": "v2", "base": "b"}, {"max_tokens": 384, "seed": 0})
    assert now.changes_from(then) == [
        "code changed (c1 -> c2)",
        "data changed: pairs",
        "config changed: max_tokens 512 -> 384",
    ]
    assert now.changes_from(None) == ["no recorded provenance"]
    assert Provenance.from_json("{not json") is None and Provenance.from_json(None) is None


def test_provenance_config_leaves_out_what_only_changes_speed():
    assert provenance_config({"lr": 1e-4, "torch_threads": 2}, {"torch_threads"}) == {"lr": 1e-4}


@pytest.fixture
def package_copy(tmp_path):
    """The training config's module, as a package of its own to edit."""
    root = tmp_path / "pkg"
    root.mkdir()
    shutil.copy(PACKAGE_ROOT / "training" / "config.py", root / "config.py")
    return root


def test_a_changed_default_changes_the_code_version(package_copy):
    before = code_version("config", root=package_copy)
    source = (package_copy / "config.py").read_text(encoding="utf-8")
    line = '    lora_r: int = setting(16, "LoRA rank.", ge=1)\n'
    assert line in source
    (package_copy / "config.py").write_text(source.replace(line, line.replace("16", "8")), "utf-8")
    assert code_version("config", root=package_copy) != before


def test_a_reworded_docstring_or_comment_keeps_the_code_version(package_copy):
    before = code_version("config", root=package_copy)
    path = package_copy / "config.py"
    source = path.read_text(encoding="utf-8")
    old_doc = '    """Hyper-parameters of one adapter.'
    assert old_doc in source
    edited = source.replace(old_doc, '    """The hyper-parameters of one LoRA adapter.')
    line = '    lora_r: int = setting(16, "LoRA rank.", ge=1)\n'
    assert line in edited
    edited = edited.replace(line, line.rstrip("\n") + "  # the rank\n\n")
    path.write_text(edited, encoding="utf-8")
    assert code_version("config", root=package_copy) == before


def test_same_bytes_same_size_edit_is_seen(package_copy):
    """A one-character edit within the same second keeps size and mtime: the cache must not
    hide it (it is keyed by the source's hash)."""
    path = package_copy / "config.py"
    before = code_version("config", root=package_copy)
    stat = path.stat()
    source = path.read_text(encoding="utf-8")
    path.write_text(source.replace("setting(16, ", "setting(32, "), encoding="utf-8")
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert path.stat().st_size == stat.st_size
    assert code_version("config", root=package_copy) != before


def test_code_version_is_the_same_in_another_process():
    """Sets in the bytecode print in hash-seed order: the version must not depend on it."""
    script = "from echo_pipeline.infra.provenance import code_version as v; print(v('exports', 'pairs.redaction'))"
    seen = {
        subprocess.run(
            [sys.executable, "-c", script],
            env={**os.environ, "PYTHONHASHSEED": seed},
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        for seed in ("1", "2", "3")
    }
    assert seen == {code_version("exports", "pairs.redaction")}


def test_module_names_are_files_or_folders():
    assert module_files(["training.loop"]) == [PACKAGE_ROOT / "training" / "loop.py"]
    assert PACKAGE_ROOT / "exports" / "whatsapp.py" in module_files(["exports"])
    with pytest.raises(FileNotFoundError, match="no_such_module"):
        module_files(["no_such_module"])


@pytest.fixture
def package_tree(tmp_path):
    """The whole package, copied to edit: an asset's version follows imports across it."""
    root = tmp_path / PACKAGE_ROOT.name
    shutil.copytree(PACKAGE_ROOT, root, ignore=shutil.ignore_patterns("__pycache__"))
    return root


ADAPTER = ("echo_pipeline.defs.training", "lora_adapter")
PAIRS = ("echo_pipeline.defs.pairs", "conversation_pairs")


def _edit(path, old, new):
    source = path.read_text(encoding="utf-8")
    assert old in source, f"{path}: {old!r} is gone; pick another line to edit"
    path.write_text(source.replace(old, new, 1), encoding="utf-8")


def test_an_asset_reaches_what_its_function_calls_through_other_modules():
    reached = set(reached_modules(*ADAPTER))
    assert {
        "echo_pipeline.defs.training",  # its own module
        "echo_pipeline.training.adapters",  # imported inside the function
        "echo_pipeline.training.loop",  # through adapters.run_adapter_job
        "echo_pipeline.training.packed_attention",  # through training only
        "echo_pipeline.training.job",  # the training process's own module
    } <= reached
    # not called by it: the web page, the runner, the evaluation; observers do not count
    assert not reached & {
        "echo_pipeline.operations.web.app",
        "echo_pipeline.operations.runner",
        "echo_pipeline.evaluation.evaluate",
        "echo_pipeline.infra.tracking",
    }
    pairs = set(reached_modules(*PAIRS))
    assert "echo_pipeline.pairs.redaction" in pairs and "echo_pipeline.training.loop" not in pairs


def test_editing_a_helper_reached_only_indirectly_makes_the_asset_stale(package_tree):
    adapter, pairs = (function_code_version(*a, root=package_tree) for a in (ADAPTER, PAIRS))
    # packed_attention is imported by training, which adapters imports: lora_adapter never
    # names it, and no hand list did either
    _edit(
        package_tree / "training" / "packed_attention.py",
        '_SWAPPABLE = ("sdpa", "eager")',
        '_SWAPPABLE = ("sdpa",)',
    )
    assert function_code_version(*ADAPTER, root=package_tree) != adapter
    assert function_code_version(*PAIRS, root=package_tree) == pairs  # not reached from pairs
    adapter = function_code_version(*ADAPTER, root=package_tree)
    _edit(
        package_tree / "operations" / "web" / "app.py",
        "def ",
        "def _added():\n    return 1\n\n\ndef ",
    )
    assert function_code_version(*ADAPTER, root=package_tree) == adapter  # the page: not reached
    _edit(package_tree / "training" / "job.py", "def ", "def _added():\n    return 1\n\n\ndef ")
    assert function_code_version(*ADAPTER, root=package_tree) != adapter  # its process


def test_reach_follows_imports_re_exports_strings_and_constants(tmp_path):
    """Each rule on a package of five lines a module."""
    root = tmp_path / "pkg"
    (root / "sub").mkdir(parents=True)
    (root / "infra").mkdir()
    files = {
        "__init__.py": "",
        "entry.py": (
            "from pkg.sub import helper\n"
            "from pkg import unused\n"
            "LIMIT = 3\n"
            "def asset():\n"
            "    from pkg.infra.tracking import log\n"
            "    log(helper() + LIMIT)\n"
            "    return ['python', '-m', 'pkg.worker']\n"
            "def other():\n"
            "    return unused.thing()\n"
        ),
        "sub/__init__.py": "from pkg.sub.impl import helper\n",
        "sub/impl.py": "from pkg.consts import SCALE\ndef helper():\n    return SCALE\n",
        "consts.py": "SCALE = 2\n",
        "worker.py": "print('run as python -m')\n",
        "unused.py": "def thing():\n    return 1\n",
        "infra/__init__.py": "",
        "infra/tracking.py": "def log(x):\n    print(x)\n",
    }
    for name, text in files.items():
        (root / name).write_text(text, encoding="utf-8")
    assert reached_modules("pkg.entry", "asset", root) == [
        "pkg",
        "pkg.consts",  # through a re-export and a function that reads a constant
        "pkg.entry",
        "pkg.sub",
        "pkg.sub.impl",
        "pkg.worker",  # named only in a string
    ]  # not pkg.unused (another function's), not pkg.infra.tracking (an observer)
