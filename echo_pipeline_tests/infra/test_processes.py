"""pid_alive: the one answer storage, the pool and the runner give to "is its owner still running?"."""

from __future__ import annotations

import os
import subprocess
import sys

from echo_pipeline.infra.processes import pid_alive


def test_a_running_process_is_alive_and_an_exited_one_is_not():
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert pid_alive(child.pid)
    finally:
        child.kill()
        child.wait()
    assert not pid_alive(child.pid)  # exited and reaped
    assert pid_alive(os.getpid())


def test_init_counts_as_alive_even_when_we_may_not_signal_it():
    """pid 1 always runs; a normal user is refused (EPERM), which still means it is there."""
    assert pid_alive(1)
