"""The learning curve of ``bench_echo_quality.py --curve``: what data, memory, preference
training and more steps buy on one long real channel.

A point is ``lever@share[:steps]``:

* ``lever``: ``sft`` (the ``echo`` recipe), ``sft+memory`` (the same, with my two most similar
  past exchanges in every prompt, ``memory_k=2``), or either followed by ``+dpo`` (the
  preference stage on that supervised adapter, against its own sampled replies);
* ``share``: the share of the train sessions kept (``conversation_pairs.train_share``: nested,
  the held-out split unchanged, so every point is judged on the same prompts);
* ``steps``: the supervised budget (``max_steps_cap``; the recipe's 120 when left out);
* ``/key=value;...`` (optional): decoding overrides (``penalty_scope=reply;temperature=1.0``)
  for the report, and for the preference stage's sampling on a ``+dpo`` point.

Each supervised point runs the whole pipeline through the shell runner (real Dagster, real
MLflow, real training) in a fresh folder of its own. A ``+dpo`` point and a point with decoding
overrides run in their supervised point's folder, on the adapter it trained (run that point
first): the first materialises the preference assets, the second the report again. The report's numbers, plus the training's own (steps, epochs, tokens, validation loss per
evaluation), go to ``benchmarks/results/echo_curve.json``; ``--plot`` draws them.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

DEFAULT_POINTS = (
    "sft@1.0",
    "sft+memory@1.0",
    "sft@0.25",
    "sft+memory+dpo@1.0",
    "sft@1.0:240",
    "sft@0.5",
)
#: The report's settings for every point: the ``echo`` defaults but 64 held-out prompts (two
#: draws each), so a point costs about 4 minutes of evaluation here, not 6.
CURVE_EVALUATION = {"num_prompts": 64}
#: The preference stage on a curve point: 64 train prompts, two draws each, one pass (16 DPO
#: steps of 8 pairs).
CURVE_PREFERENCE = {"max_prompts": 64, "samples_per_prompt": 2, "epochs": 1.0, "max_steps": 0}
MEMORY_K = 2
RESULTS = Path(__file__).resolve().parent / "results" / "echo_curve.json"


@dataclass(frozen=True)
class Point:
    lever: str
    share: float
    steps: int  # 0: the recipe's cap
    decode: tuple[tuple[str, str], ...] = ()  # evaluation (and DPO sampling) overrides

    @classmethod
    def parse(cls, text: str) -> Point:
        text, _, decode = text.partition("/")
        lever, _, rest = text.partition("@")
        share, _, steps = rest.partition(":")
        if lever.removesuffix("+dpo") not in ("sft", "sft+memory") or not share:
            raise SystemExit(
                f"bad curve point {text!r}: lever@share[:steps][/key=value;...], "
                "lever sft[+memory][+dpo]"
            )
        pairs = tuple(tuple(kv.split("=", 1)) for kv in decode.split(";") if kv)
        if any(len(kv) != 2 for kv in pairs):
            raise SystemExit(f"bad decoding overrides {decode!r}: key=value;...")
        return cls(lever, float(share), int(steps or 0), pairs)  # type: ignore[arg-type]

    @property
    def supervised(self) -> Point:
        return Point(self.lever.removesuffix("+dpo"), self.share, self.steps)

    @property
    def dpo(self) -> bool:
        return self.lever.endswith("+dpo")

    @property
    def overrides(self) -> dict:
        """The decoding overrides as run config values (numbers as numbers)."""
        values = {}
        for key, text in self.decode:
            try:
                values[key] = json.loads(text)
            except json.JSONDecodeError:
                values[key] = text
        return values

    def __str__(self) -> str:
        steps = f":{self.steps}" if self.steps else ""
        decode = "/" + ";".join(f"{k}={v}" for k, v in self.decode) if self.decode else ""
        return f"{self.lever}@{self.share:g}{steps}{decode}"


def run_config(point: Point, me: str) -> dict:
    ops = {
        "conversation_pairs": {"config": {"me": [me], "train_share": point.share}},
        "template_dataset": {"config": {"memory_k": MEMORY_K if "memory" in point.lever else 0}},
        "evaluation_report": {"config": CURVE_EVALUATION},
    }
    if point.steps:
        ops["lora_adapter"] = {"config": {"max_steps_cap": point.steps}}
    return {"ops": ops}


def run_point(export: Path, me: str, text: str, template: str) -> tuple[Path, bool, float]:
    """In this process (a fresh one per point, in its folder): the pipeline, then the
    preference stage for a ``+dpo`` point. Returns (the report's metrics file, ok, minutes)."""
    from echo_pipeline.infra.layout import Layout
    from echo_pipeline.operations.runner import run_pipeline

    point = Point.parse(text)
    os.environ["ECHO_EXPORT_DIR"] = str(export)
    os.environ["ECHO_ME"] = me
    started = time.perf_counter()
    if point.dpo or point.decode:  # on its supervised point's adapter, trained before it
        ok = (Layout.default().adapter_dir(template, "echo") / "adapter_config.json").exists()
    else:
        ok = bool(run_pipeline([template], ["echo"], run_config=run_config(point.supervised, me)))
    layout = Layout.default()
    metrics = layout.report_dir(template, "echo") / "metrics.json"
    if ok and point.dpo:
        ok, metrics = _preference(template, layout, point.overrides)
    elif ok and point.decode:
        ok = _materialise(template, (("evaluation_report", CURVE_EVALUATION | point.overrides),))
    return metrics, ok, (time.perf_counter() - started) / 60


def _preference(template: str, layout, overrides: dict) -> tuple[bool, Path]:
    """The preference stage on the point's supervised adapter, sampling and judged with
    ``overrides`` of the decoding."""
    from echo_pipeline.definitions import preference_paths

    stages = (
        ("preference_pairs", CURVE_PREFERENCE | overrides),
        ("preference_adapter", CURVE_PREFERENCE | overrides),
        ("preference_report", CURVE_EVALUATION | overrides),
    )
    ok = _materialise(template, stages)
    return ok, preference_paths(layout, template, "echo")["report"] / "metrics.json"


def _materialise(template: str, stages: tuple[tuple[str, dict], ...]) -> bool:
    """Each (asset, config) of ``stages`` in turn on the echo adapter's partition."""
    import dagster as dg

    from echo_pipeline.definitions import ALL_ASSETS, ALL_CHECKS, adapter_key, build_resources
    from echo_pipeline.operations.runner import ensure_dagster_home

    ensure_dagster_home()
    key = adapter_key(template, "echo")
    for asset, config in stages:
        result = dg.materialize(
            [*ALL_ASSETS, *ALL_CHECKS],
            selection=[asset],
            partition_key=key,
            resources=build_resources(),
            instance=dg.DagsterInstance.get(),
            run_config={"ops": {asset: {"config": config}}},
            raise_on_error=False,
        )
        print(f"{asset}: {'ok' if result.success else 'FAILED'}", flush=True)
        if not result.success:
            return False
    return True


def run_curve(corpus: str, points: list[str], args, script: str) -> None:
    """Each point in a subprocess of its own, recorded as soon as it ends."""
    for text in points:
        point = Point.parse(text)
        folder = args.workdir / f"curve-{corpus}-{point.supervised}"
        if not point.dpo and not point.decode:
            subprocess.run(["rm", "-rf", str(folder)], check=True)
        env = os.environ | {
            "ECHO_DATA_DIR": str(folder / "data"),
            "DAGSTER_HOME": str(folder / "dagster"),
            "ECHO_MLRUNS_DIR": str(folder / "mlruns"),
            "ECHO_BASE_MODEL": os.environ.get("ECHO_BASE_MODEL", "smollm2-135m-instruct"),
        }
        print(f"-- {corpus} {point} ...", flush=True)
        folder.mkdir(parents=True, exist_ok=True)
        template = ("--template", args.template)
        log = folder / f"point-{str(point).replace('/', '~')}.log"  # followed with tail -f
        with log.open("w", encoding="utf-8") as out:
            subprocess.run(
                [sys.executable, script, "--one-point", corpus, str(point), *template],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                check=False,
            )
        text_out = log.read_text(encoding="utf-8")
        lines = [x for x in text_out.splitlines() if x.startswith("RESULT ")]
        if not lines:
            sys.stderr.write(text_out[-3000:])
            result = {"ok": False}
        else:
            result = json.loads(lines[-1][len("RESULT ") :])
        record(corpus, point, result, folder)


def record(corpus: str, point: Point, result: dict, folder: Path) -> None:
    rows = json.loads(RESULTS.read_text()) if RESULTS.exists() else []
    names = _speaker_names(folder)
    rows = [r for r in rows if _key(r) != (corpus, str(point), names)]
    rows.append(
        {
            "corpus": corpus,
            "point": str(point),
            "speaker_names": names,
            "lever": point.lever,
            "share": point.share,
            "steps": point.steps or 120,
            "train_pairs": _train_pairs(folder),
            "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "load": os.getloadavg()[0],
            "result": result,
        }
    )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(rows, indent=1, ensure_ascii=False, default=str))
    metrics = result.get("metrics", {})
    print(
        f"   {point}: ok={result.get('ok')} {result.get('minutes', float('nan')):.1f} min "
        f"verdict={result.get('verdicts', {}).get('adapter')} "
        f"auc={metrics.get('adapter_discriminator_auc')} loss={metrics.get('adapter_reply_loss')}",
        flush=True,
    )


