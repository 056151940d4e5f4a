"""How many CPU threads torch gets: the cores that are free, so training never oversubscribes
a shared machine (OpenMP threads spin-wait for each other when one is descheduled)."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator

from echo_pipeline.training import distributed


def free_cores(sample_s: float = 0.5) -> float | None:
    """Cores of this process' CPU set that were idle over ``sample_s`` (from /proc/stat);
    None where /proc/stat is unreadable (not Linux)."""

    def snapshot() -> dict[str, tuple[int, int]]:
        times = {}
        with open("/proc/stat", encoding="ascii") as stat:
            for line in stat:
                name, *fields = line.split()
                if name.startswith("cpu") and name != "cpu":
                    ticks = [int(f) for f in fields[:8]]
                    times[name] = (ticks[3] + ticks[4], sum(ticks))  # idle + iowait, total
        return times

    try:
        cpus = {f"cpu{i}" for i in os.sched_getaffinity(0)}
        before = snapshot()
        time.sleep(sample_s)
        after = snapshot()
    except (OSError, ValueError, AttributeError):
        return None
    idle = 0.0
    for cpu in cpus & before.keys() & after.keys():
        total = after[cpu][1] - before[cpu][1]
        idle += (after[cpu][0] - before[cpu][0]) / total if total > 0 else 1.0
    return idle


def auto_threads(sample_s: float = 0.5) -> int:
    """Threads for torch on this machine now: the cores that are free (rounded, at least one),
    never more than torch's own default (one per physical core).

    OpenMP threads spin-wait for each other, so one more thread than there are free cores
    costs far more than it brings: on 2 shared cores, 2 threads under load ran 3-12x slower
    than 1 (benchmarks/RESULTS.md). Measured once, when a block starts.
    """
    import torch

    default = torch.get_num_threads()
    free = free_cores(sample_s)
    if free is None:
        return default
    # torchrun's processes on this node share the free cores (each measured the same ones).
    free /= distributed.ranks_from_env().local_world_size
    return max(1, min(default, int(free + 0.25)))


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Use ``threads`` intra-op threads inside the block (None: :func:`auto_threads`, as many as
    there are free cores).

    torch's setting is process-wide. On a CPU shared with other jobs, one thread can be many
    times faster than two: OpenMP threads spin-wait for each other when one is descheduled.
    """
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(threads or auto_threads())
    try:
        yield
    finally:
        torch.set_num_threads(previous)
