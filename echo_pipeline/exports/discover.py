"""Turn the paths a user gives (files and folders) into the export files to read."""

from __future__ import annotations

import errno
import os
from collections.abc import Iterable
from pathlib import Path

from echo_pipeline.exports._common import export_sort_key
from echo_pipeline.exports.errors import ExportError
from echo_pipeline.exports.slack import is_slack_metadata

#: Files that sit beside exports but never are one: downloaded media (DCE ``--media``, WhatsApp
#: "attach media"), archives, documents and contact cards.
SKIPPED_SUFFIXES = frozenset(
    [
        ".md",
        ".markdown",
        ".rst",
        ".png",
        ".jpg",
        ".jpeg",
        ".gif",
        ".webp",
        ".bmp",
        ".tif",
        ".tiff",
        ".heic",
        ".heif",
        ".avif",
        ".svg",
        ".ico",
        ".jfif",
        ".mp4",
        ".mov",
        ".webm",
        ".mkv",
        ".avi",
        ".m4v",
        ".3gp",
        ".mp3",
        ".wav",
        ".ogg",
        ".oga",
        ".opus",
        ".m4a",
        ".flac",
        ".aac",
        ".amr",
        ".pdf",
        ".doc",
        ".docx",
        ".xls",
        ".xlsx",
        ".ppt",
        ".pptx",
        ".zip",
        ".gz",
        ".tgz",
        ".7z",
        ".rar",
        ".tar",
        ".vcf",
        ".exe",
        ".dll",
        ".woff",
        ".woff2",
        ".ttf",
        ".css",
        ".js",
        ".parquet",
        ".pyc",
    ]
)


#: What a folder is searched for, in words (every format is detected from content, not name).
LOOKED_FOR = "DiscordChatExporter JSON, CSV or PlainText exports, or WhatsApp chat exports (.txt)"


class NoExportFilesError(ExportError):
    """The paths hold no file that could be an export: empty, unrelated files, a symlink loop."""

    def __init__(self, path: str | Path, problem: str | None = None) -> None:
        super().__init__(
            path, problem or f"no export files found under {path}; looked for {LOOKED_FOR}"
        )

    def __str__(self) -> str:
        return self.problem  # it names the folder already


def require_export_files(paths: Iterable[str | Path] | str | Path) -> list[Path]:
    """:func:`discover_export_files`, but finding nothing is bad input (NoExportFilesError)."""
    if isinstance(paths, str | Path):
        paths = [paths]
    paths = list(paths)
    files = discover_export_files(paths)
    if not files:
        raise NoExportFilesError(", ".join(str(Path(p).expanduser()) for p in paths))
    return files


def discover_export_files(paths: Iterable[str | Path] | str | Path) -> list[Path]:
    """Export files under ``paths``: files as given, folders searched recursively.

    Inside folders, hidden entries, DiscordChatExporter ``*_Files`` media folders, files with a
    media/document suffix and symlink loops are skipped; the rest are returned sorted, with the
    partitions of an export in part order. A file named explicitly is always kept (its content decides later).
    Raises ExportError for a path that does not exist or a file that cannot be opened.
    """
    if isinstance(paths, str | Path):
        paths = [paths]
    found: list[Path] = []
    seen: set[Path] = set()
    for given in paths:
        path = Path(given).expanduser()
        if path.is_dir():
            files = _walk(path)
        elif path.exists() or path.is_symlink():
            files = [path]
        else:
            raise ExportError(path, "no such file or directory")
        for file in files:
            _check_readable(file)
            key = file.resolve()
            if key not in seen:
                seen.add(key)
                found.append(file)
    return found


def _walk(root: Path) -> list[Path]:
    def fail(error: OSError) -> None:
        raise ExportError(error.filename or root, f"cannot read folder ({error.strerror or error})")

    files = []
    for folder, dirnames, filenames in os.walk(root, onerror=fail):
        dirnames[:] = sorted(
            d for d in dirnames if not d.startswith(".") and not d.endswith("_Files")
        )
        files.extend(
            Path(folder, name)
            for name in filenames
            if not name.startswith(".")
            and Path(name).suffix.lower() not in SKIPPED_SUFFIXES
            and not _leads_in_a_circle(os.path.join(folder, name))
            and not is_slack_metadata(Path(folder, name))
        )
    return sorted(files, key=export_sort_key)


def _leads_in_a_circle(path: str) -> bool:
    """A symlink loop is nothing at all; a dangling link (an export moved away) is an error,
    raised later by name."""
    try:
        os.stat(path)
    except OSError as error:
        return error.errno == errno.ELOOP
    return False


def _check_readable(file: Path) -> None:
    try:
        with file.open("rb") as handle:
            handle.read(1)
    except OSError as error:
        raise ExportError(file, f"cannot read file ({error.strerror or error})") from None
