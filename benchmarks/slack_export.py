"""A big Slack workspace export for benchmarks, and one timed read of it.

    python benchmarks/slack_export.py --messages 100000            # generate (cached), time a read
    python benchmarks/slack_export.py --messages 1000000 --workdir /tmp/slack-bench

``write_slack_export(root, messages)`` is importable (``bench_ingest.py`` can time it beside the
Discord figures): it writes what Slack's "Export data" writes (users.json, channels.json,
groups.json, dms.json, mpims.json, integration_logs.json, and per conversation a folder of daily
``YYYY-MM-DD.json`` arrays, 4-space indented), with the pitfalls the reader handles: threads
whose replies land on later days, thread broadcasts, ``<@U…>`` mentions, ``<url|label>`` links
with unfurls, ``&amp;`` escapes, file uploads, edits, joins, bot messages and Slackbot. Same seed,
same bytes.

The timing runs ``read_exports([root])`` in a fresh interpreter and reports wall and CPU seconds
(imports excluded; CPU seconds are the steadier figure on a shared machine) and that process's
peak RSS.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

START = datetime(2021, 1, 4, tzinfo=UTC)
_WORDS = [
    "the",
    "a",
    "to",
    "and",
    "of",
    "is",
    "it",
    "that",
    "you",
    "in",
    "we",
    "for",
    "on",
    "this",
    "ok",
    "yes",
    "no",
    "maybe",
    "later",
    "ship",
    "deploy",
    "review",
    "merge",
    "build",
    "test",
    "fixed",
    "broken",
    "lunch",
    "meeting",
    "call",
    "tomorrow",
    "today",
    "friday",
    "thanks",
    "sure",
    "lol",
    "hmm",
    "great",
    "idea",
    "why",
    "how",
    "when",
    "what",
    "release",
    "notes",
    "docs",
    "branch",
    "main",
    "prod",
    "staging",
]


def _user_id(i: int) -> str:
    return f"U{i:08d}"


def write_slack_export(
    root: Path,
    messages: int,
    *,
    channels: int = 4,
    people: int = 6,
    per_day: int = 300,
    seed: int = 0,
) -> Path:
    """Write a workspace export of about ``messages`` messages under ``root``; return ``root``.

    ``channels`` public channels plus one DM between the first two people share the messages;
    each conversation gets ``per_day`` messages a day (the last day fewer).
    """
    rnd = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    users = [
        {
            "id": _user_id(i),
            "team_id": "T00000001",
            "name": f"person{i}",
            "real_name": f"Person {i}",
            "is_bot": False,
            "profile": {"display_name": f"p{i}" if i % 2 else "", "real_name": f"Person {i}"},
        }
        for i in range(people)
    ]
    _dump(root / "users.json", users)
    member_ids = [u["id"] for u in users]
    conversations = [(f"C{i:08d}", f"channel-{i}") for i in range(channels)]
    _dump(
        root / "channels.json",
        [
            {"id": cid, "name": name, "created": 1609459200, "members": member_ids}
            for cid, name in conversations
        ],
    )
    _dump(root / "groups.json", [])
    _dump(root / "mpims.json", [])
    dm_id = "D00000001"
    _dump(root / "dms.json", [{"id": dm_id, "created": 1609459200, "members": member_ids[:2]}])
    _dump(root / "integration_logs.json", {"logs": []})

    folders = [name for _, name in conversations] + [dm_id]
    share = -(-messages // len(folders))
    for number, folder in enumerate(folders):
        authors = member_ids[:2] if folder == dm_id else member_ids
        count = min(share, messages - number * share)
        _write_conversation(root / folder, count, authors, per_day, rnd)
    return root


def _write_conversation(
    folder: Path, count: int, authors: list[str], per_day: int, rnd: random.Random
) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    recent_parents: list[str] = []
    day = 0
    written = 0
    while written < count:
        date = START + timedelta(days=day)
        n = min(per_day, count - written)
        seconds = sorted(rnd.sample(range(8 * 3600, 20 * 3600), n))
        batch = []
        for offset in seconds:
            ts = f"{int((date + timedelta(seconds=offset)).timestamp())}.{rnd.randrange(10**6):06d}"
            batch.append(_message(ts, authors, recent_parents, rnd))
        (folder / f"{date:%Y-%m-%d}.json").write_text(
            json.dumps(batch, indent=4, ensure_ascii=False), encoding="utf-8"
        )
        written += n
        day += 1


def _message(ts: str, authors: list[str], parents: list[str], rnd: random.Random) -> dict:
    user = rnd.choice(authors)
    words = rnd.choices(_WORDS, k=max(1, int(rnd.lognormvariate(2.0, 0.8))))
    roll = rnd.random()
    if roll < 0.01:
        return {"type": "message", "subtype": "bot_message", "text": " ".join(words),
                "ts": ts, "username": "ci", "bot_id": "B00000001"}  # fmt: skip
    if roll < 0.015:
        return {"type": "message", "subtype": "channel_join", "user": user, "ts": ts,
                "text": f"<@{user}> has joined the channel"}  # fmt: skip
    if roll < 0.02:
        return {"type": "message", "user": "USLACKBOT", "text": "Reminder: standup.", "ts": ts}
    msg: dict = {
        "client_msg_id": f"{rnd.getrandbits(64):016x}",
        "type": "message",
        "text": " ".join(words),
        "user": user,
        "ts": ts,
        "team": "T00000001",
        "blocks": [{"type": "rich_text", "block_id": "b", "elements": []}],
    }
    if roll < 0.05:
        msg["text"] = f"<@{rnd.choice(authors)}> {msg['text']} &amp; more"
    elif roll < 0.07:
        msg["text"] += " <https://example.com/docs|the docs>"
        msg["attachments"] = [{"from_url": "https://example.com/docs", "title": "Docs"}]
    elif roll < 0.08:
        msg["text"] = ""
        msg["files"] = [{"id": "F1", "name": "shot.png", "mimetype": "image/png"}]
    if rnd.random() < 0.03:
        msg["edited"] = {"user": user, "ts": ts}
    if parents and rnd.random() < 0.12:
        msg["thread_ts"] = rnd.choice(parents)
        msg["parent_user_id"] = authors[0]
        if rnd.random() < 0.1:
            msg["subtype"] = "thread_broadcast"
    elif rnd.random() < 0.05:
        msg["thread_ts"] = ts
        parents.append(ts)
        del parents[:-20]  # replies go to one of the last 20 threads, often on a later day
    return msg


def _dump(path: Path, value) -> None:
    path.write_text(json.dumps(value, indent=4, ensure_ascii=False), encoding="utf-8")


_TIMED = """
import resource, sys, time
import pandas  # noqa: F401  (read_exports imports it lazily; an import, not reading)
from echo_pipeline.exports import read_exports
start, cpu = time.perf_counter(), time.process_time()
table = read_exports([sys.argv[1]])
seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(f"{table.num_rows} rows, {table['channel_id'].unique().to_pylist().__len__()} channels, "
      f"read_exports {seconds:.2f} s wall, {cpu:.2f} s CPU, peak RSS {rss:.0f} MiB")
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/echo-slack-bench"))
    args = parser.parse_args(argv)
    root = args.workdir / f"slack-{args.messages}"
    if not (root / "users.json").exists():
        write_slack_export(root, args.messages)
    files = sum(1 for _ in root.rglob("*.json"))
    print(f"{root}: {files} JSON files")
    subprocess.run([sys.executable, "-c", _TIMED, str(root)], check=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
