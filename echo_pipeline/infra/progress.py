"""The live line of a running step in ``echo-pipeline run``: how far training and evaluation are.

A step trains for minutes and evaluates for minutes more; without this line the terminal says
nothing between "started" and "ok". The runner feeds it what the step already logs to Dagster
(training's ``step N: loss ... tokens_per_s ... eta_s ...`` lines, which the Pipes child sends,
and the evaluation's plan line) and the replies the evaluation generates. On a terminal it is
one tqdm line rewritten in place; elsewhere (a pipe, CI, a file) a plain line, at most one every
``every_s`` seconds, so a log stays readable. Nothing here knows Dagster.
"""

from __future__ import annotations

import math
import os
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TextIO

# "step 12: loss 3.21  learning_rate 0.001  tokens_per_s 212.4  eta_s 61.2  epoch 0.6 ..."
_STEP = re.compile(r"^step (\d+): (.*)$")
_METRIC = re.compile(r"(\w+) (-?[\d.]+(?:e[-+]?\d+)?|nan|inf)")
# The evaluation's plan: "test: reply loss on 112 pairs; 32 prompts x 1 adapter / 1 base replies
# (sampled: ...), 16 train prompts for the discriminator"
_PLAN = re.compile(
    r"(\d+) prompts x (\d+) adapter / (\d+) base replies \((.*?)\), (\d+) train prompts"
)


def training_metrics(message: str) -> tuple[int, dict[str, float]] | None:
    """``(step, metrics)`` from a training progress log line; None for any other line."""
    match = _STEP.match(message.strip())
    if match is None:
        return None
    metrics = {k: float(v) for k, v in _METRIC.findall(match.group(2))}
    return int(match.group(1)), metrics


def planned_replies(message: str) -> int | None:
    """How many replies an evaluation will generate, from its plan line (None: not that line).

    Each side answers the held-out prompts (its draws; greedy decoding draws once) and the
    discriminator's train prompts once.
    """
    match = _PLAN.search(message)
    if match is None:
        return None
    prompts, adapter, base, decoding, train = match.groups()
    draws = (1, 1) if decoding.startswith("greedy") else (int(adapter), int(base))
    return sum(int(prompts) * d + int(train) for d in draws)


def total_steps(recipe: Any, step: int, epoch: float | None) -> int | None:
    """The optimizer steps a training will take, as training derives them: ``max_steps``, or
    ``epochs`` over the packs (``epoch`` at ``step`` says how many steps one pass is), capped."""
    if recipe is None:
        return None
    if recipe.max_steps:
        return int(recipe.max_steps)
    if not epoch:
        return None
    steps = math.ceil(round(recipe.epochs * step / epoch, 6))
    return min(steps, recipe.max_steps_cap) if recipe.max_steps_cap else steps


def clock(seconds: float) -> str:
    """``95`` -> ``1:35``; an hour or more -> ``1:02:05``."""
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    text = f"{rest // 60:d}:{rest % 60:02d}"
    return f"{hours}:{text:0>5}" if hours else text


@dataclass
class _State:
    phase: str = ""
    done: int = 0
    total: int | None = None
    detail: str = ""


