"""The evaluation report: one HTML file a person can open anywhere, and the metrics as JSON.

Self-contained on purpose: CSS inline, plots as base64 PNGs, no scripts, nothing fetched, so
the file works from an MLflow artifact view, an email or a laptop offline. Every piece of chat
text is HTML-escaped: these are other people's messages, and a report must never run them.
Plots use matplotlib's object API (no pyplot), so rendering never touches global state.
"""

from __future__ import annotations

import base64
import html
import io
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from echo_pipeline.evaluation.evaluate import SCORECARD, SIDES, EvaluationResult, adapter_vs_base
from echo_pipeline.infra.storage import write_text

REPORT_FILE = "report.html"
METRICS_FILE = "metrics.json"
COLORS = {
    "real": "#4d4d4d",
    "base": "#e08a2c",
    "adapter": "#2f6fb3",
    "replay": "#8e44ad",
    "memory": "#2a9d8f",
}
LABELS = {
    "real": "my real replies",
    "base": "base model",
    "adapter": "adapter",
    "replay": "replay (my nearest train reply)",
    "memory": "base + memory",
}
EXTRA_COLORS = ("#b5651d", "#6b8e23", "#c71585")


def side_label(side: str) -> str:
    return LABELS.get(side, side)


def side_color(side: str, sides: Sequence[str] = ()) -> str:
    if side in COLORS:
        return COLORS[side]
    unknown = [s for s in sides if s not in COLORS]
    return EXTRA_COLORS[unknown.index(side) % len(EXTRA_COLORS)] if side in unknown else "#999"


STYLE_FEATURES = (
    ("mean words", "mean_words"),
    ("lowercase start", "lowercase_start_rate"),
    ("all-caps words", "all_caps_rate"),
    ("punctuation / char", "punctuation_rate"),
    ("ends with '.'", "ending_period_rate"),
    ("emoji", "emoji_rate"),
    ("distinct words", "distinct_words_ratio"),
    ("distinct-2", "distinct_2"),
)
DISTANCES = (
    ("length KS", "length_ks"),
    ("length Wasserstein (words)", "length_wasserstein"),
    ("lowercase start", "lowercase_start_distance"),
    ("all caps", "all_caps_distance"),
    ("punctuation", "punctuation_distance"),
    ("ending period", "ending_period_distance"),
    ("emoji", "emoji_distance"),
    ("distinct words", "distinct_words_distance"),
    ("top-20 words Jaccard (higher: closer)", "top_words_jaccard"),
    ("char 3-gram cosine (higher: closer)", "char_ngram_cosine"),
    ("style distance (mean)", "style_distance"),
)

CSS = """
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;color:#1d1d1f;margin:0;background:#f6f7f9}
main{max-width:1100px;margin:0 auto;padding:24px}
h1{margin:0 0 4px;font-size:26px}h2{margin:28px 0 10px;font-size:19px;border-bottom:1px solid #dde;padding-bottom:4px}
.sub{color:#555;margin:0 0 16px}
table{border-collapse:collapse;width:100%;background:#fff;font-size:14px}
th,td{border:1px solid #dde;padding:6px 8px;text-align:left;vertical-align:top}
th{background:#eef1f5}
td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
td.text{white-space:pre-wrap;word-break:break-word;max-width:260px}
.better{background:#e3f4e3}.worse{background:#fbe6e4}
.verdict li{margin:2px 0}.ok{color:#1b7a1b}.no{color:#b3261e}
figure{margin:0;background:#fff;border:1px solid #dde;padding:8px}
figure img{max-width:100%;height:auto;display:block}
figcaption{color:#555;font-size:13px;margin-top:4px}
.plots{display:grid;grid-template-columns:repeat(auto-fit,minmax(460px,1fr));gap:12px}
dl{display:grid;grid-template-columns:max-content 1fr;gap:4px 16px;background:#fff;padding:12px;border:1px solid #dde}
dt{font-weight:600}dd{margin:0;word-break:break-all}
.tag{display:inline-block;font-size:12px;padding:0 6px;border-radius:8px;background:#eef1f5;color:#333}
.muted{color:#777}
"""


@dataclass(frozen=True)
class ReportFiles:
    html: Path
    metrics: Path


def esc(value: Any) -> str:
    """Text for HTML content and attribute values: every markup character escaped."""
    return html.escape("" if value is None else str(value), quote=True)


def fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, float | np.floating):
        if not np.isfinite(value):
            return str(value)
        return f"{value:.{digits}f}" if abs(value) < 1e4 else f"{value:.4g}"
    return str(value)


