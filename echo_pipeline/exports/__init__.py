"""Read chat exports (DiscordChatExporter JSON/CSV/PlainText, WhatsApp) into CHAT_MESSAGES.

Pure logic, no Dagster: ``read_exports(paths)`` is what the ``chat_messages`` asset calls;
``inspect_export(path)`` backs the CLI's ``inspect``. Every bad input raises ``ExportError``,
whose one-line message names the file, the problem and, where there is one, the fix.
"""

from echo_pipeline.exports.detect import detect_format
from echo_pipeline.exports.discover import (
    LOOKED_FOR,
    NoExportFilesError,
    discover_export_files,
    require_export_files,
)
from echo_pipeline.exports.errors import ExportError
from echo_pipeline.exports.reader import (
    FORMATS,
    HUMAN_KINDS,
    inspect_export,
    read_export,
    read_exports,
)

__all__ = [
    "FORMATS",
    "HUMAN_KINDS",
    "LOOKED_FOR",
    "ExportError",
    "NoExportFilesError",
    "detect_format",
    "discover_export_files",
    "inspect_export",
    "read_export",
    "read_exports",
    "require_export_files",
]
