"""PII/secret redaction: labelled corpus, column/row equivalence, and properties."""

from __future__ import annotations

import json
import re
import string
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from echo_pipeline.pairs.redaction import (
    PII_KINDS,
    PLACEHOLDERS,
    evaluate_redaction,
    find_pii,
    find_pii_series,
    redact_series,
    redact_text,
)

CORPUS = Path(__file__).parents[1] / "fixtures" / "redaction" / "corpus.jsonl"


def load_corpus(path: Path = CORPUS) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


@pytest.fixture(scope="module")
def corpus() -> list[dict]:
    return load_corpus()


@pytest.fixture(scope="module")
def report(corpus: list[dict]) -> dict:
    return evaluate_redaction(corpus)


# --------------------------------------------------------------------------- the corpus


def test_corpus_is_big_and_covers_every_kind(corpus: list[dict]) -> None:
    positives = [r for r in corpus if r["kinds"]]
    negatives = [r for r in corpus if not r["kinds"]]
    assert len(positives) >= 150
    assert len(negatives) >= 150
    per_kind = Counter(kind for r in positives for kind in r["kinds"])
    assert set(per_kind) == set(PII_KINDS)
    assert min(per_kind.values()) >= 10, per_kind
    for r in positives:
        assert sorted(r["secrets"]) == sorted(r["kinds"])
        assert all(s in r["text"] for values in r["secrets"].values() for s in values), r


def test_recall_on_labelled_positives(report: dict) -> None:
    for kind, v in report["per_kind"].items():
        print(f"{kind:<16} recall {v['recall']:.1%} ({v['found']}/{v['expected']})")
    print(f"overall recall {report['recall']:.2%} over {report['positives']} labelled kinds")
    assert report["recall"] >= 0.99, report["misses"]
    assert all(v["recall"] >= 0.95 for v in report["per_kind"].values()), report["misses"]


def test_negatives_are_left_exactly_as_they_were(report: dict) -> None:
    print(f"false-positive rate {report['false_positive_rate']:.2%} on {report['negatives']}")
    assert report["changed_negatives"] == []


def test_positives_get_no_placeholder_of_an_unlabelled_kind(report: dict) -> None:
    assert report["unlabelled_kinds_on_positives"] == {}


def test_redacted_corpus_is_clean_and_stable(corpus: list[dict]) -> None:
    for r in corpus:
        redacted, _ = redact_text(r["text"])
        assert find_pii(redacted) == [], (r["text"], redacted)
        assert redact_text(redacted) == (redacted, Counter())
        # Kinds are checked independently on raw text, so overlaps show up too
        # ("postgres://u:pw@db.example.com" also contains an email-shaped "pw@db.example.com").
        assert set(r["kinds"]) <= set(find_pii(r["text"])), r["text"]
        if not r["kinds"]:
            assert find_pii(r["text"]) == [], r["text"]


# ------------------------------------------------------------------- column vs. row API


@pytest.mark.parametrize("dtype", [object, "str"])
def test_redact_series_matches_redact_text_row_by_row(corpus: list[dict], dtype) -> None:
    texts = [r["text"] for r in corpus]
    index = pd.Index([f"m{i}" for i in range(len(texts))][::-1], name="message_id")
    series = pd.Series(texts, index=index, name="content", dtype=dtype)
    out, counts = redact_series(series)

    expected = [redact_text(t) for t in texts]
    assert out.tolist() == [e[0] for e in expected]
    assert out.index.equals(series.index)
    assert out.name == "content"
    assert out.dtype == series.dtype
    total = sum((e[1] for e in expected), Counter())
    assert counts == {kind: total[kind] for kind in PII_KINDS}
    assert list(counts) == list(PII_KINDS)
    assert series.tolist() == texts  # the input is not modified


def test_redact_series_counts_sum_over_rows() -> None:
    rows = ["a@example.com b@example.com", "call 555-123-4567", "nothing here", "8.8.8.8 a@b.io"]
    _, counts = redact_series(pd.Series(rows))
    assert counts == {
        "url_credentials": 0,
        "token": 0,
        "email": 3,
        "card": 0,
        "phone": 1,
        "ip": 1,
    }


def test_redact_series_passes_missing_values_through() -> None:
    series = pd.Series(["mail x@example.com", None, float("nan"), "", "ok"], dtype=object)
    out, counts = redact_series(series)
    assert out.iloc[0] == "mail <EMAIL>"
    assert out.iloc[1] is None
    assert pd.isna(out.iloc[2])
    assert out.iloc[3:].tolist() == ["", "ok"]
    assert counts["email"] == 1
    empty, counts = redact_series(pd.Series([], dtype="str"))
    assert empty.empty and sum(counts.values()) == 0


def test_find_pii_series_matches_find_pii(corpus: list[dict]) -> None:
    texts = pd.Series([r["text"] for r in corpus] + [None])
    found = find_pii_series(texts)
    assert found.tolist() == [find_pii(t) for t in texts[:-1]] + [[]]
    assert find_pii_series(redact_series(texts)[0]).map(len).sum() == 0


# ------------------------------------------------------------------ documented behaviour


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("card 4111 1111 1111 1111 ok", "card <CARD> ok"),
        ("card 4111 1111 1111 1112 ok", "card 4111 1111 1111 1112 ok"),  # fails Luhn
        ("id 123456789012345678 and <@1098765432109876543>", None),  # snowflakes
        ("v1.2.3, 1.2.3 and 12:30:45 on 2023-05-16 for $1200, won 3-2", None),
        ("sk-ating-is-so-much-fun-with-friends", None),
        ("https://example.com/path?q=1", None),
        ("see https://bob:hunter2@db.example.com/x.", "see <URL_WITH_CREDENTIALS>."),
        (
            "DB_PASSWORD=s3cr3t and password: forgotten",
            "DB_PASSWORD=<TOKEN> and password: forgotten",
        ),
        ("token = os.environ['TOKEN']", None),
        ("fe80::1%eth0 but not std::vector or arr[::2]", "<IP> but not std::vector or arr[::2]"),
        ("version 1.2.0.4 vs host 1.2.0.4", "version 1.2.0.4 vs host <IP>"),
        ("git@github.com:org/repo.git icon@2x.png @everyone", None),
    ],
)
def test_documented_cases(text: str, expected: str | None) -> None:
    assert redact_text(text)[0] == (text if expected is None else expected)


