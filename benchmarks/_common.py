"""Shared helpers of the benchmark scripts: machine facts, load average, timing, output.

Every figure in RESULTS.md carries the machine, the command and the load average beside it,
because the benchmark machine is shared and a 2-core box under load gives noisy timings.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def load_average() -> tuple[float, float, float]:
    """The 1, 5 and 15-minute load averages (what `uptime` prints)."""
    return os.getloadavg()


def load_str() -> str:
    one, five, fifteen = load_average()
    return f"{one:.2f}/{five:.2f}/{fifteen:.2f}"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def ram_gib() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return float("nan")


def git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        return out + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def versions(*names: str) -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in names:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "absent"
    return found


def machine(*packages: str) -> dict:
    """What RESULTS.md records about the machine a figure came from."""
    return {
        "date": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "ram_gib": round(ram_gib(), 1),
        "python": platform.python_version(),
        "commit": git_commit(),
        "packages": versions(*packages),
    }


def print_machine(info: dict) -> None:
    pkgs = ", ".join(f"{k} {v}" for k, v in info["packages"].items())
    print(
        f"# {info['date']} | {info['cpu']}, {info['cores']} cores, {info['ram_gib']} GiB | "
        f"Python {info['python']} | {pkgs} | commit {info['commit']}",
        flush=True,
    )
    print(f"# command: {command_line()}", flush=True)


def command_line() -> str:
    return " ".join([Path(sys.executable).name, *sys.argv])


def write_json(path: Path | None, payload: dict) -> None:
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(payload, indent=2, default=str))
        print(f"# results written to {path}", flush=True)