# --- plots ----------------------------------------------------------------------------------


def figure_png(fig: Any) -> str:
    """A matplotlib Figure as a base64 PNG data URI."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def new_figure(width: float = 6.4, height: float = 3.6) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def loss_curves_png(
    history: Mapping[str, Sequence[tuple[int, float]]], metrics: Mapping[str, float]
) -> str | None:
    """Training loss and validation loss by step, with the held-out reply losses as lines."""
    if not any(history.get(key) for key in ("loss", "eval_loss")):
        return None
    fig = new_figure()
    ax = fig.add_subplot()
    curves = (
        ("loss", "train loss", "-", "#8c8c8c"),
        ("eval_loss", "validation loss", "o-", "#6a3d9a"),
    )
    for key, label, style, color in curves:
        points = sorted(history.get(key) or [])
        if points:
            ax.plot(
                [s for s, _ in points],
                [v for _, v in points],
                style,
                label=label,
                color=color,
                markersize=4,
            )
    for side in ("base", "adapter"):
        value = metrics.get(f"{side}_reply_loss")
        if value is not None:
            ax.axhline(
                value, linestyle="--", color=COLORS[side], label=f"{LABELS[side]}: held-out loss"
            )
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("reply-token cross-entropy")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return figure_png(fig)


def length_histogram_png(arrays: Mapping[str, np.ndarray], sides: Sequence[str] = SIDES) -> str:
    """Words per reply: my real replies against every other side's."""
    fig = new_figure()
    ax = fig.add_subplot()
    top = max(
        [1.0, *(float(arrays[f"{s}_words"].max()) for s in sides if len(arrays[f"{s}_words"]))]
    )
    bins = np.arange(0, top + 2) - 0.5 if top <= 40 else np.linspace(0, top + 1, 31)
    for side in sides:
        values = arrays[f"{side}_words"]
        if len(values):
            ax.hist(
                values,
                bins=bins,
                histtype="step",
                linewidth=2,
                color=side_color(side, sides),
                label=side_label(side),
            )
    ax.set_xlabel("words per reply")
    ax.set_ylabel("replies")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return figure_png(fig)


def _grouped_bars(
    ax: Any, labels: Sequence[str], series: Mapping[str, Sequence[float | None]]
) -> None:
    x = np.arange(len(labels))
    width = 0.8 / max(1, len(series))
    for i, (side, values) in enumerate(series.items()):
        heights = [np.nan if v is None else v for v in values]
        ax.bar(
            x + (i - (len(series) - 1) / 2) * width,
            heights,
            width,
            color=side_color(side, list(series)),
            label=side_label(side),
        )
    ax.set_xticks(x, labels, rotation=25, ha="right", fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8, ncols=len(series), loc="lower center", bbox_to_anchor=(0.5, 1.0))


def style_bars_png(metrics: Mapping[str, float], sides: Sequence[str] = SIDES) -> str:
    """Style rates side by side (all in [0, 1]; mean words on its own axis)."""
    fig = new_figure(7.5, 3.8)
    left, right = fig.subplots(1, 2, width_ratios=[6, 1])
    rates = [(label, key) for label, key in STYLE_FEATURES if key != "mean_words"]
    _grouped_bars(
        left,
        [label for label, _ in rates],
        {s: [metrics.get(f"{s}_{k}") for _, k in rates] for s in sides},
    )
    left.set_ylim(0, 1.05)
    _grouped_bars(right, ["mean words"], {s: [metrics.get(f"{s}_mean_words")] for s in sides})
    right.get_legend().remove()
    return figure_png(fig)


def headline_bars_png(metrics: Mapping[str, float], sides: Sequence[str] = SIDES) -> str:
    """The scorecard as bars: what "better" means is in each label."""
    fig = new_figure(7.5, 3.8)
    ax = fig.add_subplot()
    shown = [
        ("stop rate ↑", "stop_rate"),
        ("attributed to me ↑", "attributed_share"),
        ("style distance ↓", "style_distance"),
        ("similarity to my reply ↑", "similarity_to_real"),
        ("similarity to prompt", "similarity_to_prompt"),
        ("distinct-2 ↑", "distinct_2"),
        ("in context ↑", "in_context"),
        ("memorised", "memorised_share"),
        ("known bigrams", "known_bigram_rate"),
    ]
    _grouped_bars(
        ax,
        [label for label, _ in shown],
        {s: [metrics.get(f"{s}_{k}") for _, k in shown] for s in sides},
    )
    ax.set_ylim(0, 1.05)
    return figure_png(fig)