def _key(row: dict) -> tuple:
    return row["corpus"], row["point"], row.get("speaker_names", False)


def _speaker_names(folder: Path) -> bool:
    """Whether the point's dataset named every speaker (``group_chat`` in its manifest): the
    points before that default are kept beside the ones after it."""
    manifests = sorted((folder / "data" / "template_dataset").glob("*.manifest.json"))
    return any(json.loads(m.read_text()).get("group_chat", False) for m in manifests)


def _label(row: dict) -> str:
    return row["point"] + (" names" if row.get("speaker_names") else "")


def _train_pairs(folder: Path) -> int | None:
    pairs = folder / "data" / "conversation_pairs.parquet"
    if not pairs.exists():
        return None
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    split = pq.read_table(pairs, columns=["split"]).column("split")
    return int(pc.sum(pc.equal(split, "train")).as_py())


#: (metric suffix, axis label, the target's direction) per panel of the plot.
PANELS = (
    ("hardest_discriminator_auc", "discriminator AUC, harder of two (0.5: can't tell)"),
    ("reply_loss", "held-out reply loss (nats/token)"),
    ("in_context", "in-context: picks its own prompt's reply (real sets the bar)"),
)
LEVER_STYLE = {"sft": "o-", "sft+memory": "s-", "sft+dpo": "^--", "sft+memory+dpo": "D--"}


