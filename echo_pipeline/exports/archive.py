"""Zip archives read in place: vetted up front, their members handed out as ``zipfile.Path``.

WhatsApp's "Export chat" (the ``.txt`` plus media), Slack's workspace export and Meta's "Download
your information" arrive as ``.zip`` files. They are read where they lie: nothing is extracted,
no temporary file is written, and only the members that can be exports are ever decompressed.

An archive is hostile until vetted. Before any member is read, every entry of its central
directory is checked: its name must stay inside the archive (no absolute path, drive letter,
``..`` part, also after turning backslashes into slashes), it must not be a symlink, be
encrypted, use a compression other than stored/deflate, appear twice or overlap another entry's
data, and its declared size must stay under :class:`ArchiveLimits` (per member, in total, and in
compression ratio: the mark of a zip bomb). Any failure is an ``ExportError`` naming the archive
and the member.

What CPython 3.11's zipfile guarantees, and what it does not: a member's stream stops at the
size declared in the central directory (``ZipExtFile`` truncates its output to ``file_size``)
and checks the CRC at the end (``BadZipFile`` on a mismatch), so a member that lies about its
size yields at most its declared size and then fails. But ``read()`` without a size decompresses
in chunks of up to 1 GiB (``MAX_N``) before truncating, and bzip2/LZMA chunks are decompressed
without any output bound; so members are read here only in bounded chunks (:data:`READ_CHUNK`)
and only stored or deflated members are accepted.

Nested archives are read one level only: a ``.zip`` inside a ``.zip`` is skipped like media, and
an archive holding nothing but nested archives is an error saying so. Meta's download split into
several zips side by side is several archives, each read.
"""

from __future__ import annotations

import io
import itertools
import os
import re
import stat
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

from echo_pipeline.exports.errors import ExportError

#: Any path an export reader accepts: a file on disk or a member of a zip archive.
ExportPath = Path | zipfile.Path

GiB = 1 << 30
MiB = 1 << 20

#: Bytes decompressed per read call: bounds memory whatever a member's stream claims.
READ_CHUNK = 4 * MiB

#: The first bytes of a zip archive (a local file header, or the end record of an empty one).
ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")

_ACCEPTED_COMPRESSION = {zipfile.ZIP_STORED: "stored", zipfile.ZIP_DEFLATED: "deflate"}
_DRIVE = re.compile(r"^[A-Za-z]:")
_REDOWNLOAD = "download the archive again"

#: Files that sit beside exports but never are one: downloaded media (DCE ``--media``, WhatsApp
#: "attach media"), archives, documents and contact cards. A ``.zip`` is opened instead (its
#: members are walked by these rules); inside an archive, a nested ``.zip`` is skipped.
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


@dataclass(frozen=True)
class ArchiveLimits:
    """What a sane chat-export archive stays under (declared sizes, checked before reading).

    Chat text compresses about 3-20x and media not at all; deflate cannot exceed ~1032x, which
    only runs of one byte reach. So a member above ``ratio_min_bytes`` expanding more than
    ``max_ratio`` times is a zip bomb, not an export.
    """

    max_member_bytes: int = 8 * GiB  # a 1M-message JSON export is ~1 GiB
    max_total_bytes: int = 64 * GiB  # a Meta or Slack download with its media
    max_ratio: float = 200.0
    ratio_min_bytes: int = 1 * MiB  # small files of repeated lines may compress further
    max_members: int = 2_000_000  # a large Slack workspace: channels x days


DEFAULT_LIMITS = ArchiveLimits()


class ArchiveMember(zipfile.Path):
    """A ``zipfile.Path`` whose reads are bounded and whose damage is an ``ExportError``.

    Readers use only ``open("rb")``, ``read_bytes()``, ``name``, ``stem``, ``suffix``,
    ``parent``, ``/``, ``exists()`` and ``str()`` (``archive.zip/member``), exactly as on a
    ``pathlib.Path``.
    """

    def open(self, mode="r", *args, pwd=None, **kwargs):
        if "b" not in mode:
            if not args and "encoding" not in kwargs:
                kwargs["encoding"] = "utf-8"
            return io.TextIOWrapper(self.open("rb"), *args, **kwargs)
        if mode != "rb":
            raise ValueError(f"{self}: archive members are read-only")
        try:
            stream = super().open("rb", pwd=pwd)
        except (zipfile.BadZipFile, zlib.error, RuntimeError, NotImplementedError) as error:
            raise ExportError(self, f"damaged archive member ({error}); {_REDOWNLOAD}") from None
        return io.BufferedReader(_BoundedStream(self, stream), buffer_size=256 * 1024)

    def read_bytes(self) -> bytes:
        with self.open("rb") as handle:
            return handle.read()

    def read_text(self, *args, **kwargs) -> str:
        with self.open("r", *args, **kwargs) as handle:
            return handle.read()


class _BoundedStream(io.RawIOBase):
    """A member's decompressed bytes, read in chunks of at most READ_CHUNK."""

    def __init__(self, member: ArchiveMember, stream) -> None:
        self._member = member
        self._stream = stream

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        data = self._read(min(len(buffer), READ_CHUNK))
        buffer[: len(data)] = data
        return len(data)

    def readall(self) -> bytes:
        chunks = []
        while data := self._read(READ_CHUNK):
            chunks.append(data)
        return b"".join(chunks)

    def _read(self, size: int) -> bytes:
        try:
            return self._stream.read(size)
        except (zipfile.BadZipFile, zlib.error, EOFError) as error:
            raise ExportError(
                self._member, f"damaged archive member ({error}); {_REDOWNLOAD}"
            ) from None

    def close(self) -> None:
        if not self.closed:
            self._stream.close()
        super().close()


