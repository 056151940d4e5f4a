"""Property-based tests of the pair builder on generated chats (hypothesis).

The chats mix humans, a bot, system messages, explicit replies (to earlier messages, to other
channels, to nothing), attachment-only messages, bursts, long silences and text salted with
PII, secrets and mentions. Whatever comes in, the invariants that the blocking checks guard in
production must hold, and pair ids and splits must not depend on the order rows or files come in.
"""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from echo_pipeline.exports import read_exports
from echo_pipeline.infra.schemas import CHAT_MESSAGES
from echo_pipeline.pairs import conversations
from echo_pipeline.pairs.conversations import PairingConfig, build_pairs
from echo_pipeline.pairs.redaction import find_pii, find_pii_series, redact_series, redact_text

ME = ("1001", "alex")
OTHERS = [("1002", "sam"), ("1003", "jordan"), ("1004", "kim")]
BOT = ("1009", "helperbot")
START = datetime(2024, 1, 5, 9, 0, tzinfo=UTC)
CONFIG = PairingConfig(me=("alex",), context_turns=2)

PII = [
    "jane.doe@example.com",
    "bob [at] mail [dot] org",
    "+44 20 7946 0958",
    "(555) 123-4567",
    "07700 900123",
    "4111 1111 1111 1111",
    "5500-0000-0000-0004",
    "192.168.1.20",
    "2001:db8::8a2e:370:7334",
    "ghp_" + "a1B2c3D4e5F6g7H8i9J0" * 2,
    "sk-proj-" + "Q1w2E3r4T5y6U7i8O9p0" * 2,
    "AKIAIOSFODNN7EXAMPLE",
    "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N",
    "https://admin:hunter22@db.example.com:5432/app",
    "password = s3cr3t!pw",
    "my password is Tr0ub4dor",
    "-----BEGIN RSA PRIVATE KEY-----",
    "MIIEowIBAAKCAQEA7bq98",
    "-----END RSA PRIVATE KEY-----",
]
WORDS = ["ok", "lol", "see you at 7", "version 1.2.0.4", "room 101", "v2.3", "12:30", "haha", "🙂"]
MENTIONS = [
    "<@123456789012345678>",
    "<@&987654321098765432>",
    "<#555555555555555555>",
    "<:pog:1234>",
]

fragment = st.one_of(
    st.sampled_from(PII),
    st.sampled_from(WORDS),
    st.sampled_from(MENTIONS),
    st.text(max_size=12),
    st.from_regex(r"[0-9 ()+.\-]{6,20}", fullmatch=True),
)
content = st.lists(fragment, max_size=4).flatmap(
    lambda parts: st.sampled_from([" ", "", "\n"]).map(lambda sep: sep.join(parts))
)


GAPS_S = [0, 5, 40, 200, 400, 3000, 4000, 90000]  # bursts, merges, new turns, new sessions


@st.composite
def chat(draw, gaps: list[int] = GAPS_S) -> list[dict]:
    """Rows of CHAT_MESSAGES for 1-2 channels, one file per channel (seq unique per file)."""
    others = draw(st.lists(st.sampled_from(OTHERS), min_size=1, max_size=3, unique=True))
    people = [ME, *others]
    rows: list[dict] = []
    for channel in draw(
        st.lists(st.sampled_from(["500", "600"]), min_size=1, max_size=2, unique=True)
    ):
        clock = START
        ids: list[str] = []
        for seq in range(draw(st.integers(0, 24))):
            clock += timedelta(seconds=draw(st.sampled_from(gaps)))
            who = draw(st.sampled_from([*people, *people, BOT]))
            kind = draw(st.sampled_from(["message"] * 6 + ["reply", "system"]))
            reply_to = None
            if kind == "reply":
                reply_to = draw(st.sampled_from([*ids[-6:], "999", "424242"]))
            attachment = draw(st.booleans()) and draw(st.booleans())
            text = "" if attachment and draw(st.booleans()) else draw(content)
            message_id = f"{channel}{seq:04d}"
            ids.append(message_id)
            rows.append(
                {
                    "source_file": f"export-{channel}.json",
                    "source_format": "discord_json",
                    "channel_id": channel,
                    "channel_name": f"channel {channel}",
                    "message_id": message_id,
                    "seq": seq,
                    "timestamp": clock,
                    "author_id": who[0],
                    "author_name": who[1],
                    "is_bot": who is BOT,
                    "kind": kind,
                    "content": text,
                    "reply_to_id": reply_to,
                    "has_attachments": attachment,
                    "attachment_kind": "image" if attachment else None,
                    "edited": False,
                }
            )
    return rows


