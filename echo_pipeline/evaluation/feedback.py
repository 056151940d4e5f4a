"""What people say about an adapter: "which one is me?" judgements and reply ratings.

Pure and stdlib-only, so the Dagster code location (``human_judgements``) and the chat page
both read it without importing each other. Every record is its own small JSON file, written
atomically (:func:`~echo_pipeline.infra.storage.write_text`: temporary, fsync, rename) under a name
no other writer can choose (time + random id). So the store is append-only, a record written
during a crash is whole or absent, and two tabs judging at once cannot lose each other's
records: there is no shared file to race on.

Layout, under the data folder::

    human_feedback/judgements/<template>__<experiment>/<utc>-<id>.json
    human_feedback/ratings/<template>__<experiment>/<utc>-<id>.json

Ratings become preference pairs (:func:`preference_pairs`) in the columns the preference
trainer reads: ``pair_id, context, prompt_author, prompt, chosen, rejected, source, adapter,
created_at``. A choice between two replies ("this one is better") is a pair by itself
(``human_choice``). A one-sided rating ("sounds like me" / "not me") is kept as it was given;
it becomes a pair (``human_rating``) only when another reply to the same message got the
opposite rating; a lone "not me" has no chosen reply and stays a one-sided rating for later.
"""

from __future__ import annotations

import json
import math
import secrets
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from echo_pipeline.infra.layout import partition_slug

#: The metrics a reader's rounds of "which one is me?" add to an adapter's evaluation run.
FOOLED_SHARE, ROUNDS, FOOLED = "human_fooled_share", "human_judgements", "human_fooled"

FEEDBACK_DIR = "human_feedback"
SIDES = ("left", "right")
RATINGS = ("sounds_like_me", "not_me")
Side = Literal["left", "right"]


class FeedbackError(ValueError):
    """A record that does not make sense (unknown side, empty reply, ...)."""


def adapter_partition(template: str, experiment: str) -> str:
    """The adapter's partition key as the records store it (Dagster's multi-partition key)."""
    return f"{experiment}|{template}"


def split_partition(adapter: str) -> tuple[str, str]:
    """``(template, experiment)`` of a stored partition key (dimensions sort by name)."""
    experiment, _, template = adapter.partition("|")
    if not template:
        raise FeedbackError(f"{adapter!r}: not an adapter partition key (experiment|template)")
    return template, experiment


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


def _folder(root: Path, kind: str, adapter: str) -> Path:
    template, experiment = split_partition(adapter)
    return (
        Path(root)
        / FEEDBACK_DIR
        / kind
        / f"{partition_slug(template)}__{partition_slug(experiment)}"
    )


def _append(root: Path, kind: str, adapter: str, record: Mapping[str, Any]) -> Path:
    """One record, one new file: written whole or not at all, never over another."""
    from echo_pipeline.infra.storage import write_text

    stamp = str(record["created_at"]).replace(":", "").replace("-", "").replace("+0000", "Z")
    name = f"{stamp}-{secrets.token_hex(6)}.json"
    return write_text(
        json.dumps(record, ensure_ascii=False) + "\n", _folder(root, kind, adapter) / name
    )


def _read_all(root: Path, kind: str, adapter: str | None) -> list[dict[str, Any]]:
    """Every whole record (oldest first); temporaries of a killed writer are not records."""
    base = Path(root) / FEEDBACK_DIR / kind
    folders = [_folder(root, kind, adapter)] if adapter else sorted(base.glob("*"))
    records = []
    for folder in folders:
        for path in sorted(folder.glob("[0-9]*.json")):
            try:
                records.append(json.loads(path.read_text(encoding="utf-8")))
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
                raise FeedbackError(f"{path}: not a whole feedback record ({error})") from error
    return sorted(records, key=lambda r: r["created_at"])


# --- "which one is me?" ---------------------------------------------------------------------


@dataclass(frozen=True)
class Judgement:
    """One round: which side held my real reply, and which side the person clicked."""

    adapter: str  # partition key, experiment|template
    pair_id: str  # the held-out pair the round was built from
    real_side: Side
    choice: Side
    created_at: str = field(default_factory=_now)

    def __post_init__(self) -> None:
        if self.real_side not in SIDES or self.choice not in SIDES:
            raise FeedbackError(f"sides are {SIDES}, not {self.real_side!r}/{self.choice!r}")

    @property
    def fooled(self) -> bool:
        """The person took the clone's reply for mine."""
        return self.choice != self.real_side


def record_judgement(root: Path, judgement: Judgement) -> Path:
    return _append(root, "judgements", judgement.adapter, asdict(judgement))


def load_judgements(root: Path, adapter: str | None = None) -> list[Judgement]:
    return [Judgement(**r) for r in _read_all(root, "judgements", adapter)]


