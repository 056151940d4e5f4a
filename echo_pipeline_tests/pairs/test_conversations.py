"""Pair building on hand-made message tables where the right pairs are known."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from echo_pipeline.infra import schemas
from echo_pipeline.pairs.conversations import (
    ME_IDS_METADATA_KEY,
    MeNotFoundError,
    PairingConfig,
    assign_splits,
    build_pairs,
    heldout_split,
    resolve_me,
    split_targets,
)

T0 = pd.Timestamp("2024-03-01T12:00:00Z")


def messages(rows: list[tuple]) -> pd.DataFrame:
    """Rows of (seconds, author, content[, extra dict]) in one channel; ids m0, m1, ..."""
    records = []
    for i, row in enumerate(rows):
        seconds, author, content = row[:3]
        extra = row[3] if len(row) > 3 else {}
        records.append(
            {
                "source_file": "x.json",
                "source_format": "discord_json",
                "channel_id": extra.get("channel_id", "c1"),
                "channel_name": "dm",
                "message_id": f"m{i}",
                "seq": i,
                "timestamp": T0 + pd.Timedelta(seconds=seconds),
                "author_id": {"me": "1", "sam": "2", "jo": "3", "bot": "9"}[author],
                "author_name": author,
                "is_bot": author == "bot",
                "kind": extra.get("kind", "reply" if extra.get("reply_to") else "message"),
                "content": content,
                "reply_to_id": extra.get("reply_to"),
                "has_attachments": extra.get("attachment", False),
                "attachment_kind": "image" if extra.get("attachment") else None,
                "edited": False,
            }
        )
    return pd.DataFrame.from_records(records)


def pairs_of(df: pd.DataFrame, **config) -> pd.DataFrame:
    table, _ = build_pairs(df, PairingConfig(me=("me",), **config))
    return table.to_pandas()


def test_adjacent_turns_pair_and_bursts_merge():
    df = messages(
        [
            (0, "sam", "Hey, how was the trip?"),
            (5, "sam", "Did you see the lake?"),
            (30, "me", "it was great"),
            (35, "me", "lake was cold lol"),
            (100, "sam", "Nice! Photos?"),
            (120, "me", "later"),
        ]
    )
    pairs = pairs_of(df)
    assert list(pairs["prompt"]) == [
        "Hey, how was the trip?\nDid you see the lake?",
        "Nice! Photos?",
    ]
    assert list(pairs["reply"]) == ["it was great\nlake was cold lol", "later"]
    assert list(pairs["reply_author_id"]) == ["1", "1"]
    second_context = pairs.iloc[1]["context"]
    assert [(c["speaker"], c["is_me"]) for c in second_context] == [("sam", False), ("me", True)]


def test_session_gap_cuts_pairs_and_context():
    df = messages([(0, "sam", "night!"), (4 * 3600, "me", "morning")])
    assert pairs_of(df).empty
    df = messages([(0, "sam", "a"), (10, "me", "b"), (7200, "sam", "c"), (7210, "me", "d")])
    pairs = pairs_of(df)
    assert len(pairs) == 2
    assert len(pairs.iloc[1]["context"]) == 0
    assert pairs.iloc[0]["session_id"] != pairs.iloc[1]["session_id"]


def test_explicit_reply_takes_its_target_even_when_not_adjacent():
    df = messages(
        [
            (0, "sam", "What's your favourite pizza?"),
            (10, "jo", "Anyone up for games tonight?"),
            (20, "me", "pineapple obviously", {"reply_to": "m0"}),
        ]
    )
    pairs = pairs_of(df)
    assert len(pairs) == 1
    row = pairs.iloc[0]
    assert row["prompt"] == "What's your favourite pizza?"
    assert bool(row["is_explicit_reply"])


def test_system_bot_blank_and_attachments():
    df = messages(
        [
            (0, "sam", "Joined the server.", {"kind": "system"}),
            (1, "bot", "Now playing: song"),
            (2, "sam", "look at this"),
            (3, "sam", "", {"attachment": True}),
            (30, "me", "", {"attachment": True}),
        ]
    )
    assert pairs_of(df).empty  # an image as my reply is no text to learn (next test)
    pairs = pairs_of(df, drop_placeholder_replies=False)
    assert list(pairs["prompt"]) == ["look at this\n[image]"]
    assert list(pairs["reply"]) == ["[image]"]
    assert pairs_of(df, attachments="drop", drop_placeholder_replies=False).empty


def test_redaction_applies_before_pairing():
    df = messages(
        [
            (0, "sam", "mail me at sam.rivera@example.com"),
            (10, "me", "ok my number is +1 (555) 010-4477"),
        ]
    )
    table, report = build_pairs(df, PairingConfig(me=("me",)))
    row = table.to_pylist()[0]
    assert "example.com" not in row["prompt"] and "<EMAIL>" in row["prompt"]
    assert "4477" not in row["reply"] and "<PHONE>" in row["reply"]
    assert report.redactions.get("email") == 1 and report.redactions.get("phone") == 1


def test_filters_link_only_and_duplicates():
    df = messages(
        [
            (0, "sam", "song?"),
            (5, "me", "https://example.com/x"),
            (4000, "sam", "hi"),
            (4005, "me", "hey"),
            (9000, "sam", "hi"),
            (9005, "me", "hey"),
        ]
    )
    table, report = build_pairs(df, PairingConfig(me=("me",)))
    assert table.num_rows == 1
    assert report.dropped["pair:link_only"] == 1 and report.dropped["pair:duplicate"] == 1


def test_me_by_id_or_name_and_unknown_lists_candidates():
    df = messages([(0, "sam", "a"), (1, "me", "b"), (2, "sam", "c")])
    assert resolve_me(df, ["1"]) == ["1"]
    assert resolve_me(df, ["ME"]) == ["1"]
    with pytest.raises(MeNotFoundError) as error:
        resolve_me(df, ["nobody"])
    assert "sam (id 2, 2 messages)" in str(error.value)


def one_pair_sessions(count: int) -> pd.DataFrame:
    """``count`` sessions of one question and my answer, hours apart."""
    rows = []
    for s in range(count):
        base = s * 10_000
        rows += [(base, "sam", f"question {s}?"), (base + 10, "me", f"answer {s}")]
    return messages(rows)


def test_schema_splits_and_stable_ids():
    df = one_pair_sessions(40)
    table, _report = build_pairs(df, PairingConfig(me=("me",)))
    assert table.schema.remove_metadata() == schemas.CONVERSATION_PAIRS
    assert json.loads(table.schema.metadata[ME_IDS_METADATA_KEY]) == ["1"]
    pairs = table.to_pandas()
    assert set(pairs["split"]) == {"train", "val", "test"}
    assert pairs.groupby("session_id")["split"].nunique().max() == 1
    # 40 one-pair sessions: test is held at 40 * 0.5 - val (4) = 16, short of test_min_pairs
    assert pairs["split"].value_counts().to_dict() == {"train": 20, "test": 16, "val": 4}
    shuffled = df.sample(frac=1.0, random_state=3)
    again = build_pairs(shuffled, PairingConfig(me=("me",)))[0].to_pandas()
    assert list(again["pair_id"]) == list(pairs["pair_id"])
    assert list(again["split"]) == list(pairs["split"])
    chrono = build_pairs(df, PairingConfig(me=("me",), split_method="chronological"))[0].to_pandas()
    latest = chrono.sort_values("reply_timestamp").tail(16)
    assert set(latest["split"]) == {"test"}


def test_a_train_share_keeps_nested_train_sessions_and_the_same_heldout_pairs():
    df = one_pair_sessions(200)
    full = build_pairs(df, PairingConfig(me=("me",)))[0].to_pandas()
    by_share = {}
    for share in (0.25, 0.5):
        table, report = build_pairs(df, PairingConfig(me=("me",), train_share=share))
        by_share[share] = table.to_pandas()
        kept = by_share[share]
        heldout = kept[kept["split"] != "train"]
        assert sorted(heldout["pair_id"]) == sorted(full.loc[full["split"] != "train", "pair_id"])
        train = int((kept["split"] == "train").sum())
        everything = int((full["split"] == "train").sum())
        assert report.dropped["pair:train_share"] == everything - train
        assert abs(train / everything - share) < 0.12  # a hash, so near the share, not on it
    quarter = set(by_share[0.25].loc[by_share[0.25]["split"] == "train", "pair_id"])
    half = set(by_share[0.5].loc[by_share[0.5]["split"] == "train", "pair_id"])
    assert quarter < half
    with pytest.raises(ValueError, match="train_share"):
        PairingConfig(me=("me",), train_share=0.0)


def test_group_chat_speakers_in_context():
    df = messages([(0, "jo", "pizza tonight?"), (5, "sam", "I'm in!"), (10, "me", "same")])
    row = pairs_of(df).iloc[0]
    assert row["prompt_author"] == "sam"
    assert [c["speaker"] for c in row["context"]] == ["jo"]


def test_empty_input_gives_typed_empty_table():
    df = messages([(0, "me", "talking to myself"), (5, "me", "still me")])
    table, report = build_pairs(df, PairingConfig(me=("me",)))
    assert table.num_rows == 0
    assert any("only one author" in w for w in report.warnings)


def test_attachment_only_replies_are_context_not_targets():
    df = messages(
        [
            (0, "sam", "look at this"),
            (60, "me", "", {"attachment": True}),  # "[image]": no reply to learn
            (4000, "sam", "and this?"),
            (4060, "me", "nice one"),
            (4100, "sam", "", {"attachment": True}),
            (4160, "me", "haha where was that"),
        ]
    )
    table, report = build_pairs(df, PairingConfig(me=("me",)))
    pairs = table.to_pandas()
    assert pairs["reply"].tolist() == ["nice one", "haha where was that"]
    assert pairs["prompt"].tolist()[1] == "[image]"  # an attachment still prompts a reply
    assert report.dropped["pair:placeholder_only"] == 1
    kept = pairs_of(df, drop_placeholder_replies=False)
    assert "[image]" in kept["reply"].tolist()


def test_a_reply_sent_over_and_over_is_capped_and_the_cap_is_stable():
    rows = []
    for i in range(12):  # twelve sessions, each: a question, then "Ha!" / "ha"
        rows += [
            (i * 4000, "sam", f"joke number {i}"),
            (i * 4000 + 30, "me", "Ha!" if i % 2 else "ha"),
        ]
    rows += [(60000, "sam", "what now"), (60030, "me", "dinner?")]
    df = messages(rows)
    table, report = build_pairs(df, PairingConfig(me=("me",), max_same_reply=5))
    replies = table.column("reply").to_pylist()
    assert sum(r.lower().strip("!") == "ha" for r in replies) == 5
    assert "dinner?" in replies
    assert report.dropped["pair:frequent_reply"] == 7
    again, _ = build_pairs(df, PairingConfig(me=("me",), max_same_reply=5))
    assert again.column("pair_id").to_pylist() == table.column("pair_id").to_pylist()
    assert len(pairs_of(df, max_same_reply=0)) == 13


def _sessions(sizes: list[int]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "session_id": [f"{(i * 2654435761) % 2**32:08x}{i:08x}" for i in range(len(sizes))],
            "start": [T0 + pd.Timedelta(hours=i) for i in range(len(sizes))],
            "pairs": sizes,
        }
    )


@pytest.mark.parametrize(
    ("total", "expected"),
    [
        (2000, (200, 200, 1000)),  # 10% each: test_fraction beats test_min_pairs
        (600, (100, 60, 300)),  # test_min_pairs beats 10%
        (150, (60, 15, 75)),  # test held to the cap (train keeps 50%) minus val
        (3, (1, 0, 1)),
        (0, (0, 0, 0)),
    ],
)
def test_split_targets_in_pairs(total, expected):
    assert split_targets(total, PairingConfig(me=("me",))) == expected


@pytest.mark.parametrize(
    "sizes",
    [
        [1] * 1000,
        [5] * 200,
        [39, 26, 13, 1, 1, 1, 1],  # SDR++ (82 pairs): its sessions, largest first
        [135, 79, 43, 35, 14, 9, 7, 7, 5, 5, 3, 2, 2, 2, 2, 2, 2, 1, 1, 1, 1, 1],  # ECE722
        [63, 38, 8, 7, 2, 2, 1, 1],  # Rinkhals
        [400, 300],
        [1, 1],
        [7, 2],
    ],
)
@pytest.mark.parametrize("method", ["hash", "chronological"])
def test_splits_are_sized_in_pairs_with_guard_rails(sizes, method):
    config = PairingConfig(me=("me",), split_method=method)
    sessions = _sessions(sizes)
    split = assign_splits(sessions, config)
    per_split = sessions["pairs"].groupby(split).sum().to_dict()
    total = sum(sizes)
    test_target, _val_target, cap = split_targets(total, config)
    assert per_split.get("test", 0) > 0  # two or more sessions: always something to evaluate on
    assert per_split.get("train", 0) > 0
    if per_split.get("test", 0) + per_split.get("val", 0) > cap:  # only by the one-session rescue
        assert (split == "test").sum() == 1 and (split == "val").sum() == 0
    if all(size == sizes[0] for size in sizes) and total >= 200:  # even sessions: on target
        assert per_split["test"] == test_target
        assert per_split["test"] >= 0.1 * total and per_split["test"] >= 100
    # deterministic, and independent of the order the sessions come in
    shuffled = sessions.sample(frac=1.0, random_state=1)
    assert assign_splits(shuffled, config).sort_index().tolist() == split.tolist()


def test_one_session_or_nothing_held_out_leaves_test_empty():
    one = assign_splits(_sessions([30]), PairingConfig(me=("me",)))
    assert one.tolist() == ["train"]
    nothing = PairingConfig(me=("me",), test_fraction=0, test_min_pairs=0, val_fraction=0)
    assert set(assign_splits(_sessions([3, 3, 3]), nothing)) == {"train"}


@pytest.mark.parametrize(
    ("rows", "preferred", "expected"),
    [
        ({"train": 50, "val": 5, "test": 5}, "test", "test"),
        ({"train": 50, "val": 5, "test": 0}, "test", "val"),  # too small a chat for a test split
        ({"train": 50, "val": 5}, "test", "val"),
        ({"train": 50}, "test", "val"),  # nothing held out: val, empty (the caller decides)
        ({"train": 50, "val": 5, "test": 5}, "val", "val"),
    ],
)
def test_the_heldout_split_is_test_where_it_has_pairs_else_val(rows, preferred, expected):
    assert heldout_split(rows, preferred) == expected


def test_the_real_exports_hold_out_test_pairs():
    """The four real channel exports: every one gets a non-empty test split (SDR++ used to get
    none: every session hashed into train)."""
    from real_exports import REAL_EXPORTS, me_for

    from echo_pipeline.exports import read_exports

    assert len(REAL_EXPORTS) == 4
    for path in REAL_EXPORTS:
        config = PairingConfig(me=(me_for(path),))
        _table, report = build_pairs(read_exports([path]).to_pandas(), config)
        counts = report.pairs_by_split
        assert counts["test"] >= 0.1 * report.pairs, (path.name, counts)
        assert counts["train"] >= 0.5 * report.pairs, (path.name, counts)
