"""echo-pipeline: inspect exports, build pairs, run the pipeline, look at labels, chat with an adapter.

Every command uses the same core code as the Dagster assets. Bad input ends with exit status 2
and one line on stderr naming the file and the problem, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from echo_pipeline.pairs import pairing_config

EXIT_BAD_INPUT = 2
#: Accounts that are nobody's voice: Discord shows deleted accounts under this name.
NOT_A_PERSON = ("deleted user",)


class UsageError(Exception):
    """A problem the user can fix; printed as one line."""


def _cmd_inspect(args: argparse.Namespace) -> int:
    from echo_pipeline.exports import inspect_export, require_export_files

    summaries = [inspect_export(p) for p in require_export_files(args.paths)]
    if args.json:
        for summary in summaries:
            print(json.dumps(summary, ensure_ascii=False, default=str))
        return 0
    for s in summaries:
        print(f"{s['path']}")
        print(f"  format   {s['format']}: {s['shape']}")
        chats = s.get("channels") or []
        if len(chats) > 1:
            print(f"  chats    {len(chats)}")
            for chat in chats[:10]:
                print(f"    {chat['name']} [{chat['id']}]  {chat['messages']} messages")
        else:
            print(f"  channel  {s.get('channel')} [{s.get('channel_id')}]")
        print(
            f"  messages {s['messages']}  (system {s.get('system', 0)}, bots {s.get('bots', 0)}, "
            f"blank {s.get('blank', 0)})"
        )
        print(f"  dates    {s.get('first')} .. {s.get('last')}")
        if s.get("content_access_suspect"):
            print("  warning  most messages are blank: exported without message-content access?")
        for author in s["authors"][:10]:
            print(
                f"  author   {author['name']:<24} id {author['id']:<22} {author['messages']:>7} messages"
            )
        if s.get("suggested_me"):
            print(f"  owner    {', '.join(s['suggested_me'])} (named by the export: --me)")
    merged = channels_across_files(summaries)
    if merged:
        print()
        for chat in merged:
            print(
                f"one channel {chat['name']} [{chat['id']}]: {chat['files']} files read together, "
                f"{chat['messages']} messages (before removing overlaps), in time order"
            )
    print()
    print(_next_after_inspect(args.paths, summaries))
    return 0


def channels_across_files(summaries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Channels whose messages come from several files (partitions, numbered parts, a Slack
    channel's days): ``pairs`` reads each as one conversation, across the file boundaries."""
    by_id: dict[str, dict[str, Any]] = {}
    for summary in summaries:
        for chat in summary.get("channels") or []:
            entry = by_id.setdefault(
                chat["id"], {"id": chat["id"], "name": chat["name"], "files": 0, "messages": 0}
            )
            entry["files"] += 1
            entry["messages"] += chat["messages"]
    return [chat for chat in by_id.values() if chat["files"] > 1]