def message(seq: int, who: tuple[str, str], text: str, channel: str = "500") -> dict:
    return {
        "source_file": f"export-{channel}.json",
        "source_format": "discord_json",
        "channel_id": channel,
        "channel_name": f"channel {channel}",
        "message_id": f"{channel}{seq:04d}",
        "seq": seq,
        "timestamp": START + timedelta(seconds=30 * seq),
        "author_id": who[0],
        "author_name": who[1],
        "is_bot": who is BOT,
        "kind": "message",
        "content": text,
        "reply_to_id": None,
        "has_attachments": False,
        "attachment_kind": None,
        "edited": False,
    }


def frame(rows: list[dict]) -> pd.DataFrame:
    return pa.Table.from_pylist(rows, schema=CHAT_MESSAGES).to_pandas()


def pairs_of(rows: list[dict], config: PairingConfig = CONFIG) -> pd.DataFrame:
    table, _ = build_pairs(frame(rows), config)
    return table.to_pandas()


def identity(pairs: pd.DataFrame) -> list[tuple]:
    """What must not change when the input is reordered: ids, splits and the texts."""
    cols = ["pair_id", "session_id", "split", "prompt", "reply", "prompt_author_id"]
    return sorted(map(tuple, pairs[cols].to_numpy().tolist()))


SETTINGS = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True
)


@SETTINGS
@given(chat())
def test_pairs_answer_someone_else_within_one_session_and_one_split(rows):
    if not any(r["author_id"] == ME[0] for r in rows):
        with pytest.raises(conversations.MeNotFoundError):
            pairs_of(rows)
        return
    table, report = build_pairs(frame(rows), CONFIG)
    pairs = table.to_pandas()
    me_ids = json.loads(table.schema.metadata[conversations.ME_IDS_METADATA_KEY])
    assert me_ids == [ME[0]]
    assert pairs["reply_author_id"].isin(me_ids).all()  # every reply is mine
    assert not pairs["prompt_author_id"].isin(me_ids).any()  # every prompt someone else's
    assert not pairs["prompt_author_id"].isin([BOT[0]]).any()  # and never a bot's
    assert (pairs["prompt_session_id"] == pairs["session_id"]).all()  # no pair crosses a session
    assert (pairs.groupby("session_id")["split"].nunique() <= 1).all()  # no session in 2 splits
    assert pairs["pair_id"].is_unique
    assert (pairs["prompt_timestamp"] <= pairs["reply_timestamp"]).all()
    assert set(pairs["split"]) <= {"train", "val", "test"}
    assert all(len(c) <= CONFIG.context_turns for c in pairs["context"])
    assert report.pairs == len(pairs) == sum(report.pairs_by_split.values())


@SETTINGS
@given(chat(), st.randoms(use_true_random=False))
def test_pair_ids_and_splits_do_not_depend_on_row_order(rows, rnd):
    if not any(r["author_id"] == ME[0] for r in rows):
        return
    shuffled = list(rows)
    rnd.shuffle(shuffled)
    assert identity(pairs_of(shuffled)) == identity(pairs_of(rows))


@SETTINGS
@given(chat())
def test_redaction_leaves_no_pattern_it_claims_to_remove(rows):
    if not any(r["author_id"] == ME[0] for r in rows):
        return
    pairs = pairs_of(rows)
    texts = [*pairs["prompt"], *pairs["reply"], *(t["text"] for c in pairs["context"] for t in c)]
    leftovers = {t: find_pii(t) for t in texts if find_pii(t)}
    assert leftovers == {}


DETECTABLE = [p for p in PII if find_pii(p)]  # PEM halves alone are not a key yet
# Neighbours that end or start with a number too ("room 101 07700 900123").
BEFORE = ["ok", "lol", "haha", "call me on", "🙂", "my card", *MENTIONS, "", "room 101", "12:30"]
AFTER = ["ok", "thanks", "haha 🙂", "see you at 7", "", "12:30", "101 ok", "7"]


