"""Turn the paths a user gives (files and folders) into the export files to read."""

from __future__ import annotations

import errno
import os
import zipfile
from collections.abc import Iterable
from pathlib import Path

from echo_pipeline.exports._common import export_sort_key
from echo_pipeline.exports.archive import (
    DEFAULT_LIMITS,
    SKIPPED_SUFFIXES,
    ArchiveLimits,
    ArchiveMember,
    ExportPath,
    archive_files,
    is_zip_archive,
    open_archive,
)
from echo_pipeline.exports.errors import ExportError
from echo_pipeline.exports.meta import is_meta_companion
from echo_pipeline.exports.slack import is_slack_metadata

#: What a folder is searched for, in words (every format is detected from content, not name).
LOOKED_FOR = (
    "DiscordChatExporter JSON, CSV or PlainText exports, WhatsApp chat exports (.txt), "
    "Telegram Desktop JSON, Messenger/Instagram JSON, Slack workspace exports, or .zip archives "
    "of these"
)


class NoExportFilesError(ExportError):
    """The paths hold no file that could be an export: empty, unrelated files, a symlink loop."""

    def __init__(self, path: str | Path, problem: str | None = None) -> None:
        super().__init__(
            path, problem or f"no export files found under {path}; looked for {LOOKED_FOR}"
        )

    def __str__(self) -> str:
        return self.problem  # it names the folder already


def require_export_files(
    paths: Iterable[str | Path | zipfile.Path] | str | Path,
    *,
    limits: ArchiveLimits = DEFAULT_LIMITS,
) -> list[ExportPath]:
    """:func:`discover_export_files`, but finding nothing is bad input (NoExportFilesError)."""
    if isinstance(paths, str | Path | zipfile.Path):
        paths = [paths]
    paths = list(paths)
    files = discover_export_files(paths, limits=limits)
    if not files:
        raise NoExportFilesError(
            ", ".join(
                str(p if isinstance(p, zipfile.Path) else Path(p).expanduser()) for p in paths
            )
        )
    return files


def discover_export_files(
    paths: Iterable[str | Path | zipfile.Path] | str | Path,
    *,
    limits: ArchiveLimits = DEFAULT_LIMITS,
) -> list[ExportPath]:
    """Export files under ``paths``: files as given, folders searched recursively, zip archives
    opened in place and their members returned as ``zipfile.Path`` (see ``archive.py``).

    Inside folders and archives, hidden entries, DiscordChatExporter ``*_Files`` media folders,
    ``__MACOSX/``, files with a media/document suffix and symlink loops are skipped; the rest are
    returned sorted, with the partitions of an export in part order. A file named explicitly is
    always kept (its content decides later). An archive is a file starting with a zip's bytes
    (a ``.zip``, or any name but a document's); ``archive.zip/member`` names one member.
    Raises ExportError for a path that does not exist, a file that cannot be opened or an
    archive that is damaged or hostile (naming the archive and the member).
    """
    if isinstance(paths, str | Path | zipfile.Path):
        paths = [paths]
    found: list[ExportPath] = []
    seen: set[object] = set()
    archives: dict[Path, zipfile.ZipFile] = {}  # each archive opened and vetted once per call
    for given in paths:
        if isinstance(given, zipfile.Path):
            files: list[ExportPath] = [given]
        else:
            path = Path(given).expanduser()
            if path.is_dir():
                files = _walk(path)
            elif path.exists() or path.is_symlink():
                files = [path]
            else:
                files = [_member_named(path, archives, limits)]
        for file in files:
            if isinstance(file, Path) and is_zip_archive(file, _check_readable(file)):
                members: list[ExportPath] = list(_archive_exports(file, archives, limits))
            else:
                members = [file]
            for member in members:
                key = _identity(member)
                if key not in seen:
                    seen.add(key)
                    found.append(member)
    return found


def _identity(file: ExportPath) -> object:
    if isinstance(file, zipfile.Path):
        return (Path(file.root.filename).resolve(), file.at)
    return file.resolve()


def _open(path: Path, archives: dict[Path, zipfile.ZipFile], limits: ArchiveLimits):
    key = path.resolve()
    if key not in archives:
        archives[key] = open_archive(path, limits)
    return archives[key]


def _archive_exports(
    path: Path, archives: dict[Path, zipfile.ZipFile], limits: ArchiveLimits
) -> list[ArchiveMember]:
    """The members of an archive that can be exports, by the same rules as a folder's files.

    One level only: a zip inside the archive is skipped like media; an archive holding only
    nested zips is an error, so a user is told rather than shown nothing.
    """
    members = archive_files(_open(path, archives, limits))
    exports = [m for m in members if _is_export_member(m.at) and not is_companion(m)]
    if not exports:
        nested = [m.at for m in members if m.suffix.lower() == ".zip"]
        if nested:
            raise ExportError(
                path,
                f"holds only other zip archives ({', '.join(nested[:3])}); archives are read one "
                "level deep: unzip this one and give its folder",
            )
    return sorted(exports, key=export_sort_key)


def _is_export_member(name: str) -> bool:
    parts = name.split("/")
    folders, file = parts[:-1], parts[-1]
    return (
        bool(file)
        and not name.startswith("__MACOSX/")
        and not any(part.startswith(".") for part in parts)
        and not any(folder.endswith("_Files") for folder in folders)
        and Path(file).suffix.lower() not in SKIPPED_SUFFIXES
    )


def _member_named(
    path: Path, archives: dict[Path, zipfile.ZipFile], limits: ArchiveLimits
) -> ArchiveMember:
    """``archive.zip/folder/member`` (how members are named in manifests and errors)."""
    for archive in path.parents:
        if archive.exists():
            if archive.is_file() and is_zip_archive(archive, _check_readable(archive)):
                member = ArchiveMember(
                    _open(archive, archives, limits), path.relative_to(archive).as_posix()
                )
                if member.is_file():
                    return member
                raise ExportError(path, f"no such member in the archive {archive}")
            break
    raise ExportError(path, "no such file or directory")


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
            and _is_walked(Path(name).suffix.lower())
            and not _leads_in_a_circle(os.path.join(folder, name))
            and not is_companion(Path(folder, name))
        )
    return sorted(files, key=export_sort_key)


def is_companion(path: ExportPath) -> bool:
    """A file that comes with an export but holds no chat: Slack's users.json and channel
    lists, Meta's account files and the files shared in a thread. Skipped inside folders and
    archives; named explicitly, it is still read (and detection says what it is)."""
    return is_slack_metadata(path) or is_meta_companion(path)


def _is_walked(suffix: str) -> bool:
    """Media and documents are skipped; a .zip is opened (its members are walked in turn)."""
    return suffix == ".zip" or suffix not in SKIPPED_SUFFIXES


def _leads_in_a_circle(path: str) -> bool:
    """A symlink loop is nothing at all; a dangling link (an export moved away) is an error,
    raised later by name."""
    try:
        os.stat(path)
    except OSError as error:
        return error.errno == errno.ELOOP
    return False


def _check_readable(file: Path) -> bytes:
    """The file's first four bytes (enough to tell a zip archive); ExportError if unreadable."""
    try:
        with file.open("rb") as handle:
            return handle.read(4)
    except OSError as error:
        raise ExportError(file, f"cannot read file ({error.strerror or error})") from None
