"""Waiting for the ``gpu`` pool without burning a core.

Dagster 1.13.27's executors poll a pending pool claim without sleeping (see
docs/upstream-dagster-pending-claim-busy-loop.md): a step queued behind the ``gpu`` pool spins
at ~90% of a core and slows the training it waits for about tenfold on 2 cores. So nothing here
lets a step wait inside an executor:

- the instance uses pool ``granularity: run`` (dagster.yaml): runs launched from the UI, the
  schedule or the sensor wait in the run queue, as rows in a table (no process at all), until no
  in-progress run uses the pool; inside a run, steps then never claim a slot;
- the shell runner is not queued (it executes in process), so before it materialises a step in
  the pool it waits here, sleeping between polls, until fewer than ``limit`` runs hold the pool,
  then claims a slot in Dagster's concurrency table under the run id it is about to use. The
  slot is the lock between runners; the daemon sees the runner's run as in progress with the
  pool (it counts runs, not slots) once that run starts, a second or so after the claim.

The pool keeps its meaning: at most ``limit`` runs that use it are in progress at once, however
they were launched. The one gap is that second between a runner's claim and its run starting:
a queued run the daemon launches in exactly that window also goes ahead.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from echo_pipeline.infra.processes import pid_alive

POOL = "gpu"
RUNNER_CLAIM_PREFIX = "echo-runner:"  # step key of a runner's claim: echo-runner:<pid>@<host>
_ETA = re.compile(r"\beta_s (\d+(?:\.\d+)?)")
_STEP = re.compile(r"\bstep (\d+):")
ACTIVE_STATUSES = ("STARTING", "STARTED", "CANCELING")


class PoolWaitInterrupted(Exception):
    """SIGINT or SIGTERM while waiting: nothing is claimed, the runner stops."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@dataclass
class Holder:
    """A run that holds the pool (a runner's claim or an in-progress run that uses it)."""

    run_id: str
    what: str  # the step or partition, as far as known
    since: float | None  # epoch seconds
    eta: float | None = None  # epoch seconds, from the training's progress log
    progress: str = ""

    def describe(self) -> str:
        parts = [f"run {self.run_id[:8]} ({self.what})"]
        if self.since:
            parts.append(f"since {time.strftime('%H:%M:%S', time.localtime(self.since))}")
        if self.eta:
            left = max(0, round(self.eta - time.time()))
            parts.append(f"ETA {time.strftime('%H:%M:%S', time.localtime(self.eta))} (~{left} s)")
        else:
            parts.append("ETA unknown")
        if self.progress:
            parts.append(self.progress)
        return ", ".join(parts)


def runner_step_key(pid: int | None = None, host: str | None = None) -> str:
    return f"{RUNNER_CLAIM_PREFIX}{pid or os.getpid()}@{host or socket.gethostname()}"


def _runner_of(step_key: str | None) -> tuple[int, str] | None:
    if not step_key or not step_key.startswith(RUNNER_CLAIM_PREFIX):
        return None
    pid, _, host = step_key[len(RUNNER_CLAIM_PREFIX) :].partition("@")
    return (int(pid), host) if pid.isdigit() else None


def run_granularity(instance: Any) -> bool:
    """Whether the instance enforces pools per run (our dagster.yaml); older instance configs
    (per op) leave the waiting to Dagster's executor."""
    from dagster._core.instance.config import PoolGranularity

    granularity = instance.get_concurrency_config().pool_config.pool_granularity
    return granularity == PoolGranularity.RUN


def pool_limit(instance: Any, pool: str = POOL) -> int | None:
    """The pool's limit (its own, else the instance default); None: unlimited."""
    info = instance.event_log_storage.get_concurrency_info(pool)
    if info.limit is not None:
        return int(info.limit)
    default = instance.global_op_concurrency_default_limit
    return None if default is None else int(default)


def ensure_pool(instance: Any, pool: str = POOL) -> None:
    """Create the pool's slots from the instance default, as Dagster does on a first claim."""
    storage = instance.event_log_storage
    if (
        not storage.get_concurrency_info(pool).slot_count
        and instance.global_op_concurrency_default_limit
    ):
        storage.initialize_concurrency_limit_to_default(pool)


