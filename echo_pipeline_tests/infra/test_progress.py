"""The live line of a running step: what it reads from the step's log lines, and how it draws
on a terminal (one line rewritten in place) and elsewhere (plain lines, a few seconds apart)."""

from __future__ import annotations

import fcntl
import io
import os
import pty
import select
import struct
import termios

from echo_pipeline.infra.progress import (
    StepProgress,
    clock,
    planned_replies,
    total_steps,
    training_metrics,
)
from echo_pipeline.training.experiments import experiment_config

# As the Pipes child logs them (train_job.py) and the evaluation plans its replies (evaluate.py).
STEP_LINE = (
    "step 12: loss 3.512  learning_rate 0.0009  grad_norm 1.2  tokens_per_s 212.4  "
    "real_tokens 6120  padding_waste 0.01  eta_s 130.2  epoch 0.3"
)
PLAN_LINE = (
    "test: reply loss on 48 pairs; 24 prompts x 1 adapter / 1 base replies (sampled: "
    "temperature 0.7, top-p 0.9, repetition penalty 1.1), 12 train prompts for the discriminator"
)


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_a_training_line_gives_its_step_and_metrics():
    step, metrics = training_metrics(STEP_LINE)
    assert step == 12
    assert metrics["loss"] == 3.512 and metrics["tokens_per_s"] == 212.4
    assert metrics["eta_s"] == 130.2 and metrics["epoch"] == 0.3
    assert training_metrics("step 12: eval_loss 3.1") == (12, {"eval_loss": 3.1})
    assert training_metrics("attribution classifier: held-out balanced accuracy 0.995") is None


def test_the_plan_line_counts_every_reply_both_models_write():
    # 24 held-out prompts and 12 train prompts, for the adapter and for the base
    assert planned_replies(PLAN_LINE) == (24 + 12) * 2
    two_draws = PLAN_LINE.replace("x 1 adapter", "x 2 adapter")
    assert planned_replies(two_draws) == 24 * 2 + 12 + 24 + 12
    greedy = two_draws.replace("(sampled: temperature 0.7, top-p 0.9,", "(greedy,")
    assert planned_replies(greedy) == (24 + 12) * 2  # greedy decoding draws once
    assert planned_replies(STEP_LINE) is None


def test_total_steps_is_the_recipes_or_derived_from_epochs_like_training():
    assert total_steps(experiment_config("demo"), 12, 0.3) == experiment_config("demo").max_steps
    echo = experiment_config("echo")  # 2 epochs, capped at 120 steps
    assert total_steps(echo, 10, 0.25) == 80  # one pass is 40 steps
    assert total_steps(echo, 10, 0.05) == 120  # 400 steps, capped
    assert total_steps(echo, 3, 0.1) == 60  # 3 / 0.1 is 29.999... in floating point
    assert total_steps(None, 10, 0.25) is None


def test_clock():
    assert [clock(s) for s in (0, 9.6, 95, 3725)] == ["0:00", "0:10", "1:35", "1:02:05"]


def test_off_a_terminal_plain_lines_at_most_every_few_seconds_and_at_each_phase():
    out, now = io.StringIO(), Clock()
    line = StepProgress(
        "adapter+evaluation[demo|chatml]",
        out,
        recipe=experiment_config("demo"),
        every_s=5,
        now=now,
    )
    line.start()
    for step in (2, 4, 6):
        line.on_log(STEP_LINE.replace("step 12", f"step {step}"))
        now.t += 2
    line.on_log("step 6: eval_loss 3.2")  # validation: not a training line of its own
    line.on_log(PLAN_LINE)  # a new phase prints at once
    now.t += 3
    line.on_replies(24)
    now.t += 6
    line.on_replies(12)
    line.close()

    total = experiment_config("demo").max_steps
    assert out.getvalue().splitlines() == [
        "  adapter+evaluation[demo|chatml] starting",
        f"  adapter+evaluation[demo|chatml] training: step 2/{total}, loss 3.512, "
        "212 tokens/s, ETA 2:10",
        # step 4 came 2 s later: not printed; step 6 came 4 s after step 2: not yet either
        "  adapter+evaluation[demo|chatml] evaluating: replies 0/72",
        # 24 replies 3 s in: not printed (3 s since the last line); 36 replies 9 s in: 9 s left
        "  adapter+evaluation[demo|chatml] evaluating: replies 36/72, ETA 0:09",
    ]


def test_on_a_terminal_one_line_rewritten_in_place_and_erased_at_the_end():
    leader, follower = pty.openpty()  # a real terminal: the stream says isatty() itself
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))
    with open(follower, "w", encoding="utf-8", buffering=1) as terminal:
        line = StepProgress(
            "adapter+evaluation[demo|chatml]", terminal, recipe=experiment_config("demo")
        )
        assert line.interactive
        line.start()
        line.on_log(STEP_LINE.replace("step 12", "step 2"))
        line.on_log(STEP_LINE)
        line.on_log(PLAN_LINE)
        line.on_replies(24)
        line.close()
        terminal.flush()
        chunks = []
        while select.select([leader], [], [], 0.5)[0]:
            chunks.append(os.read(leader, 65536))
    os.close(leader)
    written = b"".join(chunks).decode()
    assert "\n" not in written.rstrip("\n")  # every update rewrote the same line
    assert written.count("\r") >= 4
    total = experiment_config("demo").max_steps
    assert "adapter+evaluation[demo|chatml] training: |" in written
    assert f"| 12/{total} steps, loss 3.512, 212 tokens/s, ETA 2:10" in written
    assert (
        "adapter+evaluation[demo|chatml] evaluating: |" in written and "| 24/72 replies" in written
    )