def attribution_png(arrays: Mapping[str, np.ndarray], sides: Sequence[str] = SIDES) -> str | None:
    """P(me) per reply, per side: how sure the classifier is that each reply is mine."""
    if not all(f"{s}_p_me" in arrays for s in sides):
        return None
    fig = new_figure()
    ax = fig.add_subplot()
    bins = np.linspace(0, 1, 21)
    for side in sides:
        ax.hist(
            arrays[f"{side}_p_me"],
            bins=bins,
            histtype="step",
            linewidth=2,
            color=side_color(side, sides),
            label=side_label(side),
        )
    ax.axvline(0.5, color="#999", linestyle=":")
    ax.set_xlabel("P(me) from the attribution classifier")
    ax.set_ylabel("replies")
    ax.legend(fontsize=8)
    return figure_png(fig)


# --- HTML -----------------------------------------------------------------------------------


def _table(headers: Sequence[str], rows: Iterable[Sequence[str]], css_class: str = "") -> str:
    """A table from already-escaped cell HTML (cells are ``<td>`` content)."""
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = "".join(f"<tr>{''.join(rows_cells)}</tr>" for rows_cells in rows)
    return f'<table class="{esc(css_class)}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _num(value: Any, css: str = "", interval: tuple[Any, Any] | None = None) -> str:
    shown = esc(fmt(value))
    if interval is not None and None not in interval:
        low, high = interval
        shown += f'<br><span class="muted">[{esc(fmt(low, 2))}, {esc(fmt(high, 2))}]</span>'
    return f'<td class="num {css}">{shown}</td>'


def _interval(metrics: Mapping[str, float], side: str, name: str) -> tuple[Any, Any] | None:
    """The 95 % bootstrap interval of ``side_name``, when the evaluation computed one."""
    low, high = metrics.get(f"{side}_{name}_low"), metrics.get(f"{side}_{name}_high")
    return None if low is None or high is None else (low, high)


def direction_label(better: str | None) -> str:
    if better == "mine":
        return "closer to mine is better"
    return f"{better} is better" if better else "compare with my replies"


def _adapter_wins(better: str | None, base: Any, adapter: Any, real: Any) -> bool | None:
    """Is the adapter's value better than the base's (None: no direction, or a tie)?"""
    if not better or base is None or adapter is None or base == adapter:
        return None
    if better == "mine":
        return None if real is None else abs(adapter - real) < abs(base - real)
    return adapter < base if better == "lower" else adapter > base


def _scorecard(metrics: Mapping[str, float], sides: Sequence[str] = SIDES) -> str:
    """One row per measure, one column per side; baselines after the adapter."""
    rows = []
    for label, name, better, shown in SCORECARD:
        values = {s: metrics.get(f"{s}_{name}") for s in sides}
        if all(values[s] is None for s in sides if s != "real" or "real" in shown):
            continue
        wins = _adapter_wins(better, values.get("base"), values.get("adapter"), values.get("real"))
        cells = [f"<td>{esc(label)} <span class='tag'>{esc(direction_label(better))}</span></td>"]
        for side in sides:
            if side == "real" and "real" not in shown:
                cells.append('<td class="num muted">–</td>')
                continue
            css = "" if side != "adapter" or wins is None else ("better" if wins else "worse")
            cells.append(_num(values[side], css, _interval(metrics, side, name)))
        rows.append(cells)
    table = _table(["metric", *(side_label(s) for s in sides)], rows, "scorecard")
    return table + (
        "<p class='muted'>[low, high]: 95 % bootstrap interval over the held-out prompts. "
        "Baselines (e.g. replay: my nearest train reply, verbatim) are scored and judged like "
        "the models: a clone must beat them, not only the base.</p>"
    )