def holders(
    instance: Any, pool: str = POOL, *, exclude: str | None = None, details: bool = True
) -> list[Holder]:
    """Runs that hold ``pool`` now: claimed slots, and in-progress runs that use the pool
    (``details``: with the ETA from each one's log, a query per run)."""
    import dagster as dg

    found: dict[str, Holder] = {}
    info = instance.event_log_storage.get_concurrency_info(pool)
    for slot in info.claimed_slots:
        if slot.run_id and slot.run_id != exclude:
            runner = _runner_of(slot.step_key)
            what = f"echo-pipeline pid {runner[0]}" if runner else str(slot.step_key)
            found[slot.run_id] = Holder(slot.run_id, what, None)
    statuses = [dg.DagsterRunStatus[name] for name in ACTIVE_STATUSES]
    for record in instance.get_run_records(filters=dg.RunsFilter(statuses=statuses)):
        run = record.dagster_run
        pools = run.run_op_concurrency.all_pools if run.run_op_concurrency else None
        if run.run_id == exclude or (run.run_id not in found and pool not in (pools or ())):
            continue
        holder = found.setdefault(run.run_id, Holder(run.run_id, "", None))
        partition = run.tags.get("dagster/partition")
        launched_by = "shell" if run.tags.get("echo/runner_pid") else "UI/schedule/sensor"
        holder.what = ", ".join(filter(None, [partition, launched_by, holder.what]))
        holder.since = record.start_time or (record.create_timestamp.timestamp())
    for holder in found.values() if details else ():
        holder.eta, holder.progress = _eta(instance, holder.run_id)
    return list(found.values())


def _eta(instance: Any, run_id: str) -> tuple[float | None, str]:
    """When the run's training will end, from its latest ``step N: ... eta_s X`` log line."""
    try:
        records = instance.event_log_storage.get_records_for_run(
            run_id, limit=200, ascending=False
        ).records
    except Exception:  # an old storage without this query: no ETA, still a useful line
        return None, ""
    for record in records:
        entry = record.event_log_entry
        message = entry.user_message or entry.message or ""
        eta = _ETA.search(message)
        if eta:
            step = _STEP.search(message)
            progress = f"training step {step.group(1)}" if step else ""
            return entry.timestamp + float(eta.group(1)), progress
    return None, ""


def free_dead_runner_claims(instance: Any, pool: str = POOL) -> list[str]:
    """Free the slots a runner on this host claimed before it was killed (SIGKILL, OOM)."""
    host = socket.gethostname()
    freed = []
    for slot in instance.event_log_storage.get_concurrency_info(pool).claimed_slots:
        runner = _runner_of(slot.step_key)
        if runner and runner[1] == host and not pid_alive(runner[0]):
            instance.event_log_storage.free_concurrency_slot_for_step(slot.run_id, slot.step_key)
            freed.append(slot.run_id)
    return freed


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    """SIGINT and SIGTERM raise :class:`PoolWaitInterrupted` inside the block (a sleep ends
    at once), so a waiting runner leaves through its ``finally`` clauses."""

    def handler(signum: int, frame: object) -> None:
        raise PoolWaitInterrupted(signum)

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, old in previous.items():
            signal.signal(s, old)


@contextlib.contextmanager
def pool_slot(
    instance: Any,
    run_id: str,
    *,
    pool: str = POOL,
    echo: Callable[[str], None] = print,
    poll_s: tuple[float, float] = (0.5, 5.0),
) -> Iterator[float]:
    """Hold a slot of ``pool`` for ``run_id`` inside the block; yields the seconds waited.

    Polls with exponential backoff (``poll_s``: first and longest pause), sleeping in between;
    prints one line when it starts waiting and one more whenever the holder changes. SIGINT or
    SIGTERM while waiting raise :class:`PoolWaitInterrupted` with nothing left claimed.
    """
    storage = instance.event_log_storage
    step_key = runner_step_key()
    started = time.monotonic()
    pause = poll_s[0]
    shown: tuple[str, ...] | None = None
    try:
        with stop_on_signals():
            ensure_pool(instance, pool)
            while True:
                limit = pool_limit(instance, pool)
                if limit is None:
                    break
                others = holders(instance, pool, exclude=run_id, details=False)
                if len(others) < limit:
                    if storage.claim_concurrency_slot(pool, run_id, step_key).is_claimed:
                        break
                    storage.free_concurrency_slot_for_step(run_id, step_key)  # no queue row left
                    others = holders(instance, pool, exclude=run_id, details=False)
                names = tuple(sorted(h.run_id for h in others))
                if names != shown:
                    described = holders(instance, pool, exclude=run_id)
                    who = "; ".join(h.describe() for h in described) or "another runner"
                    echo(f"waiting for pool {pool!r} (limit {limit}): held by {who}")
                    shown = names
                time.sleep(pause)
                pause = min(poll_s[1], pause * 2)
        yield time.monotonic() - started
    finally:  # also when a signal lands between the claim and ``claimed`` being set
        storage.free_concurrency_slot_for_step(run_id, step_key)
