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

from echo_pipeline import conversations
from echo_pipeline.conversations import PairingConfig, build_pairs
from echo_pipeline.exports import read_exports
from echo_pipeline.redaction import find_pii, find_pii_series, redact_series, redact_text
from echo_pipeline.schemas import CHAT_MESSAGES

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
MENTIONS = ["<@123456789012345678>", "<@&987654321098765432>", "<#555555555555555555>", "<:pog:1234>"]

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


@st.composite
def chat(draw) -> list[dict]:
    """Rows of CHAT_MESSAGES for 1-2 channels, one file per channel (seq unique per file)."""
    others = draw(st.lists(st.sampled_from(OTHERS), min_size=1, max_size=3, unique=True))
    people = [ME, *others]
    rows: list[dict] = []
    for channel in draw(st.lists(st.sampled_from(["500", "600"]), min_size=1, max_size=2, unique=True)):
        clock = START
        ids: list[str] = []
        for seq in range(draw(st.integers(0, 24))):
            clock += timedelta(seconds=draw(st.sampled_from([0, 5, 40, 200, 400, 3000, 4000, 90000])))
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
    originals = [r["content"] for r in rows]
    raw = {f for f in PII if any(f in o for o in originals)}
    for secret in raw:  # the raw values themselves never survive (those that are PII alone)
        if find_pii(secret):
            assert not any(secret in t for t in texts), secret


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


@settings(max_examples=25, deadline=None, derandomize=True)
@given(chat(), st.integers(1, 3), st.randoms(use_true_random=False))
def test_pair_ids_do_not_depend_on_how_exports_are_split_into_files_or_listed(
    tmp_path_factory, rows, parts, rnd
):
    """Each channel exported in 1-3 partitions (with an overlapping message between parts)
    and the files listed in a random order give the same pairs as one file per channel."""
    rows = [r for r in rows if r["kind"] != "system" and not r["has_attachments"]]
    if not any(r["author_id"] == ME[0] for r in rows):
        return
    folder = tmp_path_factory.mktemp("exports")
    whole, split_files = [], []
    for channel in sorted({r["channel_id"] for r in rows}):
        messages = [r for r in rows if r["channel_id"] == channel]
        path = folder / f"whole-{channel}.json"
        write_dce(path, channel, messages)
        whole.append(path)
        size = max(1, -(-len(messages) // parts))
        for i in range(0, len(messages), size):
            part = folder / f"part-{channel}-{i}.json"
            write_dce(part, channel, messages[max(0, i - 1) : i + size])  # overlap by one
            split_files.append(part)
    rnd.shuffle(split_files)

    def pairs_from(files: list[Path]) -> list[tuple]:
        table, _ = build_pairs(read_exports(files).to_pandas(), CONFIG)
        return identity(table.to_pandas())

    reference = pairs_from(whole)
    assert pairs_from(split_files) == reference
    assert pairs_from(list(reversed(whole))) == reference


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