class StepProgress:
    """The progress of one step, drawn on ``stream``: a tqdm line on a terminal, plain lines
    (at most one per ``every_s`` seconds, plus one as each phase starts and ends) anywhere else.

    Callbacks may come from Dagster's Pipes reader thread as well as the step's own thread.
    """

    def __init__(
        self,
        label: str,
        stream: TextIO,
        *,
        recipe: Any = None,
        interactive: bool | None = None,
        every_s: float = 5.0,
        now: Callable[[], float] = time.monotonic,
    ) -> None:
        self.label = label
        self.stream = stream
        self.recipe = recipe  # the TrainingConfig the step trains with, for the step total
        self.interactive = _is_terminal(stream) if interactive is None else interactive
        self.every_s = every_s
        self.now = now
        self._state = _State()
        self._bar: Any = None
        self._printed_at: float | None = None
        self._printed_phase = ""
        self._replies_since: float | None = None
        self._lock = threading.Lock()

    # --- what the step reports -------------------------------------------------------------

    def start(self) -> None:
        """The step began (loading models comes before the first number)."""
        with self._lock:
            self._state = _State("starting")
            self._draw(force=True)

    def on_log(self, message: str) -> None:
        """A line the step logged: a training step's metrics, or the evaluation's plan."""
        parsed = training_metrics(message)
        if parsed is not None:
            step, metrics = parsed
            if "loss" in metrics:  # "eval_loss" lines come between: the line keeps the step's
                self._training(step, metrics)
            return
        planned = planned_replies(message)
        if planned is not None:
            with self._lock:
                self._state = _State("evaluating", 0, planned, "")
                self._replies_since = self.now()
                self._draw(force=True)

    def on_replies(self, count: int) -> None:
        """``count`` more replies were generated (a batch of the evaluation)."""
        with self._lock:
            state = self._state
            if state.phase != "evaluating":  # replies outside an evaluation's plan: counted only
                self._state = state = _State("evaluating", 0, None, "")
                self._replies_since = self.now()
            state.done += count
            elapsed = self.now() - (self._replies_since or self.now())
            if state.total and state.done and elapsed > 0:
                left = max(0, state.total - state.done) * elapsed / state.done
                state.detail = f"ETA {clock(left)}"
            self._draw()

    def _training(self, step: int, metrics: dict[str, float]) -> None:
        total = total_steps(self.recipe, step, metrics.get("epoch"))
        parts = [f"loss {metrics['loss']:.3f}"]
        if "tokens_per_s" in metrics:
            parts.append(f"{metrics['tokens_per_s']:.0f} tokens/s")
        if "eta_s" in metrics:
            parts.append(f"ETA {clock(metrics['eta_s'])}")
        with self._lock:
            self._state = _State("training", step, total, ", ".join(parts))
            self._draw()

    # --- drawing -----------------------------------------------------------------------------

    def text(self) -> str:
        """The line as plain text (what a non-terminal gets)."""
        state = self._state
        if state.phase == "starting":
            return f"  {self.label} starting"
        unit = "step" if state.phase == "training" else "replies"
        count = f"{state.done}/{state.total}" if state.total else f"{state.done}"
        detail = f", {state.detail}" if state.detail else ""
        return f"  {self.label} {state.phase}: {unit} {count}{detail}"

    def _draw(self, force: bool = False) -> None:
        state = self._state
        if self.interactive:
            self._draw_bar(state)
            return
        now = self.now()
        new_phase = state.phase != self._printed_phase
        due = self._printed_at is None or now - self._printed_at >= self.every_s
        finished = bool(state.total) and state.done >= (state.total or 0)
        if force or new_phase or due or finished:
            print(self.text(), file=self.stream, flush=True)
            self._printed_at, self._printed_phase = now, state.phase

    def _draw_bar(self, state: _State) -> None:
        from tqdm import tqdm

        desc = f"{self.label} {state.phase}"
        if self._bar is None or self._bar.desc != desc:
            self._close_bar()
            counted = "{desc}: |{bar:16}| {n_fmt}/{total_fmt} {unit}{postfix}"
            self._bar = tqdm(
                total=state.total,
                desc=desc,
                file=self.stream,
                unit="steps" if state.phase == "training" else "replies",
                bar_format="{desc}" if state.phase == "starting" else counted,
                dynamic_ncols=_width(self.stream) > 0,  # follows a resized window
                ncols=None if _width(self.stream) > 0 else 100,  # a terminal that says 0 columns
                leave=False,
            )
        self._bar.total = state.total
        self._bar.n = state.done
        self._bar.set_postfix_str(state.detail, refresh=False)
        self._bar.refresh()

    def _close_bar(self) -> None:
        if self._bar is not None:
            self._bar.close()  # leave=False: the line is erased, the step's "ok" line follows
            self._bar = None

    def close(self) -> None:
        with self._lock:
            self._close_bar()


def _width(stream: TextIO) -> int:
    try:
        return os.get_terminal_size(stream.fileno()).columns
    except (AttributeError, OSError, ValueError):
        return 0


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
