"""Library noise stays out of the CLI's output, narrowly: other warnings still show."""

from __future__ import annotations

import logging
import subprocess
import sys
import warnings

import pytest

from echo_pipeline.infra.quiet import VERBOSE_ENV, quiet_output


def warnings_shown(monkeypatch, verbose: bool = False) -> list[str]:
    """Which of a few warnings (library ones silenced, others not) get through quiet_output."""
    if verbose:
        monkeypatch.setenv(VERBOSE_ENV, "1")
    else:
        monkeypatch.delenv(VERBOSE_ENV, raising=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.resetwarnings()
        warnings.simplefilter("always")
        quiet_output()
        for message, category, module in [
            (
                "`is_gradient_checkpointing` is deprecated",
                FutureWarning,
                "transformers.modeling_utils",
            ),
            ("something else is deprecated", FutureWarning, "transformers.modeling_utils"),
            (
                "`is_gradient_checkpointing` is deprecated",
                FutureWarning,
                "echo_pipeline.training.loop",
            ),
            (
                "Hint: Inferred schema contains integer column(s).",
                UserWarning,
                "mlflow.types.utils",
            ),
            (
                "The specified dataset source can be interpreted in multiple ways",
                UserWarning,
                "mlflow.data.x",
            ),
        ]:
            warnings.warn_explicit(message, category, "file.py", 1, module=module)
    return [f"{w.category.__name__}: {w.message}" for w in caught]


def test_known_library_warnings_are_silenced_and_others_still_show(monkeypatch):
    assert warnings_shown(monkeypatch) == [
        "FutureWarning: something else is deprecated",
        "FutureWarning: `is_gradient_checkpointing` is deprecated",  # not from transformers
    ]


def test_verbose_keeps_every_warning(monkeypatch):
    assert len(warnings_shown(monkeypatch, verbose=True)) == 5


def test_the_bitsandbytes_kernels_notice_is_dropped_and_its_other_records_kept(monkeypatch, caplog):
    monkeypatch.delenv(VERBOSE_ENV, raising=False)
    quiet_output()
    logger = logging.getLogger("bitsandbytes.backends.cpu.ops")
    with caplog.at_level(logging.WARNING, logger=logger.name):
        logger.warning(
            "Failed to load CPU gemm_4bit_forward from kernels-community: %s. Please", "x"
        )
        logger.warning("something that matters")
    assert [r.getMessage() for r in caplog.records] == ["something that matters"]


@pytest.mark.slow
def test_chat_prompt_writes_only_the_reply(tmp_path, base_model):
    """bitsandbytes' kernels notice, the "Loading weights" bar and transformers' FutureWarnings
    used to come before the reply on stderr."""
    from untrained import write_untrained_adapter

    adapter = write_untrained_adapter(base_model, tmp_path / "adapter", template="chatml")
    proc = subprocess.run(
        [
            *(
                sys.executable,
                "-m",
                "echo_pipeline.operations.cli",
                "chat",
                "--adapter",
                str(adapter),
            ),
            *("--prompt", "did you finish the game?", "--max-new-tokens", "8"),
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    assert proc.stdout.strip()
