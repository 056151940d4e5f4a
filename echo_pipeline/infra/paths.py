"""Where runtime state lives. One place, so tests and users can move it with environment variables."""

from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def data_dir() -> Path:
    """Root of materialised data (``ECHO_DATA_DIR`` overrides; default ``<repo>/data``)."""
    return Path(os.environ.get("ECHO_DATA_DIR", PROJECT_ROOT / "data")).resolve()


def sample_export_dir() -> Path:
    """The bundled sample export, used when no export location is configured."""
    return PROJECT_ROOT / "data" / "sample"


def models_dir() -> Path:
    """Converted base models (GGUF dequantised to safetensors) are cached here.

    ``ECHO_MODELS_DIR`` overrides, so several data folders (tests, users' experiments) can share
    one conversion.
    """
    override = os.environ.get("ECHO_MODELS_DIR")
    return Path(override).resolve() if override else data_dir() / "models"


def mlruns_dir() -> Path:
    """Default MLflow store: sqlite database and artifacts (``ECHO_MLRUNS_DIR`` overrides)."""
    return Path(os.environ.get("ECHO_MLRUNS_DIR", PROJECT_ROOT / "mlruns")).resolve()
