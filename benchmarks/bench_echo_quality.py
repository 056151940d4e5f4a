"""Does it sound like me on a real chat? The whole pipeline on real exports, old vs new defaults.

For each real corpus (``echo_pipeline_tests/fixtures/real/``, or ``/work/shared/fixtures/real``),
each configuration and each base model, runs ingest -> pairs -> dataset -> adapter ->
evaluation through the shell runner (real Dagster, real MLflow, real training) in a fresh data
folder, and prints the scorecard side by side: my real replies, the base, the adapter, the
verdict, the issue-11 targets met, and the minutes taken. Results (with a few sample replies
per run) go to ``benchmarks/results/echo_quality.json``.

Configurations:

* ``old``: the defaults before the echo-quality work: the ``demo`` recipe, every reply kept as
  a target (placeholders and repeats), greedy decoding, one reply per prompt; judged by the new
  measures.
* ``new``: today's defaults: the ``echo`` recipe (what ``echo-pipeline run --export`` trains),
  placeholder-only replies dropped, repeats capped, sampled decoding with several draws.

    python benchmarks/bench_echo_quality.py --corpora ece722,amulius --configs old,new
    python benchmarks/bench_echo_quality.py --corpora sdr --configs new --base-models gemma3-270m

``--curve`` (see :mod:`_curve`) trains the learning curve instead: one corpus, points named
``lever@share[:steps]`` (a share of the train sessions, the same held-out split throughout):

    python benchmarks/bench_echo_quality.py --curve --corpora komodo \
        --points sft@1.0,sft+memory@1.0,sft@0.25,sft+memory+dpo@1.0,sft@1.0:240,sft@0.5
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import _curve

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "echo_quality.json"
PREFIX = (
    "Hosam-Aldeeb__LLM-Based-Extraction-of-Hardware-Security-Knowledge-from-"
    "Unstructured-Community-Discussions__"
)
#: name -> (file, "me" author id), as in the fixtures' README.
CORPORA = {
    "ece722": (PREFIX + "ece722_Oct7-Today_export.json", "277113830809534464"),
    "amulius": (PREFIX + "Amulius_risc-v_Jan2025_export.json", "296272996442570753"),
    "sdr": (PREFIX + "SDRplusplus_dsp_Jan2025_export.json", "274976585650536449"),
    "rinkhals": (PREFIX + "Rinkhals_HardwareHacking_Jan2025_export.json", "207668238182514688"),
    "komodo": ("komodo-dev-general", "365714438864633856"),
}
CONFIGS = {
    "old": {
        "experiment": "demo",
        "pairs": {"drop_placeholder_replies": False, "max_same_reply": 0},
        "evaluation": {"do_sample": False, "repetition_penalty": 1.0, "samples_per_prompt": 1},
    },
    "new": {"experiment": "echo", "pairs": {}, "evaluation": {}},
}
SHOWN = (
    ("verdict", "verdict"),
    ("reply loss", "reply_loss"),
    ("stop rate", "stop_rate"),
    ("distinct-2", "distinct_2"),
    ("top reply share", "top_reply_share"),
    ("looping", "loop_share"),
    ("known-word rate", "known_word_rate"),
    ("copied from prompt", "parrot_share"),
    ("attributed to me", "attributed_share"),
    ("relevance gain (low)", "relevance_gain"),
    ("discriminator AUC", "discriminator_auc"),
)


def export_path(name: str) -> Path:
    """A real export (file or folder) by name, from the repo's fixtures or ../shared."""
    for candidate in (
        ROOT / "echo_pipeline_tests" / "fixtures" / "real",
        ROOT.parent / "shared" / "fixtures" / "real",
    ):
        if (candidate / name).exists():
            return candidate / name
    raise SystemExit(f"{name}: not in echo_pipeline_tests/fixtures/real or ../shared/fixtures/real")