@settings(max_examples=200, deadline=None, derandomize=True)
@given(
    st.sampled_from(DETECTABLE),
    st.sampled_from(BEFORE),
    st.sampled_from(AFTER),
    st.sampled_from([" ", "\n", ": ", " (", "\t"]),
)
def test_a_secret_written_between_words_does_not_survive_into_the_pairs(secret, before, after, sep):
    rows = [
        message(0, OTHERS[0], f"{before}{sep}{secret} {after}".strip()),
        message(1, ME, f"here you go{sep}{secret}"),
    ]
    pairs = pairs_of(rows)
    assert len(pairs) == 1
    assert secret not in pairs["prompt"].iloc[0] and secret not in pairs["reply"].iloc[0]


@pytest.mark.parametrize(
    ("text", "redacted"),
    [
        ("room 101 +44 20 7946 0958", "room 101 <PHONE>"),
        ("room 101 (555) 123-4567", "room 101 <PHONE>"),
        ("meet 12:30 4111 1111 1111 1111", "meet 12:30 <CARD>"),
        ("see you at 7 5500-0000-0000-0004", "see you at 7 <CARD>"),
        ("07700 900123 12:30", "<PHONE> 12:30"),
    ],
)
def test_a_number_right_beside_a_phone_or_card_does_not_hide_it(text, redacted):
    """Found by hypothesis: a phone or card with another number one space away was not even
    a candidate, so it stayed in the training data. Fixed in redaction.py; the neighbour is
    kept."""
    assert find_pii(text) != []
    assert redact_text(text)[0] == redacted


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.lists(fragment, max_size=6).map(" ".join))
def test_redacted_text_has_no_pii_left_and_the_column_path_agrees(text):
    redacted, _ = redact_text(text)
    assert find_pii(redacted) == []
    assert redact_text(redacted)[0] == redacted  # idempotent
    column, _ = redact_series(pd.Series([text, redacted, None], dtype=object))
    assert column.tolist()[:2] == [redacted, redacted]
    assert find_pii_series(pd.Series([redacted])).tolist() == [[]]


# --- files: the real path (DiscordChatExporter JSON through read_exports) -------------------


def write_dce(path: Path, channel: str, messages: list[dict]) -> None:
    document = {
        "guild": {"id": "0", "name": "Direct Messages"},
        "channel": {"id": channel, "type": "DirectTextChat", "name": f"channel {channel}"},
        "messages": [
            {
                "id": m["message_id"],
                "type": "Reply" if m["kind"] == "reply" else "Default",
                "timestamp": m["timestamp"].isoformat(),
                "content": m["content"],
                "author": {"id": m["author_id"], "name": m["author_name"], "isBot": m["is_bot"]},
                "attachments": [],
                **({"reference": {"messageId": m["reply_to_id"]}} if m["reply_to_id"] else {}),
            }
            for m in messages
        ],
    }
    path.write_text(json.dumps(document), encoding="utf-8")