def most_active_person(summaries: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The author with the most human messages across the files (no bots, no deleted accounts)."""
    totals: dict[str, dict[str, Any]] = {}
    for summary in summaries:
        for author in summary.get("human_authors", []):
            if str(author["name"]).strip().casefold().startswith(NOT_A_PERSON):
                continue
            entry = totals.setdefault(author["id"], {**author, "messages": 0})
            entry["messages"] += author["messages"]
    ranked = sorted(totals.values(), key=lambda a: (-a["messages"], str(a["name"]), a["id"]))
    return ranked[0] if ranked else None


def _program() -> str:
    """How the user called us (``.venv/bin/echo-pipeline``), for commands they can paste."""
    called = sys.argv[0] if sys.argv else ""
    return called if Path(called).name == "echo-pipeline" else "echo-pipeline"


def suggested_me(summaries: list[dict[str, Any]]) -> list[str]:
    """The owners the exports name themselves (Telegram, Meta), across every file, in order."""
    return list(dict.fromkeys(me for s in summaries for me in s.get("suggested_me", [])))


def _next_after_inspect(paths: Sequence[str], summaries: list[dict[str, Any]]) -> str:
    where = " ".join(shlex.quote(p) for p in paths)
    owners = suggested_me(summaries)
    if owners:
        flags = " ".join(f"--me {shlex.quote(me)}" for me in owners)
        return (
            "next: build your pairs; --me is you, by author id or name (repeat it for each of "
            "your identities: alt accounts, other apps).\n"
            f"The export names its owner: {', '.join(owners)}\n"
            f"  {_program()} pairs {where} {flags}"
        )
    person = most_active_person(summaries)
    if person is None:
        return (
            "next: nobody wrote here (no human messages): check that this is the right export, "
            "and that it was made with message-content access"
        )
    return (
        f"next: build your pairs; --me is you, by author id or name (repeat it for alt accounts).\n"
        f"Example with the most active author, {person['name']}:\n"
        f"  {_program()} pairs {where} --me {shlex.quote(str(person['id']))}"
    )


def _cmd_pairs(args: argparse.Namespace) -> int:
    import pyarrow as pa

    from echo_pipeline.exports import read_exports, require_export_files
    from echo_pipeline.infra.storage import write_parquet
    from echo_pipeline.pairs.conversations import PairingConfig, build_pairs

    config = PairingConfig(
        me=tuple(args.me),
        merge_gap_s=args.merge_gap,
        session_gap_s=args.session_gap,
        context_turns=args.context_turns,
        redact=not args.no_redact,
    )
    files = require_export_files(args.paths)
    messages = read_exports(files)
    pairs, report = build_pairs(messages.to_pandas(), config)
    for warning in report.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if report.pairs == 0:
        print(
            f"warning: no pairs from {len(files)} file(s). Check: is --me you "
            f"(`{_program()} inspect` lists the authors)? Did someone else write between your "
            "messages? Do the messages have text (an export made without message-content access "
            "has none)?",
            file=sys.stderr,
        )
    print(
        f"messages {report.messages_in}  kept {report.messages_kept}  turns {report.turns}  sessions {report.sessions}"
    )
    print(
        f"pairs    {report.pairs}  "
        + "  ".join(f"{k} {v}" for k, v in report.pairs_by_split.items())
    )
    if report.redactions:
        print("redacted " + "  ".join(f"{k} {v}" for k, v in sorted(report.redactions.items())))
    dropped = {k: v for k, v in sorted(report.dropped.items()) if v}
    if dropped:
        print("dropped  " + "  ".join(f"{k} {v}" for k, v in dropped.items()))
    if args.out:
        assert isinstance(pairs, pa.Table)
        write_parquet(pairs, Path(args.out))
        print(f"wrote {args.out}")
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from echo_pipeline.datasets.templates import TEMPLATE_NAMES
    from echo_pipeline.infra.paths import sample_export_dir
    from echo_pipeline.operations.runner import default_log_file, quick_run_config, run_pipeline
    from echo_pipeline.training.experiments import DEMO_EVALUATION, DEMO_PAIRS

    export = None
    if args.export:
        export = Path(args.export)
        if not export.exists():
            raise UsageError(f"{export}: no such file or folder")
    run_config = _load_run_config(args.config) if args.config else {}
    if export is not None:  # --export wins over the config file; --demo only fills a gap
        run_config = _with_op_config(run_config, EXPORT_OP, {"path": str(export.resolve())})
    elif args.demo:
        run_config = _with_op_config(
            run_config, EXPORT_OP, {"path": str(sample_export_dir())}, override=False
        )
    if args.demo:
        run_config = _with_op_config(run_config, PAIRS_OP, DEMO_PAIRS, override=False)
        run_config = _with_op_config(run_config, EVAL_OP, DEMO_EVALUATION, override=False)
        from echo_pipeline.definitions import EvaluationReportConfig

        full = EvaluationReportConfig.model_fields
        print(
            f"demo: a test split of {DEMO_PAIRS['test_fraction']:.0%} of the pairs, evaluated "
            f"on {DEMO_EVALUATION['num_prompts']} prompts with one draw each (your own export: "
            f"{pairing_config.described('test_fraction')[0]:.0%}, "
            f"{full['num_prompts'].default} prompts, {full['samples_per_prompt'].default} draws "
            "each)",
            flush=True,
        )
    if args.memory_k is not None:
        run_config = _with_op_config(run_config, "template_dataset", {"memory_k": args.memory_k})
    run_config = with_me(run_config, args.me, demo=args.demo)
    run_config = quick_run_config(
        run_config, max_steps=args.max_steps, eval_max_pairs=args.eval_max_pairs
    )
    started = time.perf_counter()
    outcome = run_pipeline(
        args.template or list(TEMPLATE_NAMES),
        args.experiment or (["echo"] if args.export else ["demo"]),
        run_config=run_config,
        base_model=args.base_model or _default_run_base(args.export),
        log_file=None if args.verbose else default_log_file(),
        verbose=args.verbose,
        force=args.force,
    )
    if args.demo and outcome.ok:
        from echo_pipeline.infra.layout import Layout
        from echo_pipeline.operations import demo_results

        results = demo_results.demo_results(outcome, time.perf_counter() - started)
        path = demo_results.write(results, Layout.default().root / "demo_results.json")
        print(f"results: {path} ({results['total_seconds'] / 60:.1f} min in all)")
    return outcome.exit_status


#: The op whose config says who "me" is (PairsConfig), and the one that reads the export.
PAIRS_OP = "conversation_pairs"
EXPORT_OP = "read_chat_exports"
EVAL_OP = "evaluation_report"


def _default_run_base(export: str | None) -> str | None:
    """``auto`` for a user's own export (the base that models my replies best), unless env
    ECHO_BASE_MODEL names one; the resource's default (SmolLM2) for the demo."""
    from echo_pipeline.training.base_choice import AUTO
    from echo_pipeline.training.base_model import BASE_MODEL_ENV

    return AUTO if export and not os.environ.get(BASE_MODEL_ENV, "").strip() else None


def _with_op_config(run_config: dict, op: str, values: dict, *, override: bool = True) -> dict:
    """``run_config`` with ``values`` in ``op``'s config (``override=False``: only where unset).
    Settings travel to the pipeline as run config, never through ``os.environ``."""
    ops = dict(run_config.get("ops") or {})
    entry = dict(ops.get(op) or {})
    config = dict(entry.get("config") or {})
    config = {**config, **values} if override else {**values, **config}
    ops[op] = {**entry, "config": config}
    return {**run_config, "ops": ops}


def with_me(run_config: dict, me: Sequence[str] | None, *, demo: bool = False) -> dict:
    """``run_config`` with "me" set for the pairs step: ``--me`` wins over the config file;
    ``--demo`` names the sample's author unless the file names someone. Neither: the file's,
    else the step's own default (env ECHO_ME, else the sample's author)."""
    if me:
        return _with_op_config(run_config, PAIRS_OP, {"me": list(me)})
    if demo:
        return _with_op_config(
            run_config, PAIRS_OP, {"me": [pairing_config.SAMPLE_ME]}, override=False
        )
    return run_config


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

    from echo_pipeline.infra.layout import Layout

    source = Path(path) if path else Layout.default().pairs_path()
    if not source.exists():
        raise UsageError(
            f"{source}: no conversation pairs yet; run `echo-pipeline run` or pass --pairs FILE "
            "(from `echo-pipeline pairs ... --out FILE`)"
        )
    return pq.read_table(source)


def _cmd_show_labels(args: argparse.Namespace) -> int:
    from echo_pipeline.datasets.prompt import PromptSpec
    from echo_pipeline.datasets.tokenization import (
        DEFAULT_MAX_TOKENS,
        format_labels_debug,
        tokenize_pair,
    )
    from echo_pipeline.training.base_model import (
        default_base_model,
        load_tokenizer,
        resolve_base_model,
    )

    max_tokens = DEFAULT_MAX_TOKENS if args.max_tokens is None else args.max_tokens
    table = _load_pairs(args.pairs)
    pairs = table.to_pandas()
    tokenizer = load_tokenizer(resolve_base_model(args.base_model or default_base_model()))
    spec = PromptSpec.for_pairs(args.template, table, max_tokens=max_tokens)
    for row in pairs.head(args.n).to_dict("records"):
        example = tokenize_pair(
            spec.template,
            tokenizer,
            row,
            system_prompt=spec.system_prompt,
            max_tokens=spec.max_tokens,
            me_names=spec.me_names,
        )
        print(f"# pair {row['pair_id']}  template {args.template}  tokens {len(example.input_ids)}")
        print(format_labels_debug(tokenizer, example, max_rows=args.max_rows))
        print()
    return 0


def _cmd_chat(args: argparse.Namespace) -> int:
    if args.web:  # every adapter is picked on the page; nothing else of chat applies
        from echo_pipeline.operations.web.server import serve

        try:
            return serve(port=args.port)
        except OSError as error:
            raise UsageError(str(error)) from error
    from echo_pipeline.serving.chat import ChatSession

    if args.adapter:
        adapter = Path(args.adapter)
    else:
        from echo_pipeline.infra.layout import Layout
        from echo_pipeline.infra.records import METADATA_FILE
        from echo_pipeline.training.experiments import EXPERIMENTS

        adapter_dir = Layout.default().adapter_dir

        if args.experiment:
            adapter = adapter_dir(args.template, args.experiment)
        else:  # the newest trained adapter of the template, else the demo's path (for the error)
            trained = [adapter_dir(args.template, e) for e in EXPERIMENTS]
            trained = [d for d in trained if (d / METADATA_FILE).exists()]
            adapter = max(trained, key=lambda d: (d / METADATA_FILE).stat().st_mtime, default=None)
            adapter = adapter or adapter_dir(args.template, "demo")
    if not adapter.exists():
        raise UsageError(
            f"{adapter}: no adapter there; train one with `echo-pipeline run` or pass --adapter"
        )
    from echo_pipeline.serving.generation import GenerationSettings

    try:
        settings = GenerationSettings(
            max_new_tokens=args.max_new_tokens,
            do_sample=not args.greedy,
            temperature=args.temperature,
            top_p=args.top_p,
            repetition_penalty=args.repetition_penalty,
            penalty_scope=args.penalty_scope,
            seed=args.seed,
        )
    except ValueError as error:
        raise UsageError(f"chat: {error}") from error
    from echo_pipeline.infra.records import AdapterMetadata

    settings = settings.for_adapter(AdapterMetadata.load(adapter).calibrated_temperature)
    decoding = settings.generate_kwargs()
    session = ChatSession.from_adapter(
        adapter,
        base_model=_chat_base_model(adapter, args.base_model),
        max_new_tokens=decoding.pop("max_new_tokens"),
        decoding=decoding,
    )
    if settings.do_sample:
        import torch

        torch.manual_seed(settings.seed)
    if args.prompt is not None:
        print(session.say(args.prompt))
        return 0
    print(
        f"chatting with {adapter} ({session.template}; {settings.describe()}); "
        "empty line or Ctrl-D to stop"
    )
    while True:
        try:
            line = input("you> ").strip()
        except EOFError:
            break
        if not line:
            break
        print(f"echo> {session.say(line)}")
    return 0


def _chat_base_model(adapter: Path, source: str | None):
    """``--base-model``: where the adapter's base lives now (it must be the same weights)."""
    if not source:
        return None
    from echo_pipeline.infra.records import AdapterMetadata
    from echo_pipeline.training.base_model import resolve_base_model

    recorded = AdapterMetadata.load(adapter).base_model
    resolved = resolve_base_model(source)
    if resolved.fingerprint != recorded.fingerprint:
        raise UsageError(
            f"{adapter} was trained on {recorded.source!r} ({recorded.fingerprint}); "
            f"--base-model {source!r} is other weights ({resolved.fingerprint})"
        )
    return resolved


def _cmd_export(args: argparse.Namespace) -> int:
    from echo_pipeline.serving.export_model import export_merged

    adapter = Path(args.adapter)
    if not adapter.exists():
        raise UsageError(f"{adapter}: no such adapter directory")
    out = export_merged(adapter, args.out)
    print(f"merged model, tokenizer and Modelfile in {out}")
    print(f"ollama: cd {out} && ollama create my-echo -f Modelfile")
    return 0


def _cmd_ui(args: argparse.Namespace) -> int:
    from echo_pipeline.operations.servers import serve_ui

    return serve_ui(
        dagster_port=args.dagster_port, mlflow_port=args.mlflow_port, chat_port=args.chat_port
    )


def build_parser() -> argparse.ArgumentParser:
    verbose_help = "Show every library warning, progress bar and log line."
    parser = argparse.ArgumentParser(prog="echo-pipeline", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help=verbose_help)
    # Also accepted after the command (`echo-pipeline run -v`); SUPPRESS keeps either place.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help=verbose_help
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser(
        "inspect",
        parents=[common],
        help="Detected format, channel, counts, dates and authors per export file.",
    )
    p.add_argument("paths", nargs="+", help="Export files or folders.")
    p.add_argument("--json", action="store_true", help="One JSON object per file.")
    p.set_defaults(func=_cmd_inspect)

    p = sub.add_parser(
        "pairs",
        parents=[common],
        help="Build conversation pairs from exports (same code as the asset).",
    )
    p.add_argument("paths", nargs="+", help="Export files or folders.")
    p.add_argument(
        "--me", action="append", required=True, help="Your author id or name (repeatable)."
    )
    p.add_argument("--out", help="Write the pairs to this Parquet file.")
    for flag, name, kind in (
        ("--merge-gap", "merge_gap_s", float),
        ("--session-gap", "session_gap_s", float),
        ("--context-turns", "context_turns", int),
    ):
        default, description = pairing_config.described(name)
        p.add_argument(flag, type=kind, default=default, help=f"{description} Default: {default}.")
    p.add_argument(
        "--no-redact", action="store_true", help="Keep emails, phones, tokens... as they are."
    )
    p.set_defaults(func=_cmd_pairs)

    from echo_pipeline.datasets.templates import TEMPLATE_NAMES
    from echo_pipeline.training.base_model import BASE_MODEL_ALIASES, DEFAULT_BASE_MODEL
    from echo_pipeline.training.experiments import EXPERIMENTS

    base_model_help = (
        f"Base model: {' or '.join(BASE_MODEL_ALIASES)} (offline), a local directory or a hub id"
    )

    p = sub.add_parser(
        "run",
        parents=[common],
        help="Materialise the whole pipeline in the project's Dagster instance.",
        description="Materialise the whole pipeline in the project's Dagster instance: ingest, "
        "then per template its dataset, adapters and evaluation reports, then the comparison.",
        epilog=RUN_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--demo",
        action="store_true",
        help=f"The bundled sample export with me={pairing_config.SAMPLE_ME}.",
    )
    p.add_argument(
        "--export", help="Export file or folder (default: env ECHO_EXPORT_DIR or the sample)."
    )
    p.add_argument(
        "--me",
        action="append",
        help=f"Your author id or name (repeatable; default env {pairing_config.ME_ENV}).",
    )
    p.add_argument(
        "--template", action="append", choices=TEMPLATE_NAMES, help="Templates (default: all)."
    )
    p.add_argument(
        "--experiment",
        action="append",
        choices=list(EXPERIMENTS),
        help="Recipes (default: echo for --export, sized for real chats on a CPU; demo for the sample).",
    )
    p.add_argument(
        "--base-model",
        help=f"{base_model_help}, or auto: each installed offline base scored on my train "
        f"replies (bits per character), {DEFAULT_BASE_MODEL} kept unless another saves 15 %% "
        f"(default: env ECHO_BASE_MODEL, else auto with --export, else {DEFAULT_BASE_MODEL}).",
    )
    p.add_argument(
        "--memory-k",
        type=int,
        help="Put my k most similar past exchanges (train split) in every prompt, in training, "
        "evaluation and chat alike (default 0: off).",
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
        "--force",
        action="store_true",
        help="Re-make every step, even those whose code, inputs and config are unchanged since "
        "their last run (without it, those print 'up to date' and are skipped).",
    )
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser(
        "show-labels",
        parents=[common],
        help="Print samples token by token with their labels (masking check).",
    )
    p.add_argument("--template", required=True, choices=TEMPLATE_NAMES)
    p.add_argument("--pairs", help="Pairs Parquet (default: the materialised conversation_pairs).")
    p.add_argument("-n", type=int, default=2, help="How many pairs.")
    p.add_argument(
        "--max-tokens", type=int, help="Longest example in tokens (default: the dataset's)."
    )
    p.add_argument("--max-rows", type=int, default=200, help="Tokens shown per sample.")
    p.add_argument(
        "--base-model", default=None, help=f"Whose tokenizer: {base_model_help} (default: as run)."
    )
    p.set_defaults(func=_cmd_show_labels)

    p = sub.add_parser(
        "chat", parents=[common], help="Talk to an adapter with its training template."
    )
    p.add_argument("--adapter", help="Adapter directory.")
    p.add_argument(
        "--template",
        choices=TEMPLATE_NAMES,
        default="chatml",
        help="With --experiment, instead of --adapter.",
    )
    p.add_argument(
        "--experiment",
        choices=list(EXPERIMENTS),
        help="Recipe (default: the newest adapter of the template).",
    )
    p.add_argument(
        "--web",
        action="store_true",
        help="Serve the chat page on 127.0.0.1 instead: every adapter, side by side, the "
        "'which one is me?' game and ratings (the other options are set on the page).",
    )
    p.add_argument(
        "--port", type=int, default=0, help="With --web: the port (default: a free one)."
    )
    p.add_argument("--prompt", help="One-shot: print the reply to this and exit.")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument(
        "--temperature",
        type=float,
        default=None,
        help="Sampling temperature (default: the adapter's own, the one that best predicted "
        "your validation replies in training; 1.0 where it has none).",
    )
    p.add_argument("--top-p", type=float, default=0.9, help="Nucleus sampling mass (default 0.9).")
    p.add_argument(
        "--repetition-penalty",
        type=float,
        default=1.1,
        help="Guard against loops (1: off; default 1.1).",
    )
    p.add_argument(
        "--penalty-scope",
        choices=("reply", "prompt"),
        default="reply",
        help="Where the repetition penalty falls: the reply's own tokens (default) or the "
        "prompt's too, as transformers does (the clone then avoids the conversation's words "
        "and its stop token).",
    )
    p.add_argument(
        "--seed", type=int, default=0, help="Sampling seed: the same seed, the same replies."
    )
    p.add_argument(
        "--greedy",
        action="store_true",
        help="Always the most likely token (small clones collapse).",
    )
    p.add_argument(
        "--base-model",
        help="Where the adapter's base lives now (default: as recorded in the adapter).",
    )
    p.set_defaults(func=_cmd_chat)

    p = sub.add_parser(
        "export",
        parents=[common],
        help="Merge an adapter into its base (safetensors) and write an Ollama Modelfile.",
    )
    p.add_argument(
        "--adapter",
        required=True,
        help="Adapter directory (data/lora_adapter/<template>__<experiment>).",
    )
    p.add_argument("--out", required=True, help="Output directory for the merged model.")
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser(
        "ui",
        parents=[common],
        help="Dagster UI, MLflow UI and the chat page together on 127.0.0.1; Ctrl-C stops all.",
    )
    p.add_argument("--dagster-port", type=int, default=3000)
    p.add_argument("--mlflow-port", type=int, default=5000)
    p.add_argument(
        "--chat-port", type=int, default=0, help="The chat page's port (default: a free one)."
    )
    p.set_defaults(func=_cmd_ui)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from echo_pipeline.exports import ExportError
    from echo_pipeline.infra.quiet import VERBOSE_ENV, quiet_output
    from echo_pipeline.pairs.conversations import MeNotFoundError

    parser = build_parser()
    args = parser.parse_args(argv)
    if args.verbose:
        os.environ[VERBOSE_ENV] = "1"  # the training subprocess keeps its logs too
    else:
        quiet_output()
    try:
        return int(args.func(args) or 0)
    except (ExportError, MeNotFoundError, UsageError, FileNotFoundError) as error:
        print(f"echo-pipeline: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
