"""The constraints file (``constraints.txt``): every installed distribution, pinned as tested.

``make setup`` installs with ``pip -c constraints.txt`` so a fresh machine gets exactly what the
suite passed with; ``make lock`` rebuilds a throw-away venv from ``pyproject.toml`` and writes
the file with ``write``; ``.ci/run`` with ``ECHO_CI_LATEST=1`` installs the newest allowed
versions instead and prints ``drift`` against the file.

    python -m tools.constraints write constraints.txt
    python -m tools.constraints drift constraints.txt
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path

#: The project itself is installed editable from the working tree, never from an index.
PROJECT = "echo-pipeline"

_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;#]+)")

HEADER = """\
# Every distribution `make setup` installs, pinned to the versions the test suite passed with
# (Linux x86_64, Python 3.11, the CPU wheel of torch). Generated; do not edit by hand.
# Refresh: make lock
"""


def canonical_name(name: str) -> str:
    """PEP 503 normalised name: ``Foo_Bar.baz`` and ``foo-bar-baz`` are one distribution."""
    return re.sub(r"[-_.]+", "-", name).lower()


def public_version(version: str) -> str:
    """The version without its local label: ``2.13.0+cpu`` pins as ``2.13.0``, so the pin holds
    whichever index serves the wheel (``==2.13.0`` accepts ``2.13.0+cpu``)."""
    return version.split("+", 1)[0]


def installed_versions() -> dict[str, str]:
    """Canonical name -> version of every distribution in this environment but the project."""
    found: dict[str, str] = {}
    for dist in metadata.distributions():
        name = dist.metadata["Name"]
        if name and canonical_name(name) != PROJECT:
            found.setdefault(canonical_name(name), dist.version)
    return dict(sorted(found.items()))


def pinned_versions(path: str | Path) -> dict[str, str]:
    """Canonical name -> pinned version of each ``name==version`` line of a constraints file."""
    pins: dict[str, str] = {}
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        match = _PIN.match(text)
        if match is None:
            raise ValueError(f"{path}:{number}: expected `name==version`, got {line.strip()!r}")
        pins[canonical_name(match.group(1))] = match.group(2)
    return pins


def render(versions: dict[str, str]) -> str:
    """The constraints file for these versions (sorted, local labels dropped)."""
    lines = [f"{name}=={public_version(version)}" for name, version in sorted(versions.items())]
    return HEADER + "\n".join(lines) + "\n"


def drift(pins: dict[str, str], installed: dict[str, str]) -> list[str]:
    """One line per difference between the pins and an environment; empty when they agree."""
    lines = []
    for name in sorted(pins.keys() | installed.keys()):
        pinned, have = pins.get(name), installed.get(name)
        if have is None:
            lines.append(f"  {name:<32} {pinned} -> (not installed)")
        elif pinned is None:
            lines.append(f"  {name:<32} (not pinned) -> {have}")
        elif public_version(have) != public_version(pinned):
            lines.append(f"  {name:<32} {pinned} -> {have}")
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.constraints")
    parser.add_argument("action", choices=["write", "drift"])
    parser.add_argument("path", nargs="?", default="constraints.txt")
    args = parser.parse_args(argv)
    path = Path(args.path)
    installed = installed_versions()
    if args.action == "write":
        path.write_text(render(installed), encoding="utf-8")
        print(f"pinned {len(installed)} distributions in {path}")
        return 0
    changes = drift(pinned_versions(path), installed)
    if not changes:
        print(f"no drift: this environment matches {path} ({len(installed)} distributions)")
        return 0
    print(f"drift: {len(changes)} distributions differ from {path} (pinned -> installed):")
    print("\n".join(changes))
    print("if the tests pass, `make lock` pins these versions")
    return 0


if __name__ == "__main__":
    sys.exit(main())