def write_partitions(folder: Path, rows: list[dict], parts: int) -> tuple[list[Path], list[Path]]:
    """Each channel as one whole file, and as ``parts`` partitions overlapping by a message."""
    whole, partitions = [], []
    for channel in sorted({r["channel_id"] for r in rows}):
        messages = [r for r in rows if r["channel_id"] == channel]
        path = folder / f"whole-{channel}.json"
        write_dce(path, channel, messages)
        whole.append(path)
        size = max(1, -(-len(messages) // parts))
        for i in range(0, len(messages), size):
            part = folder / f"part-{channel}-{i}.json"
            write_dce(part, channel, messages[max(0, i - 1) : i + size])
            partitions.append(part)
    return whole, partitions


def pairs_from(files: list[Path]) -> list[tuple]:
    table, _ = build_pairs(read_exports(files).to_pandas(), CONFIG)
    return identity(table.to_pandas())


def exportable(rows: list[dict]) -> list[dict]:
    """What write_dce can express (it writes no attachments and no system messages)."""
    return [r for r in rows if r["kind"] != "system" and not r["has_attachments"]]


FILE_SETTINGS = settings(
    max_examples=20,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@FILE_SETTINGS
@given(chat(), st.integers(1, 3), st.randoms(use_true_random=False))
def test_pair_ids_do_not_depend_on_the_order_export_files_are_given_in(
    tmp_path_factory, rows, parts, rnd
):
    """The same partitioned, overlapping exports (simultaneous messages included) listed in
    any order give the same pairs."""
    rows = exportable(rows)
    if not any(r["author_id"] == ME[0] for r in rows):
        return
    _, partitions = write_partitions(tmp_path_factory.mktemp("exports"), rows, parts)
    reference = pairs_from(sorted(partitions))
    shuffled = list(partitions)
    rnd.shuffle(shuffled)
    assert pairs_from(shuffled) == reference
    assert pairs_from(list(reversed(shuffled))) == reference


@FILE_SETTINGS
@given(chat(gaps=[g for g in GAPS_S if g]), st.integers(2, 3))
def test_partitioned_overlapping_exports_give_the_pairs_of_one_whole_export(
    tmp_path_factory, rows, parts
):
    """Partitions overlapping by a message merge back into the whole export. Timestamps are
    distinct here: see below for two files that start at the same instant."""
    rows = exportable(rows)
    if not any(r["author_id"] == ME[0] for r in rows):
        return
    whole, partitions = write_partitions(tmp_path_factory.mktemp("exports"), rows, parts)
    assert pairs_from(partitions) == pairs_from(whole)


def test_simultaneous_messages_keep_their_order_when_one_file_starts_between_them(tmp_path):
    """Found by hypothesis: two files of one channel that start at the same instant ranked by
    length, so simultaneous messages came out in the longer file's order. The snowflake ids
    of DCE JSON now order them exactly."""
    rows = [message(0, OTHERS[0], "you coming?"), message(1, ME, "yes, on my way")]
    rows[1]["timestamp"] = rows[0]["timestamp"]  # same second: sam asks, alex answers
    rows += [message(2, OTHERS[0], "great, see you"), message(3, ME, "in 5")]
    write_dce(tmp_path / "a.json", "500", rows[:2])  # sam, alex
    write_dce(tmp_path / "b.json", "500", rows[1:])  # alex, sam, alex: starts at the same instant
    whole = tmp_path / "whole.json"
    write_dce(whole, "500", rows)
    assert pairs_from([tmp_path / "a.json", tmp_path / "b.json"]) == pairs_from([whole])


def test_the_generator_reaches_the_interesting_cases():
    """Sanity: generated chats do produce pairs, explicit replies, several sessions and splits."""
    seen = {"pairs": 0, "explicit": 0, "multi_session": 0, "splits": set()}
    for seed in range(40):  # a seeded sweep of similar chats (hypothesis shrinks, not samples)
        rnd = random.Random(seed)
        clock, rows = START, []
        for seq in range(30):
            clock += timedelta(seconds=rnd.choice([5, 40, 4000]))
            who = rnd.choice([ME, *OTHERS[:2]])
            reply = f"500{seq - 2:04d}" if seq > 2 and rnd.random() < 0.2 else None
            rows.append(
                {
                    "source_file": "f.json",
                    "source_format": "discord_json",
                    "channel_id": "500",
                    "channel_name": "c",
                    "message_id": f"500{seq:04d}",
                    "seq": seq,
                    "timestamp": clock,
                    "author_id": who[0],
                    "author_name": who[1],
                    "is_bot": False,
                    "kind": "reply" if reply else "message",
                    "content": rnd.choice(WORDS + PII),
                    "reply_to_id": reply,
                    "has_attachments": False,
                    "attachment_kind": None,
                    "edited": False,
                }
            )
        pairs = pairs_of(rows)
        seen["pairs"] += len(pairs)
        seen["explicit"] += int(pairs["is_explicit_reply"].sum())
        seen["multi_session"] += pairs["session_id"].nunique() > 1
        seen["splits"] |= set(pairs["split"])
    assert seen["pairs"] > 100 and seen["explicit"] > 0 and seen["multi_session"] > 0
    assert seen["splits"] == {"train", "val", "test"}


def test_a_private_key_split_over_two_messages_is_redacted_in_the_turn():
    """Discord cuts messages at 2000 characters, so a pasted 4096-bit key arrives in two
    messages; neither half is a key alone, the joined turn is (found while writing the
    properties above; fixed in conversations.build_pairs)."""
    body = "MIIJKAIBAAKCAgEAx3v" + "Q" * 40
    rows = [
        message(0, OTHERS[0], "send me the deploy key"),
        message(1, ME, f"-----BEGIN RSA PRIVATE KEY-----\n{body}"),
        message(2, ME, f"{body[::-1]}\n-----END RSA PRIVATE KEY-----"),
    ]
    table, report = build_pairs(frame(rows), CONFIG)
    reply = table.column("reply")[0].as_py()
    assert body not in reply and body[::-1] not in reply and "<TOKEN>" in reply
    assert find_pii(reply) == [] and report.redactions["token"] == 1