def _verdict(result: EvaluationResult) -> str:
    """The adapter's verdict in one coloured word, why, and the base's verdict beside it."""
    metrics = result.metrics
    parts = []
    for side in ("adapter", "base", *result.baselines):
        judged = result.verdicts.get(side)
        if judged is None:
            continue
        css = "ok" if judged.ok else "no"
        size = "22px" if side == "adapter" else "15px"
        parts.append(
            f'<p style="font-size:{size}"><b>{esc(side_label(side))}:</b> '
            f'<span class="{css}"><b>{esc(judged.label)}</b></span></p>'
        )
        if judged.reasons:
            parts.append(
                "<ul class='verdict'>"
                + "".join(f"<li class='no'>{esc(reason)}</li>" for reason in judged.reasons)
                + "</ul>"
            )
    if "adapter" in result.verdicts:
        passed = [g for g in result.verdicts["adapter"].gates if g[2]]
        if passed:
            parts.append(
                "<details><summary>Gates the adapter passed</summary><ul class='verdict'>"
                + "".join(f"<li class='ok'>{esc(g[0])}: {esc(g[1])}</li>" for g in passed)
                + "</ul></details>"
            )
    names = {name: label for label, name, _, _ in SCORECARD}
    ahead = adapter_vs_base(metrics)
    if ahead:
        wins = [names[n].lower() for n, won in ahead.items() if won]
        parts.append(
            f"<p class='muted'>Adapter ahead of the base on {len(wins)} of {len(ahead)} scorecard "
            f"measures ({esc(', '.join(wins) or 'none')}). The verdict, not this count, ranks "
            "adapters: a collapsed clone can win most small measures.</p>"
        )
    human = result.lineage.get("human_reader")
    if human:  # the judgements of "which one is me?" (echo-pipeline chat --web) so far
        parts.append(f"<p id='human-reader'><b>A person:</b> {esc(human['sentence'])}</p>")
    accuracy = metrics.get("attribution_heldout_balanced_accuracy")
    if accuracy is not None:
        parts.append(
            f"<p class='muted'>The attribution classifier tells my held-out replies from the others' "
            f"with balanced accuracy {esc(fmt(accuracy))} (0.5 is chance).</p>"
        )
    return "".join(parts)


def _samples(result: EvaluationResult) -> str:
    rows = []
    for row in result.samples.itertuples(index=False):
        record = row._asdict()
        cells = [
            f'<td class="text"><span class="tag">{esc(record.get("prompt_author", ""))}</span>\n{esc(record["prompt"])}</td>',
        ]
        for side in result.sides:
            extras = []
            if f"{side}_p_me" in record:
                extras.append(f"P(me) {fmt(record[f'{side}_p_me'], 2)}")
            if side != "real" and not record.get(f"{side}_stopped", True):
                extras.append("no EOS")
            tag = f'\n<span class="tag">{esc(" · ".join(extras))}</span>' if extras else ""
            text = (
                esc(record[side])
                if str(record[side]).strip()
                else '<span class="muted">(empty)</span>'
            )
            cells.append(f'<td class="text">{text}{tag}</td>')
        rows.append(cells)
    headers = ["prompt", *("my real reply" if s == "real" else side_label(s) for s in result.sides)]
    return _table(headers, rows, "samples")


def _style_details(metrics: Mapping[str, float], sides: Sequence[str] = SIDES) -> str:
    features = _table(
        ["feature", *(side_label(s) for s in sides)],
        (
            [f"<td>{esc(label)}</td>", *(_num(metrics.get(f"{s}_{key}")) for s in sides)]
            for label, key in STYLE_FEATURES
        ),
        "style",
    )
    others = [s for s in sides if s != "real"]
    distances = _table(
        ["distance to my real replies", *(side_label(s) for s in others)],
        (
            [f"<td>{esc(label)}</td>", *(_num(metrics.get(f"{s}_{key}")) for s in others)]
            for label, key in DISTANCES
        ),
        "distances",
    )
    return features + "<p></p>" + distances


def _definition_list(items: Iterable[tuple[str, str]]) -> str:
    """``items`` are (label, already-escaped HTML) pairs."""
    return "<dl>" + "".join(f"<dt>{esc(k)}</dt><dd>{v}</dd>" for k, v in items) + "</dl>"


def _lineage(result: EvaluationResult, run_url: str | None, evaluation_run_url: str | None) -> str:
    lineage = result.lineage
    base = lineage.get("base_model") or {}
    matches = lineage.get("dataset_matches_adapter")
    digest = esc(lineage.get("dataset_digest"))
    if matches is False:
        digest += f' <span class="no">(the adapter was trained on {esc(lineage.get("adapter_dataset_digest"))})</span>'
    items = [
        (
            "base model",
            f"{esc(base.get('source'))} <span class='muted'>{esc(base.get('fingerprint'))}</span>",
        ),
        *(
            [("base chosen by auto", esc(lineage["base_model_choice"]))]
            if lineage.get("base_model_choice")
            else []
        ),
        ("template", esc(result.template)),
        ("experiment", esc(result.experiment)),
        ("dataset", esc(lineage.get("dataset_path"))),
        ("dataset digest", digest),
        ("held-out split", esc(lineage.get("heldout_split"))),
        ("adapter", esc(lineage.get("adapter_dir"))),
        ("adapter fingerprint", esc(lineage.get("adapter_fingerprint"))),
        ("training run", _link(run_url, lineage.get("training_run_id"))),
        (
            "code",
            esc(f"echo_pipeline {lineage.get('package_version')} @ {lineage.get('git_commit')}"),
        ),
    ]
    if evaluation_run_url:
        items.append(("evaluation run", _link(evaluation_run_url, evaluation_run_url)))
    return _definition_list(items)


