"""Chat export -> conversation pairs at scale: time and peak RSS, against a naive baseline.

    python benchmarks/bench_ingest.py                      # 100k and 1M messages, 3 rounds
    python benchmarks/bench_ingest.py --sizes 100000 --rounds 2
    python benchmarks/bench_ingest.py --profile 1000000    # cProfile of the project path
    python benchmarks/bench_ingest.py --source telegram --sizes 1000000 --no-naive
    python benchmarks/bench_ingest.py --source meta --sizes 1000000 --no-naive    # also slack

``--source`` picks the export generated (default ``discord``): ``telegram`` writes one Telegram
Desktop ``result.json`` (``echo_pipeline_tests/exports/telegram_synthetic.py``), ``meta`` a
Messenger legacy thread set of 10,000-message files, newest first, with Meta's escaped UTF-8
(``benchmarks/meta_export.py``), ``slack`` a workspace export of daily files
(``benchmarks/slack_export.py``). The naive baseline reads only the Discord shape.

For each size a DiscordChatExporter-2.4x-shaped JSON export is generated once (cached in
``--workdir``; same seed, same bytes): three people in one channel (``alex`` is "me"), ~8 %
replies to a recent message, lognormal message lengths, attachments, reactions, mentions, edits,
raw ``<@id>`` mentions and custom emoji, surrogate-pair emoji escapes, a little PII, a bot and
system messages, sessions separated by long silences; 2-space indentation and DCE's key order.

Each measurement runs in a fresh interpreter, so its peak RSS (``ru_maxrss`` of that process,
imports included) belongs to it alone:

* ``project``: ``read_exports`` -> ``to_pandas`` -> ``build_pairs`` with redaction on, the same
  calls as the ``chat_messages`` / ``conversation_pairs`` assets and ``echo-pipeline pairs``;
  the seconds exclude interpreter start and imports (reported apart).
* ``naive``: ``json.load`` of the whole file plus a Python loop that keeps human messages and
  pairs each of my messages with the message before it when someone else wrote it. It does
  less than the project path (no merging into turns, sessions, explicit replies, context,
  redaction, filters or splits), so the ratio understates the difference in work done.

Rounds interleave (project, naive, project, naive...) and the best of each is reported beside
the load average seen at its start, because the machine is shared.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common

ME = ("291274804919574979", "alex")
PEOPLE = [
    ME,
    ("474512070050754567", "sam"),
    ("646818001697493003", "jordan"),
]
BOT = ("708683455994560513", "DJ Bot")
CHANNEL_ID = "929467687237632004"
GUILD_ID = "929467687199883266"
DISCORD_EPOCH_MS = 1_420_070_400_000
START_MS = 1_577_836_800_000  # 2020-01-01T00:00:00Z

# Words as they appear inside a JSON string (already escaped); emoji outside the BMP are written
# the way DCE writes them, as upper-case surrogate-pair escapes.
_WORDS = [
    "the",
    "a",
    "to",
    "i",
    "you",
    "it",
    "and",
    "is",
    "that",
    "of",
    "in",
    "for",
    "on",
    "my",
    "me",
    "so",
    "lol",
    "yeah",
    "no",
    "ok",
    "just",
    "but",
    "not",
    "this",
    "what",
    "do",
    "was",
    "be",
    "have",
    "are",
    "with",
    "like",
    "get",
    "can",
    "it's",
    "i'm",
    "all",
    "if",
    "we",
    "at",
    "up",
    "out",
    "about",
    "gonna",
    "go",
    "going",
    "know",
    "think",
    "really",
    "one",
    "good",
    "time",
    "day",
    "now",
    "today",
    "tonight",
    "tomorrow",
    "work",
    "home",
    "game",
    "play",
    "new",
    "see",
    "watch",
    "movie",
    "episode",
    "dinner",
    "food",
    "coffee",
    "sleep",
    "tired",
    "late",
    "bus",
    "train",
    "haha",
    "lmao",
    "omg",
    "wait",
    "why",
    "how",
    "when",
    "where",
    "who",
    "did",
    "does",
    "got",
    "want",
    "need",
    "love",
    "sure",
    "maybe",
    "probably",
    "actually",
    "literally",
    "honestly",
    "anyway",
    "though",
    "still",
    "already",
    "again",
    "also",
    "too",
    "very",
    "much",
    "more",
    "last",
    "next",
    "week",
    "weekend",
    "morning",
    "night",
    "later",
    "soon",
    "never",
    "always",
    "u",
    "ur",
    "rn",
    "tbh",
    "idk",
    "ngl",
    "btw",
    "fr",
    "nice",
    "cool",
    "great",
    "sorry",
    "thanks",
    "pls",
    "please",
    "hey",
    "hi",
    "yo",
    "hello",
    "bro",
    "dude",
    "man",
]
_EMOJI = ["\\uD83D\\uDE02", "\\uD83D\\uDE2D", "\\uD83D\\uDC80", "\\uD83D\\uDE4F", "\\u2764\\uFE0F"]
_EXTRAS = [
    "<@474512070050754567>",
    "<@646818001697493003>",
    "<:kekw:934251097383477248>",
    "https://youtu.be/dQw4w9WgXcQ",
    '\\"quoted\\"',
    "\\n",
]
_PII = [
    "mail me at jamie.doe{n}@example.com",
    "call +44 20 7946 {n:04d}",
    "my number is 555-201-{n:04d}",
    "server is at 10.0.{a}.{b}",
    "token ghp_{n:08d}aBcDeFgHiJkLmNoPqRsTuVwXyZ012345",
]
_SYSTEM_TYPES = ["GuildMemberJoin", "ChannelPinnedMessage", "Call"]


def _iso(ms: int, frac_digits: int) -> str:
    """DCE 2.41+ local time at UTC-5 with 0-7 fraction digits (trailing zeros dropped)."""
    local = ms - 5 * 3_600_000
    days, rem = divmod(local, 86_400_000)
    # civil-from-days (H. Hinnant), fast and dependency-free
    z = days + 719_468
    era = z // 146_097
    doe = z - era * 146_097
    yoe = (doe - doe // 1460 + doe // 36_524 - doe // 146_096) // 365
    y = yoe + era * 400
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    d = doy - (153 * mp + 2) // 5 + 1
    m = mp + 3 if mp < 10 else mp - 9
    y += m <= 2
    hh, rem = divmod(rem, 3_600_000)
    mm, rem = divmod(rem, 60_000)
    ss, msec = divmod(rem, 1000)
    frac = ""
    if frac_digits:
        frac = ("." + f"{msec:03d}{(ms * 7919) % 10_000:04d}"[:frac_digits]).rstrip("0")
        frac = "" if frac == "." else frac
    return f"{y:04d}-{m:02d}-{d:02d}T{hh:02d}:{mm:02d}:{ss:02d}{frac}-05:00"


def _user(person: tuple[str, str], is_bot: bool, indent: str) -> str:
    uid, name = person
    avatar = (
        f"https://cdn.discordapp.com/avatars/{uid}/a3f9c1e07b2d4865c0e1f2a3b4c5d6e7.png?size=512"
    )
    i2 = indent + "  "
    return (
        f'{{\n{i2}"id": "{uid}",\n{i2}"name": "{name}",\n{i2}"discriminator": "0000",\n'
        f'{i2}"nickname": "{name}",\n{i2}"color": null,\n{i2}"isBot": {"true" if is_bot else "false"},\n'
        f'{i2}"roles": [],\n{i2}"avatarUrl": "{avatar}"\n{indent}}}'
    )


def generate_export(path: Path, n: int, seed: int = 0) -> dict:
    """Write an ``n``-message DCE-shaped export to ``path``; returns a summary."""
    rng = random.Random(seed)
    users = {p: _user(p, False, "      ") for p in PEOPLE}
    users[BOT] = _user(BOT, True, "      ")
    mention_users = {p: _user(p, False, "        ") for p in PEOPLE}
    words, emoji, extras = _WORDS, _EMOJI, _EXTRAS
    ms = START_MS
    increment = 0
    ids: list[str] = []
    author_idx = 0
    counts = {"reply": 0, "system": 0, "bot": 0, "attachments": 0, "pii": 0}
    header = (
        '{\n  "guild": {\n    "id": "' + GUILD_ID + '",\n    "name": "Friends",\n'
        '    "iconUrl": "https://cdn.discordapp.com/embed/avatars/0.png"\n  },\n'
        '  "channel": {\n    "id": "' + CHANNEL_ID + '",\n    "type": "GuildTextChat",\n'
        '    "categoryId": "929467687233437699",\n    "category": "Text Channels",\n'
        '    "name": "general",\n    "topic": null\n  },\n'
        '  "dateRange": {\n    "after": null,\n    "before": null\n  },\n'
        '  "exportedAt": "2025-12-25T10:51:47.4185646-05:00",\n  "messages": [\n'
    )
    lognormvariate, random_, choices = rng.lognormvariate, rng.random, rng.choices
    tmp = path.with_suffix(".tmp")
    with tmp.open("w", encoding="utf-8", newline="\n") as out:
        out.write(header)
        buf: list[str] = []
        for i in range(n):
            # Time: mostly seconds to minutes apart; now and then hours (a new session).
            r = random_()
            if r < 0.03:
                ms += int(3_600_000 * (1 + 20 * random_()))
            else:
                ms += 1000 + int(lognormvariate(9.5, 1.3))
            increment = (increment + 1) & 0xFFF
            mid = str(((ms - DISCORD_EPOCH_MS) << 22) | (1 << 17) | increment)
            ids.append(mid)
            # Speaker: turns change hands often, one person sometimes sends a burst.
            if random_() < 0.55:
                author_idx = (author_idx + 1 + (random_() < 0.3)) % len(PEOPLE)
            person, is_bot = PEOPLE[author_idx], False
            kind = "Default"
            reference = ""
            mentions = "[]"
            r = random_()
            if r < 0.005:
                kind = _SYSTEM_TYPES[i % 3]
                counts["system"] += 1
            elif r < 0.015:
                person, is_bot = BOT, True
                counts["bot"] += 1
            elif r < 0.095 and i > 2:
                kind = "Reply"
                counts["reply"] += 1
                target = ids[max(0, i - 1 - int(random_() * 20))]
                reference = (
                    ',\n      "reference": {\n        "type": "Default",\n'
                    f'        "messageId": "{target}",\n'
                    f'        "channelId": "{CHANNEL_ID}",\n        "guildId": "{GUILD_ID}"\n      }}'
                )
                if random_() < 0.5:
                    mentioned = PEOPLE[(author_idx + 1) % len(PEOPLE)]
                    mentions = "[\n        " + mention_users[mentioned] + "\n      ]"
            # Content: lognormal word count (median ~6 words, long tail), a few extras.
            n_words = max(1, min(400, int(lognormvariate(1.8, 0.9))))
            parts = choices(words, k=n_words)
            if random_() < 0.12:
                parts.append(emoji[i % len(emoji)])
            if random_() < 0.06:
                parts.insert(int(random_() * len(parts)), extras[i % len(extras)])
            if random_() < 0.004:
                parts.append(
                    _PII[i % len(_PII)].format(n=i % 10_000, a=i % 250, b=(i // 250) % 250)
                )
                counts["pii"] += 1
            content = " ".join(parts)
            attachments = "[]"
            if random_() < 0.03:
                counts["attachments"] += 1
                att_id = str(int(mid) + 7)
                if random_() < 0.4:
                    content = ""
                attachments = (
                    '[\n        {\n          "id": "' + att_id + '",\n'
                    f'          "url": "https://cdn.discordapp.com/attachments/{CHANNEL_ID}/{att_id}/image.png?ex=65d10529",\n'
                    '          "fileName": "image.png",\n          "fileSizeBytes": 767722\n'
                    "        }\n      ]"
                )
            if kind in _SYSTEM_TYPES:
                content = "Joined the server." if kind == "GuildMemberJoin" else "Pinned a message."
            reactions = "[]"
            if random_() < 0.04:
                reactions = (
                    '[\n        {\n          "emoji": {\n            "id": "",\n'
                    '            "name": "\\uD83D\\uDE2D",\n            "code": "sob",\n'
                    '            "isAnimated": false,\n'
                    '            "imageUrl": "https://cdn.jsdelivr.net/gh/twitter/twemoji@latest/assets/svg/1f62d.svg"\n'
                    '          },\n          "count": 1\n        }\n      ]'
                )
            edited = "null"
            if random_() < 0.04:
                edited = '"' + _iso(ms + 60_000, 7) + '"'
            buf.append(
                f'    {{\n      "id": "{mid}",\n      "type": "{kind}",\n'
                f'      "timestamp": "{_iso(ms, i % 8)}",\n'
                f'      "timestampEdited": {edited},\n      "callEndedTimestamp": null,\n'
                f'      "isPinned": false,\n      "content": "{content}",\n'
                f'      "author": {users[person] if not is_bot else users[BOT]},\n'
                f'      "attachments": {attachments},\n      "embeds": [],\n'
                f'      "stickers": [],\n      "reactions": {reactions},\n'
                f'      "mentions": {mentions}{reference},\n      "inlineEmojis": []\n    }}'
            )
            if len(buf) >= 10_000:
                out.write(",\n".join(buf))
                buf.clear()
                if i + 1 < n:
                    out.write(",\n")
        if buf:
            out.write(",\n".join(buf))
        out.write(f'\n  ],\n  "messageCount": {n}\n}}')
    tmp.replace(path)
    return {"messages": n, "bytes": path.stat().st_size, **counts}


def export_path(workdir: Path, n: int, seed: int) -> Path:
    """The cached export for ``n`` messages (file name in DCE's default style)."""
    folder = workdir / f"export-{n}-seed{seed}"
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"Friends - Text Channels - general [{CHANNEL_ID}].json"


def ensure_export(workdir: Path, n: int, seed: int) -> tuple[Path, dict]:
    path = export_path(workdir, n, seed)
    # Beside the folder, not in it: the folder must hold only the export, so that
    # `echo-pipeline pairs <folder>` and read_exports(<folder>) work on it too.
    meta = path.parent.with_name(path.parent.name + ".summary.json")
    path.with_name("summary.json").unlink(missing_ok=True)
    if path.exists() and meta.exists():
        return path, json.loads(meta.read_text())
    started = time.perf_counter()
    summary = generate_export(path, n, seed)
    summary["generate_s"] = round(time.perf_counter() - started, 1)
    meta.write_text(json.dumps(summary))
    return path, summary


# --- the measured children --------------------------------------------------------------------


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


#: "me" in each source's generated export (the Discord one's is ``ME``).
SOURCE_ME = {"discord": ME[1], "telegram": "user1001", "meta": "Alex Owner", "slack": "U00000000"}


def ensure_source_export(workdir: Path, source: str, n: int, seed: int) -> tuple[Path, dict]:
    """The cached ``n``-message export of another app (a file or a folder) and its summary."""
    if source == "discord":
        return ensure_export(workdir, n, seed)
    folder = workdir / f"{source}-{n}-seed{seed}"
    done = folder.with_name(folder.name + ".summary.json")
    if done.exists():
        return folder, json.loads(done.read_text())
    started = time.perf_counter()
    folder.mkdir(parents=True, exist_ok=True)
    if source == "telegram":
        sys.path.insert(0, str(_common.REPO))
        from echo_pipeline_tests.exports.telegram_synthetic import write_synthetic_telegram

        write_synthetic_telegram(folder / "result.json", n, seed=seed)
    elif source == "meta":
        from meta_export import generate_meta_export

        generate_meta_export(folder, n, seed)
    else:
        from slack_export import write_slack_export

        write_slack_export(folder, n, seed=seed)
    files = [p for p in folder.rglob("*") if p.is_file()]
    summary = {
        "source": source,
        "bytes": sum(p.stat().st_size for p in files),
        "files": len(files),
        "generate_s": round(time.perf_counter() - started, 1),
    }
    done.write_text(json.dumps(summary))
    return folder, summary


def _child_project(path: Path, stages: bool, me: str = ME[1]) -> dict:
    t0 = time.perf_counter()
    from echo_pipeline.exports import read_exports
    from echo_pipeline.pairs import conversations
    from echo_pipeline.pairs.conversations import PairingConfig, build_pairs

    imports_s = time.perf_counter() - t0
    rss_after_imports = _peak_rss_mib()
    timings: dict[str, float] = {}
    if stages:  # wrap the steps build_pairs calls through module globals
        for name in (
            "resolve_me",
            "clean_messages",
            "build_turns",
            "_prompt_turns",
            "_context_column",
        ):
            original = getattr(conversations, name)

            def timed(*args, _f=original, _n=name, **kwargs):
                s = time.perf_counter()
                try:
                    return _f(*args, **kwargs)
                finally:
                    timings[_n] = timings.get(_n, 0.0) + time.perf_counter() - s

            setattr(conversations, name, timed)
        import echo_pipeline.pairs.redaction as redaction

        original_redact = conversations.redact_series

        def timed_redact(*args, **kwargs):
            s = time.perf_counter()
            try:
                return original_redact(*args, **kwargs)
            finally:
                timings["redact_series"] = time.perf_counter() - s

        conversations.redact_series = timed_redact
        assert redaction  # imported for clarity of what is wrapped
    t1 = time.perf_counter()
    table = read_exports([path])
    t2 = time.perf_counter()
    frame = table.to_pandas()
    t3 = time.perf_counter()
    pairs, report = build_pairs(frame, PairingConfig(me=(me,), redact=True))
    t4 = time.perf_counter()
    result = {
        "variant": "project",
        "seconds": t4 - t1,
        "read_exports_s": t2 - t1,
        "to_pandas_s": t3 - t2,
        "build_pairs_s": t4 - t3,
        "imports_s": imports_s,
        "messages": table.num_rows,
        "pairs": pairs.num_rows,
        "turns": report.turns,
        "sessions": report.sessions,
        "explicit_reply_pairs": report.explicit_reply_pairs,
        "redactions": report.redactions,
        "rss_after_imports_mib": rss_after_imports,
        "peak_rss_mib": _peak_rss_mib(),
    }
    if stages:
        result["stages_s"] = {k: round(v, 3) for k, v in timings.items()}
    return result


def _child_naive(path: Path) -> dict:
    t1 = time.perf_counter()
    with path.open(encoding="utf-8") as handle:
        export = json.load(handle)
    t2 = time.perf_counter()
    me = ME[0]
    pairs = []
    prev_author = prev_content = None
    for message in export["messages"]:
        if message.get("type") not in ("Default", "Reply") or message["author"].get("isBot"):
            continue
        content = (message.get("content") or "").strip()
        if not content:
            continue
        author = message["author"]["id"]
        if author == me and prev_author is not None and prev_author != me:
            pairs.append({"prompt": prev_content, "reply": content})
        prev_author, prev_content = author, content
    t3 = time.perf_counter()
    return {
        "variant": "naive",
        "seconds": t3 - t1,
        "json_load_s": t2 - t1,
        "loop_s": t3 - t2,
        "messages": len(export["messages"]),
        "pairs": len(pairs),
        "peak_rss_mib": _peak_rss_mib(),
    }


def run_child(variant: str, path: Path, stages: bool = False, source: str = "discord") -> dict:
    """One measurement in a fresh interpreter; its JSON result comes back on stdout."""
    command = [sys.executable, __file__, "--child", variant, "--file", str(path)]
    command += ["--source", source]
    if stages:
        command.append("--stages")
    load = _common.load_str()
    wall = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, cwd=_common.REPO)
    wall = time.perf_counter() - wall
    if done.returncode != 0:
        raise RuntimeError(f"{variant} child failed:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["process_wall_s"] = wall
    result["load_at_start"] = load
    return result


def profile(path: Path, top: int) -> None:
    """cProfile of the project path, sorted by cumulative and by own time."""
    import cProfile
    import pstats

    from echo_pipeline.exports import read_exports
    from echo_pipeline.pairs.conversations import PairingConfig, build_pairs

    profiler = cProfile.Profile()
    profiler.enable()
    table = read_exports([path])
    build_pairs(table.to_pandas(), PairingConfig(me=(ME[1],), redact=True))
    profiler.disable()
    stats = pstats.Stats(profiler)
    stats.sort_stats("cumulative").print_stats(top)
    stats.sort_stats("tottime").print_stats(top)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="100000,1000000", help="messages per export")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved repetitions")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--workdir",
        type=Path,
        default=Path(os.environ.get("TMPDIR", "/tmp")) / "echo_pipeline_bench",
        help="where the generated exports are cached",
    )
    parser.add_argument("--no-naive", action="store_true", help="skip the naive baseline")
    parser.add_argument("--stages", action="store_true", help="time build_pairs' steps too")
    parser.add_argument("--profile", type=int, metavar="N", help="cProfile the N-message run")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--source", choices=sorted(SOURCE_ME), default="discord")
    parser.add_argument("--child", choices=["project", "naive"], help=argparse.SUPPRESS)
    parser.add_argument("--file", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child:
        result = (
            _child_project(args.file, args.stages, SOURCE_ME[args.source])
            if args.child == "project"
            else _child_naive(args.file)
        )
        print(json.dumps(result))
        return 0
    if args.profile:
        path, _ = ensure_export(args.workdir, args.profile, args.seed)
        profile(path, 30)
        return 0

    info = _common.machine("msgspec", "pandas", "pyarrow", "numpy")
    _common.print_machine(info)
    report: dict = {"machine": info, "command": _common.command_line(), "sizes": []}
    for n in (int(s) for s in args.sizes.split(",")):
        path, summary = ensure_source_export(args.workdir, args.source, n, args.seed)
        if args.source == "discord":
            print(
                f"\n## {n:,} messages: {summary['bytes'] / 2**20:,.0f} MiB "
                f"({summary['bytes'] / n:,.0f} B/message), replies {summary['reply']:,}, "
                f"bots {summary['bot']:,}, system {summary['system']:,}, "
                f"attachments {summary['attachments']:,}, PII {summary['pii']:,}",
                flush=True,
            )
        else:
            print(
                f"\n## {args.source}, {n:,} messages: {summary['bytes'] / 2**20:,.0f} MiB in "
                f"{summary['files']:,} file(s) (generated in {summary['generate_s']} s)",
                flush=True,
            )
        runs: dict[str, list[dict]] = {"project": [], "naive": []}
        naive = not args.no_naive and args.source == "discord"
        variants = ["project", "naive"] if naive else ["project"]
        for round_no in range(args.rounds):
            for variant in variants if round_no % 2 == 0 else variants[::-1]:
                result = run_child(
                    variant, path, stages=args.stages and variant == "project", source=args.source
                )
                runs[variant].append(result)
                extra = ""
                if variant == "project":
                    extra = (
                        f" [read {result['read_exports_s']:.2f} + pandas {result['to_pandas_s']:.2f}"
                        f" + pairs {result['build_pairs_s']:.2f}; imports {result['imports_s']:.2f} s]"
                    )
                    if "stages_s" in result:
                        extra += f" stages {result['stages_s']}"
                else:
                    extra = (
                        f" [json.load {result['json_load_s']:.2f} + loop {result['loop_s']:.2f}]"
                    )
                print(
                    f"  round {round_no + 1} {variant:<7} {result['seconds']:6.2f} s  "
                    f"peak RSS {result['peak_rss_mib']:7,.0f} MiB  pairs {result['pairs']:,}  "
                    f"load {result['load_at_start']}{extra}",
                    flush=True,
                )
        best = {v: min(r, key=lambda x: x["seconds"]) for v, r in runs.items() if r}
        line = {
            "messages": n,
            "bytes": summary["bytes"],
            "summary": summary,
            "best": best,
            "all": runs,
        }
        p = best["project"]
        verdict = "meets" if p["seconds"] <= 15 and p["peak_rss_mib"] <= 2.5 * 1024 else "misses"
        print(
            f"  best project: {p['seconds']:.2f} s, {n / p['seconds']:,.0f} messages/s, "
            f"peak RSS {p['peak_rss_mib']:,.0f} MiB (load {p['load_at_start']})"
            + (f"; target 15 s / 2.5 GB: {verdict}" if n >= 1_000_000 else ""),
            flush=True,
        )
        if "naive" in best:
            q = best["naive"]
            ratio = q["seconds"] / p["seconds"]
            line["naive_over_project"] = ratio
            print(
                f"  best naive:   {q['seconds']:.2f} s, peak RSS {q['peak_rss_mib']:,.0f} MiB "
                f"(load {q['load_at_start']}); project is {ratio:.2f}x faster, "
                f"{q['peak_rss_mib'] / p['peak_rss_mib']:.2f}x less memory",
                flush=True,
            )
        report["sizes"].append(line)
    _common.write_json(args.json, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
