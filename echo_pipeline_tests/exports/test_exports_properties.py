"""Property tests: whatever people type survives the trip through an export file."""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from echo_pipeline.exports import read_export

# Any Unicode text except NUL (an export never holds one: it would read as a binary file).
TEXT = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=40
)
# JSON may also carry escaped UTF-16 surrogates, paired (emoji) or lone (broken clients).
JSON_TEXT = st.text(st.characters(blacklist_characters="\x00"), max_size=40)
LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def _normalise_newlines(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n")


@settings(max_examples=40, deadline=None)
@given(st.lists(JSON_TEXT, min_size=1, max_size=5))
def test_json_content_round_trips(contents):
    messages = [
        {
            "id": str(1000 + i),
            "type": "Default",
            "timestamp": f"2023-01-06T14:00:{i:02d}+00:00",
            "content": content,
            "author": {"id": "1", "name": "a", "isBot": False},
        }
        for i, content in enumerate(contents)
    ]
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "export.json"
        # ensure_ascii: emoji as surrogate-pair escapes, exactly as DCE writes them.
        path.write_text(json.dumps({"channel": {"id": "9"}, "messages": messages}))
        got = read_export(path)["content"].to_pylist()
    # Escaped pairs decode to one character; lone halves become U+FFFD.
    expected = [LONE_SURROGATE.sub("\ufffd", json.loads(json.dumps(c))) for c in contents]
    assert got == expected


@settings(max_examples=40, deadline=None)
@given(st.lists(TEXT, min_size=1, max_size=5), st.sampled_from(["\n", "\r\n"]))
def test_csv_content_round_trips(contents, newline):
    lines = ["AuthorID,Author,Date,Content,Attachments,Reactions"]
    for i, content in enumerate(contents):
        quoted = '"' + content.replace('"', '""') + '"'
        lines.append(f'"1","a","2024-01-15T10:30:{i:02d}.0000000+00:00",{quoted},"",""')
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "export.csv"
        path.write_bytes((newline.join(lines) + newline).encode("utf-8"))
        table = read_export(path)
    assert table["content"].to_pylist() == [_normalise_newlines(c) for c in contents]
    assert len(set(table["message_id"].to_pylist())) == len(contents)
