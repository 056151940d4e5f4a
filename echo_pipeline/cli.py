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


def _cmd_run(args: argparse.Namespace) -> int:
    import os

    from echo_pipeline.paths import sample_export_dir
    from echo_pipeline.runner import default_log_file, quick_run_config, run_pipeline

    if args.demo:
        os.environ["ECHO_EXPORT_DIR"] = str(sample_export_dir())
        os.environ["ECHO_ME"] = "alex"
    if args.export:
        export = Path(args.export)
        if not export.exists():
            raise UsageError(f"{export}: no such file or folder")
        os.environ["ECHO_EXPORT_DIR"] = str(export.resolve())
    if args.me:
        os.environ["ECHO_ME"] = ",".join(args.me)
    from echo_pipeline.templates import TEMPLATE_NAMES

    run_config = _load_run_config(args.config) if args.config else {}
    run_config = quick_run_config(
        run_config, max_steps=args.max_steps, eval_max_pairs=args.eval_max_pairs
    )
    outcome = run_pipeline(
        args.template or list(TEMPLATE_NAMES),
        args.experiment or ["demo"],
        run_config=run_config,
        base_model=args.base_model,
        log_file=None if args.verbose else default_log_file(),
        verbose=args.verbose,
    )
    return outcome.exit_status


def _load_run_config(path: str) -> dict:
    """A Dagster run config file (YAML or JSON, ``{"ops": {op: {"config": {...}}}}``)."""
    import yaml

    source = Path(path)
    try:
        config = yaml.safe_load(source.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as error:
        reason = " ".join(str(error).split())
        raise UsageError(f"{source}: cannot read run config: {reason}") from error
    if not isinstance(config, dict) or not isinstance(config.get("ops", {}), dict):
        example = '{"ops": {"lora_adapter": {"config": {...}}}}'
        raise UsageError(f"{source}: a run config is a mapping like {example}")
    return config


RUN_EPILOG = """\
Each step prints one line; a failed step prints one more line on stderr (the step and the
error's first line; for training, the cause the subprocess reported) and the run goes on with
what does not depend on it. A summary table ends the run. Dagster's log, library warnings and
the training subprocess' output go to data/logs/run-*.log (on the terminal with -v, with
tracebacks).

exit status:
  0  every step succeeded
  1  a step failed (training, evaluation, tracking, ...)
  2  bad input: the export cannot be read, "me" is unknown, no pairs, or too few pairs for a
     held-out test split (checked before any training)
  130, 143  interrupted (Ctrl-C, SIGTERM); while waiting for the gpu pool nothing stays claimed
"""


def _load_pairs(path: str | None):
    import pyarrow.parquet as pq

    from echo_pipeline.paths import data_dir

    source = Path(path) if path else data_dir() / "conversation_pairs.parquet"
    if not source.exists():
        raise UsageError(
            f"{source}: no conversation pairs yet; run `echo-pipeline run` or pass --pairs FILE "
            "(from `echo-pipeline pairs ... --out FILE`)"
        )
    return pq.read_table(source).to_pandas()


def _cmd_show_labels(args: argparse.Namespace) -> int:
    from echo_pipeline.base_model import load_tokenizer, resolve_base_model
    from echo_pipeline.templates import default_system_prompt, infer_me_name
    from echo_pipeline.tokenization import format_labels_debug, tokenize_pair

    pairs = _load_pairs(args.pairs)
    tokenizer = load_tokenizer(resolve_base_model(args.base_model))
    system_prompt = default_system_prompt(infer_me_name(list(pairs["context"])))
    for row in pairs.head(args.n).to_dict("records"):
        example = tokenize_pair(args.template, tokenizer, row, system_prompt=system_prompt, max_tokens=args.max_tokens)
        print(f"# pair {row['pair_id']}  template {args.template}  tokens {len(example.input_ids)}")
        print(format_labels_debug(tokenizer, example, max_rows=args.max_rows))
        print()
    return 0


def _cmd_chat(args: argparse.Namespace) -> int:
    from echo_pipeline.chat import ChatSession

    if args.adapter:
        adapter = Path(args.adapter)
    else:
        from echo_pipeline.defs.training import adapter_dir

        adapter = adapter_dir(args.template, args.experiment)
    if not adapter.exists():
        raise UsageError(f"{adapter}: no adapter there; train one with `echo-pipeline run` or pass --adapter")
    session = ChatSession.from_adapter(adapter, max_new_tokens=args.max_new_tokens)
    if args.prompt is not None:
        print(session.say(args.prompt))
        return 0
    print(f"chatting with {adapter} ({session.template}); empty line or Ctrl-D to stop")
    while True:
        try:
            line = input("you> ").strip()
        except EOFError:
            break
        if not line:
            break
        print(f"echo> {session.say(line)}")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from echo_pipeline.export_model import export_merged

    adapter = Path(args.adapter)
    if not adapter.exists():
        raise UsageError(f"{adapter}: no such adapter directory")
    out = export_merged(adapter, args.out)
    print(f"merged model, tokenizer and Modelfile in {out}")
    print(f"ollama: cd {out} && ollama create my-echo -f Modelfile")
    return 0


def _cmd_ui(args: argparse.Namespace) -> int:
    from echo_pipeline.servers import serve_ui

    return serve_ui(dagster_port=args.dagster_port, mlflow_port=args.mlflow_port)


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

    from echo_pipeline.experiments import EXPERIMENTS
    from echo_pipeline.templates import TEMPLATE_NAMES

    p = sub.add_parser(
        "run",
        help="Materialise the whole pipeline in the project's Dagster instance.",
        description="Materialise the whole pipeline in the project's Dagster instance: ingest, "
        "then per template its dataset, adapters and evaluation reports, then the comparison.",
        epilog=RUN_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--demo", action="store_true", help="The bundled sample export with me=alex.")
    p.add_argument("--export", help="Export file or folder (default: env ECHO_EXPORT_DIR or the sample).")
    p.add_argument("--me", action="append", help="Your author id or name (repeatable; default env ECHO_ME).")
    p.add_argument("--template", action="append", choices=TEMPLATE_NAMES, help="Templates (default: all).")
    p.add_argument("--experiment", action="append", choices=list(EXPERIMENTS), help="Recipes (default: demo).")
    p.add_argument(
        "--base-model",
        help="Base model: alias, local directory, .gguf or hub id "
        "(default: env ECHO_BASE_MODEL or SmolLM2-135M-Instruct).",
    )
    p.add_argument(
        "--max-steps", type=int, help="Cut training to this many optimizer steps (a quick trial)."
    )
    p.add_argument(
        "--eval-max-pairs",
        type=int,
        help="Evaluate on at most this many held-out pairs (a quick trial).",
    )
    p.add_argument("--config", help="Dagster run config file (YAML/JSON) with per-op settings.")
    p.add_argument(
        "-v", "--verbose", action="store_true", help="Dagster's log and tracebacks on the terminal."
    )
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser("show-labels", help="Print samples token by token with their labels (masking check).")
    p.add_argument("--template", required=True, choices=TEMPLATE_NAMES)
    p.add_argument("--pairs", help="Pairs Parquet (default: the materialised conversation_pairs).")
    p.add_argument("-n", type=int, default=2, help="How many pairs.")
    p.add_argument("--max-tokens", type=int, default=512)
    p.add_argument("--max-rows", type=int, default=200, help="Tokens shown per sample.")
    p.add_argument("--base-model", default="smollm2-135m-instruct", help="Whose tokenizer.")
    p.set_defaults(func=_cmd_show_labels)

    p = sub.add_parser("chat", help="Talk to an adapter with its training template.")
    p.add_argument("--adapter", help="Adapter directory.")
    p.add_argument("--template", choices=TEMPLATE_NAMES, default="chatml", help="With --experiment, instead of --adapter.")
    p.add_argument("--experiment", choices=list(EXPERIMENTS), default="demo")
    p.add_argument("--prompt", help="One-shot: print the reply to this and exit.")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.set_defaults(func=_cmd_chat)

    p = sub.add_parser("export", help="Merge an adapter into its base (safetensors) and write an Ollama Modelfile.")
    p.add_argument("--adapter", required=True, help="Adapter directory (data/lora_adapter/<template>__<experiment>).")
    p.add_argument("--out", required=True, help="Output directory for the merged model.")
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser("ui", help="Dagster UI and MLflow UI together on 127.0.0.1; Ctrl-C stops both.")
    p.add_argument("--dagster-port", type=int, default=3000)
    p.add_argument("--mlflow-port", type=int, default=5000)
    p.set_defaults(func=_cmd_ui)
    return parser


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