def run_one(corpus: str, config: str, base_model: str, template: str, workdir: Path) -> dict:
    """In this process (a fresh one per run): the whole pipeline, then the report's numbers."""
    from echo_pipeline.infra.layout import Layout
    from echo_pipeline.operations.runner import run_pipeline

    spec = CONFIGS[config]
    export, me = CORPORA[corpus]
    os.environ["ECHO_EXPORT_DIR"] = str(export_path(export))
    os.environ["ECHO_ME"] = me
    run_config = {
        "ops": {
            "conversation_pairs": {"config": {"me": [me], **spec["pairs"]}},
            "evaluation_report": {"config": spec["evaluation"]},
        }
    }
    started = time.perf_counter()
    ok = bool(run_pipeline([template], [spec["experiment"]], run_config=run_config))
    minutes = (time.perf_counter() - started) / 60
    report = Layout.default().report_dir(template, spec["experiment"])
    return collect(report / "metrics.json", ok, minutes)


def collect(metrics_file: Path, ok: bool = True, minutes: float = float("nan")) -> dict:
    """The numbers, verdicts and a few samples of one evaluation report."""
    if not metrics_file.exists():
        return {"ok": False, "minutes": minutes}
    from echo_pipeline.evaluation.echo_quality import verdict

    report = json.loads(metrics_file.read_text(encoding="utf-8"))
    samples = [
        {k: s.get(k) for k in ("prompt", "real", "base", "adapter")} for s in report["samples"][:20]
    ]
    _add_real_stop_rate(report)
    # Judged again with today's thresholds, so rows evaluated on different days compare.
    verdicts = {side: verdict(report["metrics"], side) for side in ("base", "adapter")}
    return {
        "ok": ok,
        "minutes": minutes,
        "metrics": report["metrics"],
        "verdicts": {side: v.label for side, v in verdicts.items()},
        "reasons": {side: list(v.reasons) for side, v in verdicts.items()},
        "samples": samples,
        "training": report["lineage"].get("training", {}),
        "training_results": report["lineage"].get("training_results", {}),
    }


def _add_real_stop_rate(report: dict) -> None:
    """Reports older than the metric: the share of my real replies that fit the bound, from the
    dataset (the same computation as the evaluation's)."""
    if "real_stop_rate" in report["metrics"]:
        return
    import pyarrow.parquet as pq

    frame = pq.read_table(report["lineage"]["dataset_path"]).to_pandas()
    lengths = frame.drop_duplicates("pair_id").set_index("pair_id")["completion_tokens"]
    chosen = lengths.reindex([s["pair_id"] for s in report["samples"]]).dropna()
    bound = report["config"]["generation"]["max_new_tokens"]
    if len(chosen):
        report["metrics"]["real_stop_rate"] = float((chosen <= bound).mean())


def targets(metrics: dict) -> dict[str, bool]:
    """The issue-11 targets, each True when met."""
    m = metrics.get
    out = {}

    def have(*names):
        return all(m(n) is not None for n in names)

    if have("base_reply_loss", "adapter_reply_loss"):
        out["loss >= 20% below base"] = m("adapter_reply_loss") <= 0.8 * m("base_reply_loss")
    if have("adapter_stop_rate"):
        out["stop rate >= 0.95"] = m("adapter_stop_rate") >= 0.95
    if have("adapter_distinct_2", "real_distinct_2"):
        out["distinct-2 >= 0.7x"] = m("adapter_distinct_2") >= 0.7 * m("real_distinct_2")
    if have("adapter_top_reply_share", "real_top_reply_share"):
        out["top share <= 2x"] = m("adapter_top_reply_share") <= max(
            2 * m("real_top_reply_share"), 0.05
        )
    if have("adapter_loop_share"):
        out["looping <= 5%"] = m("adapter_loop_share") <= 0.05
    if have("adapter_known_word_rate", "real_known_word_rate"):
        out["known words >= 0.9x"] = m("adapter_known_word_rate") >= 0.9 * m("real_known_word_rate")
    if have("adapter_attributed_share", "real_attributed_share"):
        out["attributed >= 0.9x"] = m("adapter_attributed_share") >= 0.9 * m(
            "real_attributed_share"
        )
    if have("adapter_relevance_gain_low"):
        out["relevance above shuffled"] = m("adapter_relevance_gain_low") > 0
    if have("adapter_discriminator_auc", "base_discriminator_auc"):
        halfway = (m("base_discriminator_auc") + 0.5) / 2
        out["AUC halfway to 0.5"] = m("adapter_discriminator_auc") <= halfway
    return out