def is_zip_archive(path: Path, head: bytes) -> bool:
    """True for a file to open as an archive: its first bytes are a zip's, and it is not an
    office document or other zip-based file that never holds a chat export."""
    suffix = path.suffix.lower()
    return head.startswith(ZIP_MAGIC) and (suffix == ".zip" or suffix not in SKIPPED_SUFFIXES)


def open_archive(path: str | Path, limits: ArchiveLimits = DEFAULT_LIMITS) -> zipfile.ZipFile:
    """The archive at ``path``, opened and vetted (see module docstring); ExportError if not."""
    path = Path(path)
    try:
        archive = zipfile.ZipFile(path)
    except zipfile.BadZipFile as error:
        raise ExportError(
            path, f"not a readable zip archive ({error}); it is truncated or damaged, {_REDOWNLOAD}"
        ) from None
    except OSError as error:
        raise ExportError(path, f"cannot read file ({error.strerror or error})") from None
    try:
        vet_archive(path, archive.infolist(), limits)
    except ExportError:
        archive.close()
        raise
    return archive


def vet_archive(path: Path, infos: list[zipfile.ZipInfo], limits: ArchiveLimits) -> None:
    """Raise ExportError for the first entry of ``infos`` that is not safe to read."""
    if len(infos) > limits.max_members:
        raise ExportError(
            path, f"holds {len(infos)} entries, more than the {limits.max_members} allowed"
        )
    names: set[str] = set()
    total = 0
    for info in infos:
        _vet_member(path, info, limits)
        if info.filename in names:
            _fail(path, info, "appears twice in the archive (a later copy would hide the first)")
        names.add(info.filename)
        total += info.file_size
        if total > limits.max_total_bytes:
            _fail(
                path,
                info,
                f"brings the archive's declared size past {_size(limits.max_total_bytes)} "
                "(a zip bomb?)",
            )
    _vet_overlaps(path, infos)


def _vet_member(path: Path, info: zipfile.ZipInfo, limits: ArchiveLimits) -> None:
    problem = unsafe_name(info.filename)
    if problem:
        _fail(path, info, f"has an unsafe name ({problem}); the archive is not a chat export")
    if stat.S_ISLNK(info.external_attr >> 16):  # the Unix mode bits zip tools store
        _fail(path, info, "is a symbolic link; archives holding links are not read")
    if info.flag_bits & 0x1:
        _fail(path, info, "is encrypted; unzip the archive with its password and give the folder")
    if info.compress_type not in _ACCEPTED_COMPRESSION:
        _fail(
            path,
            info,
            f"uses compression method {info.compress_type} (only stored and deflate are read); "
            "re-zip it with a standard zip tool",
        )
    if info.file_size > limits.max_member_bytes:
        _fail(
            path,
            info,
            f"declares {_size(info.file_size)} uncompressed, more than "
            f"{_size(limits.max_member_bytes)} (a zip bomb?)",
        )
    if info.file_size > limits.ratio_min_bytes:
        ratio = info.file_size / max(info.compress_size, 1)
        if ratio > limits.max_ratio:
            _fail(
                path,
                info,
                f"expands {ratio:.0f}x ({_size(info.compress_size)} to {_size(info.file_size)}), "
                f"above the {limits.max_ratio:.0f}x no chat export reaches (a zip bomb)",
            )


def _vet_overlaps(path: Path, infos: list[zipfile.ZipInfo]) -> None:
    """Entries whose data overlap: the trick that lets a small archive declare huge sizes."""
    by_offset = sorted((i for i in infos if not i.is_dir()), key=lambda i: i.header_offset)
    for first, second in itertools.pairwise(by_offset):
        if first.header_offset + first.compress_size > second.header_offset:
            _fail(path, second, f"overlaps the data of {first.filename!r} (a zip bomb's trick)")


def unsafe_name(name: str) -> str | None:
    """Why a member name would escape the folder it were extracted to, or None if it stays."""
    slashed = name.replace("\\", "/")
    if slashed.startswith("/"):
        return "absolute path"
    if _DRIVE.match(slashed):
        return "drive letter"
    if ".." in slashed.split("/"):
        return "'..' part"
    return None


def _fail(path: Path, info: zipfile.ZipInfo, problem: str) -> None:
    raise ExportError(path, f"member {info.filename!r} {problem}")


def _size(n: int) -> str:
    for unit, scale in (("GiB", GiB), ("MiB", MiB), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"


def archive_files(archive: zipfile.ZipFile) -> list[ArchiveMember]:
    """Every file member of a vetted archive (no directory entries), in central-directory order."""
    return [
        ArchiveMember(archive, info.filename) for info in archive.infolist() if not info.is_dir()
    ]


def archive_of(path: ExportPath) -> Path | None:
    """The archive file a member lives in; None for a plain file."""
    if isinstance(path, zipfile.Path):
        return Path(path.root.filename)
    return None


def export_size(path: ExportPath) -> int:
    """Bytes of an export: a file's size, or a member's declared uncompressed size."""
    if isinstance(path, zipfile.Path):
        return path.root.getinfo(path.at).file_size
    return path.stat().st_size


def as_export_path(path: str | os.PathLike[str] | zipfile.Path) -> ExportPath:
    """``path`` as readers take it: a zip member stays one, anything else becomes a Path."""
    return path if isinstance(path, zipfile.Path) else Path(path)


__all__ = [
    "DEFAULT_LIMITS",
    "ArchiveLimits",
    "ArchiveMember",
    "ExportPath",
    "archive_files",
    "archive_of",
    "as_export_path",
    "export_size",
    "is_zip_archive",
    "open_archive",
    "unsafe_name",
    "vet_archive",
]