def _link(url: str | None, text: Any) -> str:
    if not url:
        return esc(text) if text else '<span class="muted">not recorded</span>'
    return f'<a href="{esc(url)}">{esc(text)}</a>'


def _figure_html(src: str | None, caption: str) -> str:
    if src is None:
        return f'<figure><p class="muted">{esc(caption)}: no data.</p></figure>'
    return f'<figure><img src="{src}" alt="{esc(caption)}"><figcaption>{esc(caption)}</figcaption></figure>'


def render_report(
    result: EvaluationResult,
    training_history: Mapping[str, Sequence[tuple[int, float]]] | None = None,
    *,
    training_run_url: str | None = None,
    evaluation_run_url: str | None = None,
) -> str:
    """The report as one HTML string."""
    metrics, arrays, sides = result.metrics, result.arrays(), result.sides
    figures = [
        (
            loss_curves_png(training_history or {}, metrics),
            "Training curves (MLflow) and held-out reply loss",
        ),
        (length_histogram_png(arrays, sides), "Reply length in words"),
        (headline_bars_png(metrics, sides), "Headline metrics"),
        (style_bars_png(metrics, sides), "Style features"),
        (attribution_png(arrays, sides), "Authorship attribution: P(me) per reply"),
    ]
    generation = result.config.get("generation", {})
    settings = ", ".join(f"{k}={v}" for k, v in generation.items())
    draws = (
        f"{result.config.get('samples_per_prompt', 1)} sampled replies per prompt for the adapter, "
        f"{result.config.get('base_samples_per_prompt', 1)} for the base (draw k seeded seed+k); "
        "reply loss is teacher-forced, no decoding"
        if generation.get("do_sample")
        else "greedy decoding (one reply per prompt)"
    )
    title = f"Does it sound like me? {result.template} / {result.experiment}"
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{esc(title)}</title>
<style>{CSS}</style>
</head>
<body>
<main>
<h1>Does it sound like me?</h1>
<p class="sub">Adapter <b>{esc(result.template)}</b> / <b>{esc(result.experiment)}</b> against its base model on
{esc(fmt(metrics.get("evaluated_prompts"), 0))} held-out prompts ({esc(result.lineage.get("heldout_split"))} split,
{esc(fmt(metrics.get("heldout_pairs"), 0))} pairs), same template. Generation: {esc(settings)}; {esc(draws)}. Samples below show the first draw.</p>
<section id="verdict"><h2>Verdict</h2>{_verdict(result)}</section>
<section id="scorecard"><h2>Scorecard</h2>{_scorecard(metrics, sides)}</section>
<section id="plots"><h2>Plots</h2><div class="plots">{"".join(_figure_html(src, caption) for src, caption in figures)}</div></section>
<section id="samples"><h2>Samples</h2>{_samples(result)}</section>
<section id="style"><h2>Style in detail</h2>{_style_details(metrics, sides)}</section>
<section id="lineage"><h2>Lineage</h2>{_lineage(result, training_run_url, evaluation_run_url)}</section>
</main>
</body>
</html>
"""


def write_report(
    result: EvaluationResult,
    out_dir: str | Path,
    training_history: Mapping[str, Sequence[tuple[int, float]]] | None = None,
    *,
    training_run_url: str | None = None,
    evaluation_run_url: str | None = None,
) -> ReportFiles:
    """``report.html`` and ``metrics.json`` in ``out_dir``, each written atomically."""
    out_dir = Path(out_dir)
    html_path = write_text(
        render_report(
            result,
            training_history,
            training_run_url=training_run_url,
            evaluation_run_url=evaluation_run_url,
        ),
        out_dir / REPORT_FILE,
    )
    payload = result.to_json() | {
        "training_run_url": training_run_url,
        "evaluation_run_url": evaluation_run_url,
    }
    json_path = write_text(
        json.dumps(payload, indent=2, ensure_ascii=False, default=str), out_dir / METRICS_FILE
    )
    return ReportFiles(html_path, json_path)