def plot(corpus: str, out: Path) -> None:
    """One row of panels against train pairs: a line per lever at the recipe's budget, the
    bigger budgets and other decodings as stars, the base, replay and my real replies as flat
    lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in json.loads(RESULTS.read_text()) if r["corpus"] == corpus]
    rows = [r for r in rows if r["result"].get("metrics") and r["train_pairs"]]
    fig, axes = plt.subplots(1, len(PANELS), figsize=(5.2 * len(PANELS), 6.0))
    for ax, (suffix, label) in zip(axes, PANELS, strict=True):
        for (lever, style), names in itertools.product(LEVER_STYLE.items(), (False, True)):
            points = sorted(
                (r["train_pairs"], r["result"]["metrics"].get(f"adapter_{suffix}"))
                for r in rows
                if r["lever"] == lever
                and r["steps"] == 120
                and "/" not in r["point"]
                and r.get("speaker_names", False) == names
            )
            points = [(x, y) for x, y in points if y is not None]
            if points:
                line = f"{lever}{' names' if names else ''} (120 steps)"
                fill = None if names else "none"  # hollow: before every speaker was named
                ax.plot(*zip(*points, strict=True), style, label=line, mfc=fill)
        for r in rows:
            value = r["result"]["metrics"].get(f"adapter_{suffix}")
            if (r["steps"] != 120 or "/" in r["point"]) and value is not None:
                ax.plot(r["train_pairs"], value, "*", ms=12, label=_label(r))
        reference = rows[0]["result"]["metrics"]
        for side, colour in (("base", "grey"), ("replay", "tab:red"), ("real", "black")):
            value = reference.get(f"{side}_{suffix}")
            if value is not None:
                ax.axhline(value, color=colour, ls=":", lw=1.2, label=side)
        if suffix == "hardest_discriminator_auc" and "base_" + suffix in reference:
            limit = (reference["base_" + suffix] + 0.5) / 2  # the verdict's: halfway to 0.5
            ax.axhline(limit, color="tab:green", ls="--", lw=1.2, label="'sounds like you' below")
        ax.set_xlabel("train pairs")
        ax.set_title(label, fontsize=10)
        ax.grid(alpha=0.3)
    legend: dict[str, object] = {}  # one legend under the panels: the same marks in each
    for ax in axes:
        for handle, name in zip(*ax.get_legend_handles_labels(), strict=True):
            legend.setdefault(name, handle)
    fig.legend(legend.values(), legend.keys(), loc="lower center", ncol=3, fontsize=8)
    levers = sorted({r["lever"] for r in rows})
    fig.suptitle(f"{corpus}: what each lever bought ({', '.join(levers)}; SmolLM2-135M, chatml)")
    rows_of_legend = -(-len(legend) // 3)
    fig.tight_layout(rect=(0, 0.045 * rows_of_legend + 0.02, 1, 1))
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)


def markdown(corpus: str) -> str:
    """The recorded points of ``corpus`` as RESULTS.md's table (base and replay from the
    first point: the same held-out split and prompts for all)."""
    rows = [r for r in json.loads(RESULTS.read_text()) if r["corpus"] == corpus]
    rows = [r for r in rows if r["result"].get("metrics")]
    columns = (
        ("reply loss", "reply_loss", 3),
        ("AUC (harder)", "hardest_discriminator_auc", 3),
        ("in-context", "in_context", 3),
        ("known bigrams", "known_bigram_rate", 3),
        ("stop rate", "stop_rate", 2),
    )

    def cells(metrics: dict, side: str) -> list[str]:
        values = [metrics.get(f"{side}_{key}") for _, key, _ in columns]
        return [
            "–" if v is None else f"{v:.{digits}f}"
            for v, (_, _, digits) in zip(values, columns, strict=True)
        ]

    head = ["point", "train pairs", *(c[0] for c in columns), "verdict", "minutes"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    first = rows[0]["result"]["metrics"] if rows else {}
    for side, label in (("real", "my real replies"), ("base", "base"), ("replay", "replay")):
        lines.append(f"| {label} | | " + " | ".join(cells(first, side)) + " | | |")
    for r in rows:
        result = r["result"]
        if r["lever"] == "sft+memory":  # the base prompted with the same examples, untrained
            lines.append(
                f"| base + memory ({_label(r)}) | | "
                + " | ".join(cells(result["metrics"], "base"))
                + f" | {result['verdicts']['base']} | |"
            )
        lines.append(
            f"| {_label(r)} | {r['train_pairs']} | "
            + " | ".join(cells(result["metrics"], "adapter"))
            + f" | {result['verdicts']['adapter']} | {result['minutes']:.0f} |"
        )
    return "\n".join(lines)
