"""echo-pipeline: inspect exports, build pairs, run the pipeline, look at labels, chat with an adapter.

Every command uses the same core code as the Dagster assets. Bad input ends with exit status 2
and one line on stderr naming the file and the problem, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

EXIT_BAD_INPUT = 2


class UsageError(Exception):
    """A problem the user can fix; printed as one line."""


def _cmd_inspect(args: argparse.Namespace) -> int:
    from echo_pipeline.exports import discover_export_files, inspect_export

    summaries = [inspect_export(p) for p in discover_export_files(args.paths)]
    if args.json:
        for summary in summaries:
            print(json.dumps(summary, ensure_ascii=False, default=str))
        return 0
    for s in summaries:
        print(f"{s['path']}")
        print(f"  format   {s['format']}   channel {s.get('channel')} [{s.get('channel_id')}]")
        print(
            f"  messages {s['messages']}  (system {s.get('system', 0)}, bots {s.get('bots', 0)}, "
            f"blank {s.get('blank', 0)})"
        )
        print(f"  dates    {s.get('first')} .. {s.get('last')}")
        if s.get("content_access_suspect"):
            print("  warning  most messages are blank: exported without message-content access?")
        for author in s["authors"][:10]:
            print(f"  author   {author['name']:<24} id {author['id']:<22} {author['messages']:>7} messages")
    return 0


def _cmd_pairs(args: argparse.Namespace) -> int:
    import pyarrow as pa

    from echo_pipeline.conversations import PairingConfig, build_pairs
    from echo_pipeline.exports import read_exports
    from echo_pipeline.storage import write_parquet

    config = PairingConfig(
        me=tuple(args.me),
        merge_gap_s=args.merge_gap,
        session_gap_s=args.session_gap,
        context_turns=args.context_turns,
        redact=not args.no_redact,
    )
    messages = read_exports(args.paths)
    pairs, report = build_pairs(messages.to_pandas(), config)
    for warning in report.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    print(f"messages {report.messages_in}  kept {report.messages_kept}  turns {report.turns}  sessions {report.sessions}")
    print(f"pairs    {report.pairs}  " + "  ".join(f"{k} {v}" for k, v in report.pairs_by_split.items()))
    if report.redactions:
        print("redacted " + "  ".join(f"{k} {v}" for k, v in sorted(report.redactions.items())))
    if report.dropped:
        print("dropped  " + "  ".join(f"{k} {v}" for k, v in sorted(report.dropped.items()) if v))
    if args.out:
        assert isinstance(pairs, pa.Table)
        write_parquet(pairs, Path(args.out))
        print(f"wrote {args.out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="echo-pipeline", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("inspect", help="Detected format, channel, counts, dates and authors per export file.")
    p.add_argument("paths", nargs="+", help="Export files or folders.")
    p.add_argument("--json", action="store_true", help="One JSON object per file.")
    p.set_defaults(func=_cmd_inspect)

    p = sub.add_parser("pairs", help="Build conversation pairs from exports (same code as the asset).")
    p.add_argument("paths", nargs="+", help="Export files or folders.")
    p.add_argument("--me", action="append", required=True, help="Your author id or name (repeatable).")
    p.add_argument("--out", help="Write the pairs to this Parquet file.")
    p.add_argument("--merge-gap", type=float, default=300.0, help="Seconds within which one author's messages merge.")
    p.add_argument("--session-gap", type=float, default=3600.0, help="Seconds of silence that start a new session.")
    p.add_argument("--context-turns", type=int, default=3, help="Earlier turns kept as context.")
    p.add_argument("--no-redact", action="store_true", help="Keep emails, phones, tokens... as they are.")
    p.set_defaults(func=_cmd_pairs)

    for register in _EXTRA_COMMANDS:
        register(sub)
    return parser


_EXTRA_COMMANDS: list = []


def main(argv: Sequence[str] | None = None) -> int:
    from echo_pipeline.conversations import MeNotFoundError
    from echo_pipeline.exports import ExportError

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ExportError, MeNotFoundError, UsageError, FileNotFoundError) as error:
        print(f"echo-pipeline: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
