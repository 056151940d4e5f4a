"""Whether a process still runs: the one question behind every "was its owner killed?" decision.

Temporaries of a killed writer (storage), pool slots of a killed runner (pool) and runs whose
runner vanished (runner) are all reclaimed when the pid that owns them is gone.
"""

from __future__ import annotations

import os


def pid_alive(pid: int) -> bool:
    """True while ``pid`` names a running process on this host (ours, or someone else's).

    A pid reused by an unrelated process reads as alive: callers then keep what they would have
    reclaimed, the safe side.
    """
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True
