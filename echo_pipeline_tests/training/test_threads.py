"""Torch's thread count follows the cores that are free, so CPU training never oversubscribes
a shared machine (OpenMP threads spin-wait for each other when one is descheduled)."""

from __future__ import annotations

import os

import pytest
import torch

from echo_pipeline.training import threads as training
from echo_pipeline.training.threads import auto_threads, free_cores, torch_threads


def test_free_cores_is_within_this_process_cpu_set():
    free = free_cores(0.2)
    assert free is not None and 0.0 <= free <= len(os.sched_getaffinity(0)) + 1e-6


@pytest.mark.parametrize(("free", "expected"), [(0.1, 1), (0.9, 1), (1.7, 1), (1.8, 2), (5.0, 2)])
def test_auto_threads_takes_the_free_cores_up_to_the_default(monkeypatch, free, expected):
    monkeypatch.setattr(training, "free_cores", lambda sample_s=0.5: free)
    default = torch.get_num_threads()
    assert auto_threads() == min(expected, default)


def test_unset_threads_are_sized_inside_the_block_and_restored(monkeypatch):
    monkeypatch.setattr(training, "auto_threads", lambda sample_s=0.5: 1)
    before = torch.get_num_threads()
    with torch_threads(None):
        assert torch.get_num_threads() == 1
    with torch_threads(2):
        assert torch.get_num_threads() == 2
    assert torch.get_num_threads() == before
