"""A Messenger "Download your information" JSON thread set of any size, for the ingest benchmark.

    python benchmarks/meta_export.py /tmp/meta-1m --messages 1000000        # generate, then time
    python benchmarks/meta_export.py /tmp/meta-1m --messages 1000000 --no-read

``generate_meta_export(root, n)`` writes ``root/your_facebook_activity/messages/inbox/<thread>/
message_K.json`` the way Meta does: 10,000 messages a file, ``message_1.json`` holding the newest,
every file newest first, every string UTF-8 escaped as Latin-1 code points (accents and emoji
become ``\\u00c3\\u00a9``-style escapes), 2-space indentation. Three threads: a 1:1 with most of
the messages, a group, and a small 1:1. The owner ("Alex Owner") speaks in all of them. Mixed
in at realistic rates: photos, videos, audio, stickers, shares with and without text, the
"sent an attachment." placeholder, reactions, unsent messages, calls and group events.
Same seed, same bytes.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import sys
import time
from pathlib import Path

OWNER = "Alex Owner"
PER_FILE = 10_000  # Meta's largest message_K.json
START_MS = 1_577_836_800_000  # 2020-01-01T00:00:00Z
THREADS = (  # (folder, title, participants, share of all messages)
    ("samrivera_10158000000000001", "Sam Rivera", ("Sam Rivera", OWNER), 0.70),
    ("weekendcrew_10158000000000002", "Weekend crew", ("Chloé Dupont", "Jordan Lee", OWNER), 0.25),
    ("zoeblanc_10158000000000003", "Zoë Blanc", ("Zoë Blanc", OWNER), 0.05),
)
_WORDS = [
    "ok",
    "yes",
    "no",
    "maybe",
    "tonight",
    "tomorrow",
    "coffee",
    "café",
    "déjà",
    "vu",
    "the",
    "a",
    "to",
    "and",
    "you",
    "me",
    "we",
    "lunch",
    "train",
    "late",
    "sorry",
    "haha",
    "lol",
    "ça",
    "va",
    "très",
    "bien",
    "merci",
    "naïve",
    "résumé",
    "dinner",
    "movie",
    "game",
    "later",
    "now",
]
_EMOJI = ("😀", "😂", "❤", "👍", "🎉", "🙈", "☕")


def _moji(text: str) -> str:
    return text.encode("utf-8").decode("latin-1")


def _message(rng: random.Random, sender: str, ms: int, folder: str, people: tuple) -> dict:
    message: dict = {"sender_name": _moji(sender), "timestamp_ms": ms}
    r = rng.random()
    if r < 0.05:
        message["photos"] = [
            {"uri": f"messages/inbox/{folder}/photos/{ms}.jpg", "creation_timestamp": ms // 1000}
        ]
    elif r < 0.06:
        message["videos"] = [
            {"uri": f"messages/inbox/{folder}/videos/{ms}.mp4", "creation_timestamp": ms // 1000}
        ]
    elif r < 0.07:
        message["audio_files"] = [
            {"uri": f"messages/inbox/{folder}/audio/{ms}.mp4", "creation_timestamp": ms // 1000}
        ]
    elif r < 0.075:
        message["sticker"] = {"uri": "messages/stickers_used/369239263222822.png"}
    elif r < 0.085:
        message["content"] = _moji(f"{sender} sent an attachment.")
        message["share"] = {"link": f"https://www.instagram.com/reel/{ms:x}/"}
    elif r < 0.095:
        link = f"https://example.com/{ms:x}"
        message["content"] = _moji(f"regarde ça {link}")
        message["share"] = {"link": link}
        message["type"] = "Share"
    elif r < 0.10:
        message["is_unsent"] = True
    elif r < 0.105:
        message["content"] = _moji("The video chat ended.")
        message["type"] = "Call"
        message["call_duration"] = rng.randint(0, 3600)
    elif r < 0.11:
        other = people[0] if sender != people[0] else people[-1]
        message["content"] = _moji(f"{sender} reacted 😍 to your message ")
        message["reactions"] = [{"reaction": _moji("😍"), "actor": _moji(other)}]
    else:
        length = max(1, int(rng.lognormvariate(1.6, 0.8)))
        words = rng.choices(_WORDS, k=length)
        if rng.random() < 0.25:
            words.append(rng.choice(_EMOJI))
        message["content"] = _moji(" ".join(words))
        if rng.random() < 0.05:
            message["reactions"] = [{"reaction": _moji("❤"), "actor": _moji(OWNER)}]
    message.setdefault("type", "Generic")
    message["is_geoblocked_for_viewer"] = False
    return message


def generate_meta_export(root: Path, n: int, seed: int = 0) -> dict:
    """Write an ``n``-message Messenger legacy thread set under ``root``; returns a summary."""
    rng = random.Random(seed)
    inbox = root / "your_facebook_activity" / "messages" / "inbox"
    files = []
    left = n
    for t, (folder, title, people, share) in enumerate(THREADS):
        count = left if t == len(THREADS) - 1 else int(n * share)
        left -= count
        ms = START_MS
        messages = []
        speaker = 0
        for _ in range(count):
            ms += 1000 + int(rng.lognormvariate(9.5, 1.3)) + (3_600_000 * (rng.random() < 0.03))
            if rng.random() < 0.55:
                speaker = (speaker + 1) % len(people)
            messages.append(_message(rng, people[speaker], ms, folder, people))
        messages.reverse()  # newest first, across the files too
        for k, start in enumerate(range(0, max(count, 1), PER_FILE), start=1):
            document = {
                "participants": [{"name": _moji(p)} for p in people],
                "messages": messages[start : start + PER_FILE],
                "title": _moji(title),
                "is_still_participant": True,
                "thread_path": f"inbox/{folder}",
                "magic_words": [],
            }
            path = inbox / folder / f"message_{k}.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(document, indent=2), encoding="utf-8")
            files.append(path)
    size = sum(p.stat().st_size for p in files)
    return {"messages": n, "files": len(files), "bytes": size, "owner": OWNER}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root", type=Path)
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-read", action="store_true", help="only generate")
    args = parser.parse_args(argv)
    if not (args.root / "your_facebook_activity").exists():
        began = time.perf_counter()
        summary = generate_meta_export(args.root, args.messages, args.seed)
        summary["generate_s"] = round(time.perf_counter() - began, 1)
        print(json.dumps(summary))
    if args.no_read:
        return 0
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from echo_pipeline.exports import read_exports

    began = time.perf_counter()
    table = read_exports([args.root])
    seconds = time.perf_counter() - began
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        json.dumps(
            {
                "rows": table.num_rows,
                "channels": len(table["channel_id"].unique()),
                "read_exports_s": round(seconds, 2),
                "peak_rss_mib": round(peak_mib),
            }
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
