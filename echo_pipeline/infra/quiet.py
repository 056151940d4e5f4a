"""Library noise off, narrowly: what a user of the CLI should not have to read.

Each filter names the warning's category and the module that issues it (and its message where
the category is a broad one), so a new or different warning from the same library still shows.
``echo-pipeline -v`` skips all of it. The CLI calls :func:`quiet_output` first thing, and the
training subprocess (``train_job``) calls it too: filters do not cross process boundaries,
environment variables do.

Silenced, with the reason it is noise here:

- bitsandbytes: "Failed to load CPU gemm_4bit_forward from kernels-community" at import (it
  falls back to its own CPU kernel; the optional ``kernels`` package fetches from a hub).
- transformers: the "Loading weights" progress bar; the FutureWarning for
  ``is_gradient_checkpointing``, which PEFT reads when it wraps a model.
- Dagster: BetaWarning/PreviewWarning for the beta parameters this project uses on purpose
  (``Output(data_version=...)``) and for Pipes internals.
- MLflow: "dataset source can be interpreted in multiple ways" (a local path matches both of its
  local sources, which are the same class), the integer-column schema hint for token counts,
  the "Creating initial MLflow database tables" notes and the "Downloading artifacts" bars.
"""

from __future__ import annotations

import logging
import os
import warnings

#: Read by the libraries at import, and inherited by every subprocess.
QUIET_ENV = {
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",  # transformers' bars follow huggingface_hub's switch
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
}
#: Set by ``echo-pipeline -v``, so subprocesses keep every log line too.
VERBOSE_ENV = "ECHO_VERBOSE"

# (category, module that issues it, message start)
_WARNINGS: list[tuple[type[Warning], str, str]] = [
    (FutureWarning, r"transformers\.modeling_utils", r"`is_gradient_checkpointing` is deprecated"),
    (UserWarning, r"mlflow\.data\.", r"The specified dataset source can be interpreted"),
    (UserWarning, r"mlflow\.types\.utils", r"Hint: Inferred schema contains integer column"),
]
# (logger, message start): records dropped whatever their level.
_LOG_RECORDS = [
    (
        "bitsandbytes.backends.cpu.ops",
        "Failed to load CPU gemm_4bit_forward from kernels-community",
    ),
]
# Loggers whose INFO notes are not news to a user.
_WARNING_LEVEL_LOGGERS = ["mlflow.store.db.utils"]


def verbose_requested() -> bool:
    return os.environ.get(VERBOSE_ENV, "") not in ("", "0")


def quiet_output() -> None:
    """Silence the known library noise in this process and the processes it starts.

    Cheap (imports no ML library); safe to call more than once; does nothing when
    ``ECHO_VERBOSE`` is set.
    """
    if verbose_requested():
        return
    for name, value in QUIET_ENV.items():
        os.environ.setdefault(name, value)
    for category, module, message in _WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category, module=module)
    for category, module in _dagster_warnings():
        warnings.filterwarnings("ignore", category=category, module=module)
    for name, start in _LOG_RECORDS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropStartingWith) and f.start == start for f in logger.filters):
            logger.addFilter(_DropStartingWith(start))
    for name in _WARNING_LEVEL_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    _transformers_progress_bars_off()


def _dagster_warnings() -> list[tuple[type[Warning], str]]:
    """Dagster's beta/preview categories (from its small shared package, not ``dagster``
    itself, which takes a second to import) and the modules whose use of them is expected."""
    try:
        from dagster_shared.utils.warnings import BetaWarning, PreviewWarning
    except ImportError:  # the training subprocess may run where only dagster-pipes is installed
        return []
    return [
        (BetaWarning, r"echo_pipeline\."),  # our deliberate beta parameters
        (PreviewWarning, r"dagster\._core\.pipes\."),  # Pipes' own internals
    ]


def _transformers_progress_bars_off() -> None:
    """Through transformers' logging API when it is loaded already; otherwise the environment
    switch above takes effect when it is imported."""
    import sys

    if "transformers" in sys.modules:
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()


class _DropStartingWith(logging.Filter):
    def __init__(self, start: str) -> None:
        super().__init__()
        self.start = start

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.start)