def wilson_interval(successes: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """95 % Wilson score interval of a share: sensible at 0 of 3 and 3 of 3, unlike the normal one."""
    if n == 0:
        return 0.0, 1.0
    share = successes / n
    centre = (share + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(share * (1 - share) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass(frozen=True)
class FooledScore:
    """How often the clone passed for me: x of n rounds, the share and its 95 % interval."""

    fooled: int
    rounds: int

    @property
    def share(self) -> float:
        return self.fooled / self.rounds if self.rounds else math.nan

    @property
    def interval(self) -> tuple[float, float]:
        return wilson_interval(self.fooled, self.rounds)

    def as_dict(self) -> dict[str, Any]:
        low, high = self.interval
        share = None if self.rounds == 0 else self.share
        return {
            "fooled": self.fooled,
            "rounds": self.rounds,
            "share": share,
            "low": low,
            "high": high,
        }

    def sentence(self) -> str:
        """The report's line: "fooled a human reader: x of n" (with the interval)."""
        if not self.rounds:
            return "fooled a human reader: not judged yet"
        low, high = self.interval
        return (
            f"fooled a human reader: {self.fooled} of {self.rounds} "
            f"({100 * self.share:.0f} %, 95 % interval {100 * low:.0f}–{100 * high:.0f} %)"
        )


def fooled_score(judgements: Iterable[Judgement]) -> FooledScore:
    judged = list(judgements)
    return FooledScore(sum(j.fooled for j in judged), len(judged))


# --- ratings and preference pairs -------------------------------------------------------------


def _turns(context: Sequence[Mapping[str, Any]]) -> list[dict[str, str]]:
    return [{"speaker": str(t.get("speaker", "")), "text": str(t.get("text", ""))} for t in context]


@dataclass(frozen=True)
class Rating:
    """A person's word on one reply ("sounds_like_me"/"not_me"), or a choice between two
    (``rating="choice"``: ``reply`` is the one picked, ``other`` the one passed over)."""

    adapter: str  # the adapter that wrote ``reply`` (for a choice: the page's adapter)
    turn_id: str  # one message of the person: every reply to it shares this id
    context: list[dict[str, str]]
    prompt_author: str
    prompt: str
    reply: str
    rating: str
    other: str = ""
    created_at: str = field(default_factory=_now)

    def __post_init__(self) -> None:
        if self.rating not in (*RATINGS, "choice"):
            raise FeedbackError(f"rating is one of {RATINGS} or 'choice', not {self.rating!r}")
        if not self.reply.strip() or (self.rating == "choice" and not self.other.strip()):
            raise FeedbackError("an empty reply cannot be rated")
        if self.rating == "choice" and self.reply == self.other:
            raise FeedbackError("a choice needs two different replies")


def record_rating(root: Path, rating: Rating) -> Path:
    record = asdict(rating) | {"context": _turns(rating.context)}
    return _append(root, "ratings", rating.adapter, record)


def load_ratings(root: Path, adapter: str | None = None) -> list[Rating]:
    return [Rating(**r) for r in _read_all(root, "ratings", adapter)]


def _pair_id(*parts: str) -> str:
    import hashlib

    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:16]


def preference_pairs(ratings: Iterable[Rating]) -> list[dict[str, Any]]:
    """Rows of (prompt, chosen, rejected) in the preference trainer's columns.

    ``human_choice``: each choice. ``human_rating``: for each message, every reply rated
    "sounds like me" against every reply rated "not me". Lone one-sided ratings give no row.
    """
    ratings = list(ratings)
    rows = []

    def row(r: Rating, chosen: str, rejected: str, source: str, created_at: str) -> dict:
        return {
            "pair_id": _pair_id(r.turn_id, chosen, rejected),
            "context": _turns(r.context),
            "prompt_author": r.prompt_author,
            "prompt": r.prompt,
            "chosen": chosen,
            "rejected": rejected,
            "source": source,
            "adapter": r.adapter,
            "created_at": datetime.fromisoformat(created_at),
        }

    for r in ratings:
        if r.rating == "choice":
            rows.append(row(r, r.reply, r.other, "human_choice", r.created_at))
    by_turn: dict[str, list[Rating]] = {}
    for r in ratings:
        if r.rating in RATINGS:
            by_turn.setdefault(r.turn_id, []).append(r)
    for rated in by_turn.values():
        liked = [r for r in rated if r.rating == "sounds_like_me"]
        disliked = [r for r in rated if r.rating == "not_me"]
        for good in liked:
            for bad in disliked:
                if good.reply != bad.reply:
                    latest = max(good.created_at, bad.created_at)
                    rows.append(row(good, good.reply, bad.reply, "human_rating", latest))
    unique = {r["pair_id"]: r for r in rows}  # the same pair rated twice counts once
    return sorted(unique.values(), key=lambda r: r["created_at"])


def one_sided_ratings(ratings: Iterable[Rating]) -> list[Rating]:
    """Ratings that no opposite rating of the same message turned into a pair (kept for later:
    a "not me" can pair with my real reply once one exists for that message)."""
    ratings = [r for r in ratings if r.rating in RATINGS]
    paired = {
        r.turn_id
        for r in ratings
        if {x.rating for x in ratings if x.turn_id == r.turn_id} == set(RATINGS)
    }
    return [r for r in ratings if r.turn_id not in paired]
