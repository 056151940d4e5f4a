"""Judgements and ratings: append-only, whole or absent after a kill, nothing lost to a race."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from datetime import datetime

import pytest

from echo_pipeline.evaluation.feedback import (
    FeedbackError,
    Judgement,
    Rating,
    adapter_partition,
    fooled_score,
    load_judgements,
    load_ratings,
    one_sided_ratings,
    preference_pairs,
    record_judgement,
    record_rating,
    split_partition,
    wilson_interval,
)
from echo_pipeline.infra.paths import PROJECT_ROOT

ADAPTER = adapter_partition("chatml", "demo")
PREFERENCE_COLUMNS = [
    "pair_id",
    "context",
    "prompt_author",
    "prompt",
    "chosen",
    "rejected",
    "source",
    "adapter",
    "created_at",
]


def test_the_partition_key_is_dagsters():
    from echo_pipeline.defs.partitions import adapter_key

    assert ADAPTER == str(adapter_key("chatml", "demo")) == "demo|chatml"
    assert split_partition(ADAPTER) == ("chatml", "demo")
    with pytest.raises(FeedbackError):
        split_partition("chatml")


def test_judgements_survive_and_count(tmp_path):
    record_judgement(tmp_path, Judgement(ADAPTER, "p1", "left", "left"))
    record_judgement(tmp_path, Judgement(ADAPTER, "p2", "right", "left"))
    record_judgement(
        tmp_path, Judgement(adapter_partition("llama2_chat", "demo"), "p3", "left", "right")
    )
    mine = load_judgements(tmp_path, ADAPTER)
    assert [(j.pair_id, j.fooled) for j in mine] == [("p1", False), ("p2", True)]
    assert datetime.fromisoformat(mine[0].created_at).tzinfo is not None
    score = fooled_score(mine)
    assert (score.fooled, score.rounds) == (1, 2)
    assert score.sentence().startswith("fooled a human reader: 1 of 2 (50 %")
    assert len(load_judgements(tmp_path)) == 3
    with pytest.raises(FeedbackError):
        Judgement(ADAPTER, "p1", "left", "middle")


def test_wilson_interval_is_sensible_at_the_edges():
    assert wilson_interval(0, 0) == (0.0, 1.0)
    low, high = wilson_interval(0, 3)
    assert low == 0.0 and 0.5 < high < 0.6  # 0 of 3 does not prove the clone never fools
    low, high = wilson_interval(3, 3)
    assert 0.4 < low < 0.5 and high == 1.0
    low, high = wilson_interval(50, 100)
    assert low == pytest.approx(0.404, abs=1e-3) and high == pytest.approx(0.596, abs=1e-3)


def test_two_writers_at_once_lose_nothing(tmp_path):
    def judge(tab: str) -> None:
        for i in range(40):
            record_judgement(tmp_path, Judgement(ADAPTER, f"{tab}-{i}", "left", "right"))

    tabs = [threading.Thread(target=judge, args=(tab,)) for tab in ("a", "b", "c")]
    for tab in tabs:
        tab.start()
    for tab in tabs:
        tab.join()
    assert sorted(j.pair_id for j in load_judgements(tmp_path, ADAPTER)) == sorted(
        f"{tab}-{i}" for tab in "abc" for i in range(40)
    )


WRITER = """
import sys
from echo_pipeline.evaluation.feedback import Judgement, record_judgement
root = sys.argv[1]
i = 0
while True:
    record_judgement(root, Judgement("demo|chatml", f"p{i}" + "x" * 5000, "left", "right"))
    i += 1
    if i == 20:
        print("writing", flush=True)
"""


def test_a_judgement_written_during_a_kill_is_whole_or_absent(tmp_path):
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(tmp_path)],
        cwd=PROJECT_ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert writer.stdout.readline().strip() == "writing"
        time.sleep(0.3)
    finally:
        writer.send_signal(signal.SIGKILL)
        writer.wait()
    judged = load_judgements(tmp_path, ADAPTER)  # raises on a torn record
    assert len(judged) >= 20
    assert all(j.pair_id.endswith("x" * 5000) for j in judged)
    record_judgement(tmp_path, Judgement(ADAPTER, "after", "left", "left"))
    assert len(load_judgements(tmp_path, ADAPTER)) == len(judged) + 1


def _rating(rating: str, reply: str, turn: str = "t1", other: str = "") -> Rating:
    return Rating(
        adapter=ADAPTER,
        turn_id=turn,
        context=[{"speaker": "sam", "text": "hey", "is_me": False}],
        prompt_author="friend",
        prompt="are you coming?",
        reply=reply,
        rating=rating,
        other=other,
    )


def test_ratings_become_preference_pairs_in_the_trainers_columns(tmp_path):
    record_rating(tmp_path, _rating("sounds_like_me", "yeah omw"))
    record_rating(tmp_path, _rating("not_me", "Certainly! I will be there."))
    record_rating(tmp_path, _rating("choice", "nah lol", turn="t2", other="I am unable to attend."))
    record_rating(tmp_path, _rating("not_me", "Hello, how can I help?", turn="t3"))
    ratings = load_ratings(tmp_path, ADAPTER)
    pairs = preference_pairs(ratings)
    assert [list(p) for p in pairs] == [PREFERENCE_COLUMNS] * 2
    rated, chosen = pairs
    assert (rated["chosen"], rated["rejected"], rated["source"]) == (
        "yeah omw",
        "Certainly! I will be there.",
        "human_rating",
    )
    assert (chosen["chosen"], chosen["rejected"], chosen["source"]) == (
        "nah lol",
        "I am unable to attend.",
        "human_choice",
    )
    assert rated["context"] == [{"speaker": "sam", "text": "hey"}]
    assert rated["adapter"] == ADAPTER and rated["created_at"].tzinfo is not None
    # the lone "not me" has no chosen reply: kept as a one-sided rating, not a pair
    assert [r.reply for r in one_sided_ratings(ratings)] == ["Hello, how can I help?"]
    assert preference_pairs(ratings + ratings) == pairs  # rated twice, counted once


def test_a_rating_needs_a_reply():
    with pytest.raises(FeedbackError):
        _rating("sounds_like_me", "  ")
    with pytest.raises(FeedbackError):
        _rating("choice", "same", other="same")
    with pytest.raises(FeedbackError):
        _rating("meh", "ok")
