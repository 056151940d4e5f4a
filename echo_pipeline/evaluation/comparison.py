"""The leaderboard: every adapter (template x experiment) and its latest evaluation, from MLflow.

One row per adapter partition: its latest finished training run and latest finished evaluation
run. Adapters are ranked by their verdict first ("sounds like you" above "unlike you" above
"off-topic", "parroting", "babbling", "collapsed"; not evaluated last), then by the mean of
their ranks on the headline numbers (attribution, style distance, held-out reply loss, stop
rate, similarity to my reply): a collapsed clone cannot climb the board by winning many small
measures. A row whose evaluation is older than its adapter is marked stale.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from echo_pipeline.evaluation.report import CSS, esc, figure_png, fmt, new_figure
from echo_pipeline.evaluation.runs import EVALUATION, RUN_KIND_TAG, TRAINING_RUN_TAG
from echo_pipeline.infra.storage import write_text

#: (column, label, which direction is better); the ranked ones decide the order.
COLUMNS: tuple[tuple[str, str, str | None], ...] = (
    ("adapter_attributed_share", "attributed to me", "higher"),
    ("adapter_discriminator_auc", "discriminator AUC", None),
    ("adapter_hardest_discriminator_auc", "harder discriminator AUC", None),
    ("adapter_in_context", "in context", None),
    ("adapter_memorised_share", "memorised", None),
    ("adapter_style_distance", "style distance", "lower"),
    ("adapter_reply_loss", "adapter reply loss", "lower"),
    ("adapter_stop_rate", "stop rate", "higher"),
    ("adapter_similarity_to_real", "similarity to my reply", "higher"),
    ("base_reply_loss", "base reply loss", None),
    ("base_attributed_share", "base attributed", None),
    ("real_attributed_share", "real attributed", None),
    ("adapter_distinct_2", "distinct-2", None),
)
RANKED = {column: better for column, _, better in COLUMNS if better}
IDENTITY = ["rank", "template", "experiment", "verdict", "mean_rank", "stale"]
VERDICT_TAG = "echo.verdict"
RUN_COLUMNS = ["training_run_id", "evaluation_run_id", "evaluated_at"]


@dataclass(frozen=True)
class LeaderboardFiles:
    html: Path
    csv: Path


def _runs(tracking_uri: str, experiment_name: str) -> pd.DataFrame:
    import mlflow

    from echo_pipeline.infra import tracking

    mlflow.set_tracking_uri(tracking_uri)
    experiment = mlflow.MlflowClient(tracking_uri=tracking_uri).get_experiment_by_name(
        experiment_name
    )
    if experiment is None:
        return pd.DataFrame()
    return tracking.retry_when_locked(
        lambda: mlflow.search_runs(
            experiment_ids=[experiment.experiment_id],
            filter_string="attributes.status = 'FINISHED'",
            order_by=["attributes.start_time DESC"],
        )
    )


def leaderboard_from_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """The leaderboard from a ``mlflow.search_runs`` frame (newest first), one row per adapter."""
    columns = IDENTITY + [c for c, _, _ in COLUMNS] + RUN_COLUMNS
    template_tag = "tags.echo.template"
    if runs.empty or template_tag not in runs:
        return pd.DataFrame(columns=columns)
    runs = runs[runs[template_tag].notna()].sort_values("start_time", ascending=False)
    if "tags.echo.experiment" not in runs:
        runs = runs.assign(**{"tags.echo.experiment": ""})
    kind = runs.get(f"tags.{RUN_KIND_TAG}", pd.Series(None, index=runs.index))
    evaluations = runs[kind == EVALUATION]
    trainings = runs[kind != EVALUATION]
    keys = ["tags.echo.template", "tags.echo.experiment"]
    latest_eval = evaluations.drop_duplicates(keys).set_index(keys)
    latest_train = trainings.drop_duplicates(keys).set_index(keys)
    rows = []
    for key in latest_train.index.union(latest_eval.index):
        evaluation = latest_eval.loc[key] if key in latest_eval.index else None
        training = latest_train.loc[key] if key in latest_train.index else None
        row = {"template": key[0], "experiment": key[1]}
        if evaluation is None:
            row["verdict"] = "not evaluated"
        else:  # evaluations older than the verdict carry no tag
            tag = evaluation.get(f"tags.{VERDICT_TAG}")
            row["verdict"] = tag if isinstance(tag, str) and tag else "–"
        for column, _, _ in COLUMNS:
            value = evaluation.get(f"metrics.{column}") if evaluation is not None else None
            if value is None or pd.isna(value):  # not evaluated yet: the training run's numbers
                value = _training_metric(training, column)
            row[column] = value
        row["training_run_id"] = training["run_id"] if training is not None else None
        row["evaluation_run_id"] = evaluation["run_id"] if evaluation is not None else None
        row["evaluated_at"] = evaluation["start_time"] if evaluation is not None else None
        evaluated = evaluation.get(f"tags.{TRAINING_RUN_TAG}") if evaluation is not None else None
        row["stale"] = evaluation is None or (
            training is not None and evaluated != training["run_id"]
        )
        rows.append(row)
    frame = pd.DataFrame(rows)
    ranks = [
        frame[column].rank(ascending=better == "lower", method="min", na_option="bottom")
        for column, better in RANKED.items()
    ]
    frame["mean_rank"] = pd.concat(ranks, axis=1).mean(axis=1)
    frame["_verdict_order"] = frame["verdict"].map(_verdict_order)
    frame = frame.sort_values(["_verdict_order", "mean_rank", "template", "experiment"])
    frame = frame.reset_index(drop=True)
    frame["rank"] = np.arange(1, len(frame) + 1)
    return frame[columns]


def _verdict_order(label: str | None) -> int:
    """Best verdict first; an unknown or missing verdict after every known one."""
    from echo_pipeline.evaluation.echo_quality import VERDICTS

    return VERDICTS.index(label) if label in VERDICTS else len(VERDICTS)


def _training_metric(training: pd.Series | None, column: str) -> float | None:
    """Training runs log held-out losses as ``<side>_test_reply_loss`` (or ``_val_``)."""
    if training is None or not column.endswith("_reply_loss"):
        return None
    side = column.removesuffix("_reply_loss")
    for split in ("test", "val"):
        value = training.get(f"metrics.{side}_{split}_reply_loss")
        if value is not None and not pd.isna(value):
            return float(value)
    return None


def leaderboard(tracking_uri: str, experiment_name: str) -> pd.DataFrame:
    """Every adapter in ``experiment_name`` and its latest evaluation, best first."""
    return leaderboard_from_runs(_runs(tracking_uri, experiment_name))


def leaderboard_markdown(frame: pd.DataFrame) -> str:
    labels = {c: label for c, label, _ in COLUMNS}
    shown = ["rank", "template", "experiment", "verdict", *labels, "stale"]
    header = "| " + " | ".join(labels.get(c, c) for c in shown) + " |"
    lines = [header, "|" + "---|" * len(shown)]
    for row in frame.itertuples(index=False):
        record = row._asdict()
        cells = [fmt(record[c]) if c in labels else str(record[c]) for c in shown]
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    return "\n".join(lines)


def leaderboard_png(frame: pd.DataFrame) -> str | None:
    """Held-out reply loss against attribution share, one labelled point per adapter."""
    points = frame.dropna(subset=["adapter_reply_loss", "adapter_attributed_share"])
    if points.empty:
        return None
    fig = new_figure(6.4, 4.2)
    ax = fig.add_subplot()
    ax.scatter(
        points["adapter_reply_loss"], points["adapter_attributed_share"], s=40, color="#2f6fb3"
    )
    for row in points.itertuples(index=False):
        ax.annotate(
            f"{row.template}/{row.experiment}",
            (row.adapter_reply_loss, row.adapter_attributed_share),
            textcoords="offset points",
            xytext=(4, 4),
            fontsize=8,
        )
    real = points["real_attributed_share"].dropna()
    if len(real):
        ax.axhline(float(real.mean()), color="#4d4d4d", linestyle=":", label="my real replies")
        ax.legend(fontsize=8)
    ax.set_xlabel("adapter held-out reply loss (lower is better)")
    ax.set_ylabel("share attributed to me (higher is better)")
    ax.set_ylim(-0.05, 1.05)
    ax.grid(alpha=0.3)
    return figure_png(fig)


def render_leaderboard(frame: pd.DataFrame, *, title: str = "echo_pipeline leaderboard") -> str:
    labels = {c: label for c, label, _ in COLUMNS}
    shown: Sequence[str] = ["rank", "template", "experiment", *labels, "stale", "evaluation_run_id"]
    head = "".join(f"<th>{esc(labels.get(c, c))}</th>" for c in shown)
    body = "".join(
        "<tr>"
        + "".join(
            f'<td class="num">{esc(fmt(value))}</td>'
            if isinstance(value, float)
            else f"<td>{esc(value)}</td>"
            for value in (getattr(row, c) for c in shown)
        )
        + "</tr>"
        for row in frame.itertuples(index=False)
    )
    png = leaderboard_png(frame)
    figure = (
        f'<figure><img src="{png}" alt="reply loss against attribution"></figure>' if png else ""
    )
    return f"""<!DOCTYPE html>
<html lang="en">
<head><meta charset="utf-8"><title>{esc(title)}</title><style>{CSS}</style></head>
<body><main>
<h1>{esc(title)}</h1>
<p class="sub">{len(frame)} adapters, ranked by their mean rank on attribution, style distance, held-out reply loss,
stop rate and similarity to my reply. Stale: the adapter changed after its latest evaluation.</p>
<table class="leaderboard"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>
{figure}
</main></body></html>
"""


def write_leaderboard(frame: pd.DataFrame, out_dir: str | Path) -> LeaderboardFiles:
    out_dir = Path(out_dir)
    html_path = write_text(render_leaderboard(frame), out_dir / "leaderboard.html")
    csv_path = write_text(frame.to_csv(index=False), out_dir / "leaderboard.csv")
    return LeaderboardFiles(html_path, csv_path)