def _cell(metrics: dict, side: str, key: str) -> str:
    value = metrics.get(f"{side}_{key}")
    if value is None:
        return "–"
    if key == "relevance_gain":
        low = metrics.get(f"{side}_relevance_gain_low")
        return f"{value:.3f} ({low:.3f})" if low is not None else f"{value:.3f}"
    return f"{value:.3f}"


def markdown(rows: list[dict]) -> str:
    """One table per corpus: a column per (config, base) run, mine and the base alongside."""
    out = []
    for corpus in dict.fromkeys(r["corpus"] for r in rows):
        runs = [r for r in rows if r["corpus"] == corpus and "metrics" in r["result"]]
        if not runs:
            continue
        bases = list({r["base_model"]: r for r in reversed(runs)}.values())  # one run per base
        head = ["measure", "mine", *(f"base ({r['base_model']})" for r in bases)]
        head += [f"adapter: {r['config']} ({r['base_model']})" for r in runs]
        lines = [f"**{corpus}**", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for label, key in SHOWN:
            if key == "verdict":
                cells = ["", *(r["result"]["verdicts"]["base"] for r in bases)]
                cells += [f"**{r['result']['verdicts']['adapter']}**" for r in runs]
            else:
                first = runs[0]["result"]["metrics"]
                cells = [_cell(first, "real", key)]
                cells += [_cell(r["result"]["metrics"], "base", key) for r in bases]
                cells += [_cell(r["result"]["metrics"], "adapter", key) for r in runs]
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        met = [targets(r["result"]["metrics"]) for r in runs]
        lines.append(
            "| issue-11 targets met | | "
            + " | ".join("" for _ in bases)
            + " | "
            + " | ".join(f"{sum(m.values())}/{len(m)}" for m in met)
            + " |"
        )
        minutes = [f"{r['result']['minutes']:.0f}" for r in runs]
        lines.append(
            "| minutes (train + evaluate) | | "
            + " | ".join("" for _ in bases)
            + " | "
            + " | ".join(minutes)
            + " |"
        )
        out.append("\n".join(lines))
    return "\n\n".join(out)


def print_table(rows: list[dict]) -> None:
    for row in rows:
        result = row["result"]
        head = f"== {row['corpus']} / {row['config']} / {row['base_model']}: "
        if "metrics" not in result:
            print(head + f"FAILED after {result['minutes']:.1f} min")
            continue
        metrics, verdicts = result["metrics"], result["verdicts"]
        print(head + f"{result['minutes']:.1f} min, adapter verdict: {verdicts.get('adapter')}")
        print(f"  {'':24} {'mine':>16} {'base':>16} {'adapter':>16}")
        for label, key in SHOWN:
            if key == "verdict":
                print(
                    f"  {label:24} {'':>16} {verdicts.get('base', '–'):>16} {verdicts.get('adapter', '–'):>16}"
                )
                continue
            print(
                f"  {label:24} {_cell(metrics, 'real', key):>16} {_cell(metrics, 'base', key):>16} "
                f"{_cell(metrics, 'adapter', key):>16}"
            )
        met = targets(metrics)
        print(
            f"  targets met {sum(met.values())}/{len(met)}; missed: "
            + (", ".join(k for k, v in met.items() if not v) or "none")
        )
        for sample in result["samples"][:3]:
            print(
                f"    > {sample['prompt'][:80]!r}\n      mine: {sample['real'][:80]!r}\n"
                f"      adapter: {sample['adapter'][:80]!r}"
            )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--corpora", default=",".join(CORPORA))
    parser.add_argument("--configs", default="old,new")
    parser.add_argument("--base-models", default="smollm2-135m-instruct")
    parser.add_argument("--template", default="chatml")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/echo-bench"))
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument(
        "--one", nargs=3, metavar=("CORPUS", "CONFIG", "BASE"), help=argparse.SUPPRESS
    )
    parser.add_argument(
        "--collect",
        nargs=4,
        metavar=("CORPUS", "CONFIG", "BASE", "MINUTES"),
        help="Record a finished run of this script's --workdir again (e.g. after a crash).",
    )
    parser.add_argument(
        "--markdown", action="store_true", help="Print the recorded results as Markdown tables."
    )
    parser.add_argument("--curve", action="store_true", help="Train the learning curve (_curve).")
    parser.add_argument("--points", default=",".join(_curve.DEFAULT_POINTS))
    parser.add_argument("--one-point", nargs=2, metavar=("CORPUS", "POINT"), help=argparse.SUPPRESS)
    parser.add_argument(
        "--plot",
        type=Path,
        help="With --curve: draw the recorded curve to this PNG, train nothing.",
    )
    args = parser.parse_args()

    if args.curve and args.markdown:
        print(_curve.markdown(args.corpora.split(",")[0]))
        return 0
    if args.curve and args.plot:
        _curve.plot(args.corpora.split(",")[0], args.plot)
        return 0
    if args.one_point:
        corpus, point = args.one_point
        export, me = CORPORA[corpus]
        metrics, ok, minutes = _curve.run_point(export_path(export), me, point, args.template)
        print("RESULT " + json.dumps(collect(metrics, ok, minutes), default=str))
        return 0
    if args.curve:
        for corpus in args.corpora.split(","):
            _curve.run_curve(corpus, args.points.split(","), args, __file__)
        return 0

    if args.markdown:
        print(markdown(json.loads(args.out.read_text())))
        return 0

    if args.collect:
        corpus, config, base, minutes = args.collect
        folder = args.workdir / f"{corpus}-{config}-{base}" / "data" / "evaluation_report"
        metrics = folder / f"{args.template}__{CONFIGS[config]['experiment']}" / "metrics.json"
        _record(args, corpus, config, base, collect(metrics, True, float(minutes)))
        return 0

    if args.one:
        corpus, config, base = args.one
        print("RESULT " + json.dumps(run_one(corpus, config, base, args.template, args.workdir)))
        return 0

    for base in args.base_models.split(","):
        for corpus in args.corpora.split(","):
            for config in args.configs.split(","):
                folder = args.workdir / f"{corpus}-{config}-{base}"
                subprocess.run(["rm", "-rf", str(folder)], check=True)
                env = os.environ | {
                    "ECHO_DATA_DIR": str(folder / "data"),
                    "DAGSTER_HOME": str(folder / "dagster"),
                    "ECHO_MLRUNS_DIR": str(folder / "mlruns"),
                    "ECHO_BASE_MODEL": base,
                    "ECHO_MODELS_DIR": os.environ.get(
                        "ECHO_MODELS_DIR", str(args.workdir / "models")
                    ),
                }
                print(f"-- {corpus} / {config} / {base} ...", flush=True)
                done = subprocess.run(
                    [
                        sys.executable,
                        __file__,
                        "--one",
                        corpus,
                        config,
                        base,
                        "--template",
                        args.template,
                    ],
                    env=env,
                    capture_output=True,
                    text=True,
                    check=False,
                )
                lines = [x for x in done.stdout.splitlines() if x.startswith("RESULT ")]
                if not lines:
                    sys.stderr.write(done.stdout[-3000:] + done.stderr[-3000:])
                    result = {"ok": False, "minutes": 0.0}
                else:
                    result = json.loads(lines[-1][len("RESULT ") :])
                _record(args, corpus, config, base, result)
    return 0


def _record(args: argparse.Namespace, corpus: str, config: str, base: str, result: dict) -> None:
    """Add (or replace) the row of this corpus/config/base in the results file, and print it."""
    rows = json.loads(args.out.read_text()) if args.out.exists() else []
    row = {
        "corpus": corpus,
        "config": config,
        "base_model": base,
        "template": args.template,
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "load": os.getloadavg()[0],
        "result": result,
    }
    key = (corpus, config, base, args.template)
    rows = [r for r in rows if (r["corpus"], r["config"], r["base_model"], r["template"]) != key]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps([*rows, row], indent=1, ensure_ascii=False, default=str))
    print_table([row])


if __name__ == "__main__":
    sys.exit(main())