def test_placeholders_match_nothing() -> None:
    glued = "".join(PLACEHOLDERS.values())
    spaced = " ".join(PLACEHOLDERS.values())
    for text in (glued, spaced, f"password: {spaced}", f"api_key='{glued}'", f"a{glued}b"):
        assert find_pii(text) == []
        assert redact_text(text) == (text, Counter())


# ------------------------------------------------------------------------- properties


def _luhn_complete(body: str) -> str:
    total = 0
    for i, ch in enumerate(reversed(body)):
        d = int(ch)
        if i % 2 == 0:  # these digits get doubled once the check digit is appended
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return body + str(-total % 10)


@st.composite
def cards(draw: st.DrawFn) -> str:
    sep = draw(st.sampled_from(["", " ", "-"]))
    length = draw(st.integers(13, 16 if sep == "" else 19))
    first = draw(st.sampled_from("23456"))
    body = first + draw(st.text("0123456789", min_size=length - 2, max_size=length - 2))
    number = _luhn_complete(body)
    if not sep:
        return number
    groups = [number[i : i + 4] for i in range(0, len(number), 4)]
    if len(groups[-1]) == 1:  # "4111 1111 1111 1" is not how anyone writes a card
        groups[-2:] = [groups[-2] + groups[-1]]
    return sep.join(groups)


_LABEL = st.from_regex(r"[a-z0-9](?:[a-z0-9-]{0,8}[a-z0-9])?", fullmatch=True)
_TLDS = st.sampled_from(["com", "org", "net", "io", "de", "co", "uk", "fr", "dev", "app"])
emails = st.builds(
    lambda local, labels, tld: f"{local}@{'.'.join(labels)}.{tld}",
    st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.+%-]{0,15}", fullmatch=True),
    st.lists(_LABEL, min_size=1, max_size=3),
    _TLDS,
)
ipv4s = st.tuples(*[st.integers(0, 255)] * 4).map(lambda t: ".".join(map(str, t)))
# Filler words: no digits or '@', and not a word that marks "version 1.2.3.4".
_VERSIONISH = re.compile(r"(?i)(?:v|ver|version|build|release|firmware|patch|rev)$")
words = st.text(string.ascii_letters + "éü😂,!?'()", min_size=1, max_size=8).filter(
    lambda w: not _VERSIONISH.search(w)
)


@st.composite
def messages_with_pii(draw: st.DrawFn) -> tuple[str, list[str]]:
    values = draw(st.lists(st.one_of(emails, cards(), ipv4s), min_size=1, max_size=4))
    parts: list[str] = draw(st.lists(words, max_size=3))
    for value in values:
        parts.append(value)
        parts.extend(draw(st.lists(words, min_size=1, max_size=3)))
    return " ".join(parts), values


@settings(max_examples=300, deadline=None)
@given(messages_with_pii())
def test_embedded_pii_is_gone_and_redaction_is_idempotent(case: tuple[str, list[str]]) -> None:
    text, values = case
    redacted, counts = redact_text(text)
    assert find_pii(redacted) == []
    for value in values:
        assert value not in redacted
    assert sum(counts.values()) >= len(values)
    assert redact_text(redacted) == (redacted, Counter())


# Fragments chosen to collide: PII glued to digits, placeholders, separators, keywords.
_FRAGMENTS = [
    "4111 1111 1111 1111", "4242424242424242", "+44 20 7946 0958", "(555) 123-4567",
    "555-123-4567", "07700 900123", "06 12 34 56 78", "a@example.com", "x.y@mail.co.uk",
    "10.0.0.1", "2001:db8::1", "::1", "fe80::", "12:30:45", "1.2.3", "v", "version ",
    "AKIAQ7Z2EXAMPLE5K3LM", "sk-proj-AbCdEfGhIjKlMnOp1234", "password=", "password: ",
    "token ", "Bearer ", "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.sig",
    "https://u:p4ss@h.example.com/", "https://example.com/", "<EMAIL>", "<CARD>", "<IP>",
    "<PHONE>", "<TOKEN>", "<", ">", " ", "-", ".", ":", "::", "@", "+", "(", ")", "[", "]",
    "0", "1", "12", "123", "2023", "00", "\n", "é", "_", "'", '"', "=",
]  # fmt: skip
adversarial_texts = st.lists(
    st.one_of(st.sampled_from(_FRAGMENTS), st.text(max_size=4)), max_size=12
).map("".join)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(adversarial_texts)
def test_any_text_redacts_to_a_clean_fixed_point(text: str) -> None:
    redacted, _ = redact_text(text)
    assert find_pii(redacted) == []
    assert redact_text(redacted) == (redacted, Counter())


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(adversarial_texts, min_size=1, max_size=25))
def test_series_equals_text_on_adversarial_rows(texts: list[str]) -> None:
    for dtype in (object, "str"):
        out, counts = redact_series(pd.Series(texts, dtype=dtype))
        expected = [redact_text(t) for t in texts]
        assert out.tolist() == [e[0] for e in expected]
        total = sum((e[1] for e in expected), Counter())
        assert counts == {kind: total[kind] for kind in PII_KINDS}
