"""Data-parallel training over several processes: the launcher's command, who this process is,
and the few collectives the training loop needs.

Processes are started by torch's own launcher (``python -m torch.distributed.run``, i.e.
torchrun), which sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and ``LOCAL_WORLD_SIZE`` for each
one. Every rank holds the whole (LoRA-sized) model and its share of each optimizer step's packed
rows; gradients are summed by DDP, so the weights stay identical on every rank. Without the
launcher, and whenever no process group is up, everything here is the single-process case.

Standard library at import: torch is imported inside the functions that use it.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

TRAIN_MODULE = "echo_pipeline.training.job"


@dataclass(frozen=True)
class Ranks:
    """This process' place among the training processes (one process: rank 0 of 1)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes the adapter, logs to MLflow and reports."""
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1


def ranks_from_env(env: Mapping[str, str] | None = None) -> Ranks:
    """What torchrun told this process (its environment variables); one process without them."""
    env = os.environ if env is None else env

    def number(name: str, default: int) -> int:
        value = env.get(name, "")
        return int(value) if value.strip().isdigit() else default

    world = number("WORLD_SIZE", 1)
    return Ranks(
        rank=number("RANK", 0),
        world_size=world,
        local_rank=number("LOCAL_RANK", 0),
        local_world_size=number("LOCAL_WORLD_SIZE", world),
    )


def current_ranks() -> Ranks:
    """The ranks of the initialised process group, else one process (whatever the env says)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return Ranks()
    env = ranks_from_env()
    return Ranks(
        rank=dist.get_rank(),
        world_size=dist.get_world_size(),
        local_rank=env.local_rank,
        local_world_size=env.local_world_size,
    )


def launch_command(
    processes: int = 1,
    nnodes: int = 1,
    *,
    rdzv_endpoint: str | None = None,
    rdzv_id: str = "echo",
    python: str | None = None,
) -> list[str]:
    """The command that runs one adapter job on ``processes`` processes per node.

    One process: ``python -m echo_pipeline.training.job``. More, on one node: torchrun with a
    standalone rendezvous (a free local port). Several nodes: every node runs this same command
    (the cluster starts the others) and they meet at ``rdzv_endpoint`` (``host:port``) through
    torch's c10d rendezvous, which also numbers the nodes. ``--max-restarts 0``: a failed rank
    fails the step; resuming is the next materialisation's job (from the last checkpoint).
    """
    if processes < 1 or nnodes < 1:
        raise ValueError(f"processes and nnodes must be >= 1, got {processes} and {nnodes}")
    python = python or sys.executable
    if processes == 1 and nnodes == 1:
        return [python, "-m", TRAIN_MODULE]
    command = [python, "-m", "torch.distributed.run", "--nproc-per-node", str(processes)]
    if nnodes == 1:
        command += ["--standalone", "--nnodes", "1"]
    else:
        if not rdzv_endpoint:
            raise ValueError("training on several nodes needs rdzv_endpoint (host:port)")
        command += [
            "--nnodes",
            str(nnodes),
            "--rdzv-backend",
            "c10d",
            "--rdzv-endpoint",
            rdzv_endpoint,
            "--rdzv-id",
            rdzv_id,
        ]
    return [*command, "--max-restarts", "0", "-m", TRAIN_MODULE]


def device_for(ranks: Ranks) -> str:
    """This rank's device: its own GPU (by local rank) where there are GPUs, else the CPU."""
    import torch

    if torch.cuda.is_available():
        return f"cuda:{ranks.local_rank}" if ranks.is_distributed else "cuda"
    return "cpu"


@contextlib.contextmanager
def process_group(ranks: Ranks | None = None) -> Iterator[Ranks]:
    """The process group for a torchrun-launched job (NCCL on GPUs, gloo on CPUs); nothing for
    a single process. Torn down on the way out, so a failing rank does not hang its peers at
    exit."""
    ranks = ranks or ranks_from_env()
    if not ranks.is_distributed:
        yield ranks
        return
    import torch
    import torch.distributed as dist

    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(ranks.local_rank)
    dist.init_process_group(backend=backend)
    try:
        yield ranks
    finally:
        dist.destroy_process_group()


# --- collectives (no-ops for one process) ------------------------------------------------------


def _initialised() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def sum_across_ranks(values: list[float]) -> list[float]:
    """Each value summed over every rank (float64, on the CPU: these are a few scalars)."""
    if not _initialised():
        return list(values)
    import torch
    import torch.distributed as dist

    tensor = torch.tensor(values, dtype=torch.float64, device=_collective_device())
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor.cpu().tolist()


def any_rank(flag: bool) -> bool:
    """True on every rank when it is True on at least one (e.g. a stop request)."""
    return sum_across_ranks([1.0 if flag else 0.0])[0] > 0


def barrier() -> None:
    """Wait for every rank (e.g. until rank 0 has written a checkpoint the others will read)."""
    if _initialised():
        import torch.distributed as dist

        dist.barrier()


def _collective_device() -> str:
    import torch
    import torch.distributed as dist

    return f"cuda:{torch.cuda.current_device()}" if dist.get_backend() == "nccl" else "cpu"
