"""Slack workspace exports: a small workspace written as Slack's "Export data" writes it.

The fixture follows Slack's documented export layout (users.json, channels.json, groups.json,
dms.json, mpims.json at the root; one folder of daily ``YYYY-MM-DD.json`` arrays per
conversation) and its message objects (``ts``, ``thread_ts``, ``subtype``, ``files``,
``attachments``, ``edited``, ``user_profile``, mrkdwn escapes in ``text``). All text is made up.
"""

from __future__ import annotations

import json
import shutil
import zipfile
from datetime import UTC, datetime
from pathlib import Path

import pyarrow.compute as pc
import pytest

from echo_pipeline.exports import (
    ExportError,
    detect_format,
    discover_export_files,
    read_export,
    read_exports,
)
from echo_pipeline.exports.slack import (
    describe_slack,
    is_slack_metadata,
    read_slack,
    render_text,
    slack_metadata,
    sniff_slack,
)
from echo_pipeline.pairs.conversations import PairingConfig, build_pairs

ALICE, BOB, CARA, DAVE = "U01ALICE1", "U02BOB222", "U03CARA33", "U05DAVE55"


def profile(display: str, real: str) -> dict:
    return {
        "display_name": display,
        "real_name": real,
        "image_72": "https://a.slack-edge.com/x.png",
    }


USERS = [
    {
        "id": ALICE,
        "team_id": "T0TEAM001",
        "name": "alice",
        "real_name": "Alice Adams",
        "deleted": False,
        "is_bot": False,
        "profile": profile("ally", "Alice Adams"),
    },
    {  # no display name: the real name shows
        "id": BOB,
        "team_id": "T0TEAM001",
        "name": "bob",
        "real_name": "Bob Brown",
        "is_bot": False,
        "profile": profile("", "Bob Brown"),
    },
    {  # neither: the handle shows
        "id": CARA,
        "team_id": "T0TEAM001",
        "name": "cara",
        "is_bot": False,
        "profile": profile("", ""),
    },
    {
        "id": "U04BOT444",
        "team_id": "T0TEAM001",
        "name": "deploybot",
        "is_bot": True,
        "profile": profile("", "Deploy Bot"),
    },
]
CHANNELS = [
    {
        "id": "C0GENERAL",
        "name": "general",
        "created": 1672000000,
        "creator": ALICE,
        "is_archived": False,
        "is_general": True,
        "members": [ALICE, BOB, CARA],
        "pins": [{"id": "1672909260.000200", "type": "C", "created": 1672909300, "user": BOB}],
        "topic": {"value": "Releases", "creator": CARA, "last_set": 1672909740},
        "purpose": {"value": "", "creator": "", "last_set": 0},
    },
    {
        "id": "C0RANDOM1",
        "name": "random",
        "created": 1672000000,
        "creator": ALICE,
        "is_archived": False,
        "is_general": False,
        "members": [ALICE, CARA],
        "topic": {"value": "", "creator": "", "last_set": 0},
        "purpose": {"value": "", "creator": "", "last_set": 0},
    },
]
DMS = [{"id": "D0ALICEBOB", "created": 1672000000, "members": [ALICE, BOB]}]
MPIMS = [
    {
        "id": "G0MPIM001",
        "name": "mpdm-alice--bob--cara-1",
        "created": 1672000000,
        "creator": ALICE,
        "is_archived": False,
        "members": [ALICE, BOB, CARA],
        "topic": {"value": "", "creator": "", "last_set": 0},
        "purpose": {"value": "Group messaging", "creator": ALICE, "last_set": 1672000000},
    }
]

PARENT_TS = "1672909260.000200"  # 2023-01-05 09:01:00.0002 UTC


def ts(day: int, hh: int, mm: int, micro: int = 100) -> str:
    return f"{int(datetime(2023, 1, day, hh, mm, tzinfo=UTC).timestamp())}.{micro:06d}"


def message(user: str | None, text: str, when: str, **extra) -> dict:
    """A message as Slack's export writes it (client_msg_id, team, blocks...)."""
    msg = {"client_msg_id": f"id-{when}", "type": "message", "text": text, "ts": when}
    if user is not None:
        msg |= {"user": user, "team": "T0TEAM001", "user_team": "T0TEAM001"}
    msg |= {"blocks": [{"type": "rich_text", "block_id": "b", "elements": []}]}
    msg |= extra
    return msg


GENERAL_DAY1 = [
    message(CARA, f"<@{CARA}> has joined the channel", ts(5, 9, 0), subtype="channel_join"),
    message(
        BOB,
        "Morning <!here>! Notes: <https://example.com/notes|the notes> &amp; see "
        "<#C0RANDOM1|random>, <http://example.org|example.org>, <https://x.io>",
        PARENT_TS,
        thread_ts=PARENT_TS,
        reply_count=2,
        reply_users_count=2,
        latest_reply=ts(6, 10, 1),
        reply_users=[ALICE, BOB],
        replies=[{"user": ALICE, "ts": ts(5, 9, 2)}, {"user": BOB, "ts": ts(6, 10, 0)}],
        is_locked=False,
        subscribed=False,
    ),
    message(
        ALICE,
        f"thanks <@{BOB}>, looks good &lt;3",
        ts(5, 9, 2),
        thread_ts=PARENT_TS,
        parent_user_id=BOB,
    ),
    message(
        BOB,
        "",
        ts(5, 9, 3),
        upload=True,
        files=[
            {
                "id": "F0PLOT001",
                "created": 1672909380,
                "name": "plot",
                "title": "plot",
                "mimetype": "image/png",
                "filetype": "png",
                "url_private": "https://files.slack.com/files-pri/T0-F0PLOT001/plot",
            }
        ],
    ),
    {
        "type": "message",
        "subtype": "bot_message",
        "text": "Deployed v1.2",
        "ts": ts(5, 9, 4),
        "username": "deploybot",
        "bot_id": "B0DEPLOY1",
    },
    message(CARA, f"<@{DAVE}> can you check?", ts(5, 9, 5)),
    message(
        DAVE,
        "on it",
        ts(5, 9, 6),
        edited={"user": DAVE, "ts": ts(5, 9, 7)},
        user_profile={
            "avatar_hash": "g123",
            "first_name": "Dave",
            "real_name": "Dave Dunn",
            "display_name": "dave",
            "name": "dave.dunn",
            "is_restricted": False,
        },
    ),
    message(
        BOB,
        "<http://example.org|example.org>",
        ts(5, 9, 8),
        attachments=[
            {
                "from_url": "http://example.org",
                "title": "Example",
                "original_url": "http://example.org",
                "fallback": "Example",
                "service_name": "example.org",
            }
        ],
    ),
    message(
        BOB,
        "",
        ts(5, 9, 9),
        attachments=[
            {
                "is_share": True,
                "author_id": CARA,
                "text": "the build is green",
                "fallback": "[January 4th, 2023 5:00 PM] cara: the build is green",
                "channel_id": "C0RANDOM1",
                "ts": "1672851600.000100",
                "from_url": "https://team.slack.com/archives/C0RANDOM1/p1672851600000100",
            }
        ],
    ),
    message(
        CARA,
        "set the channel topic: Releases &amp; fixes",
        ts(5, 9, 10),
        subtype="channel_topic",
        topic="Releases & fixes",
    ),
    message(CARA, "something Slack will invent next", ts(5, 9, 11), subtype="new_kind_2030"),
]

GENERAL_DAY2 = [
    message(
        BOB,
        "one more thing: the rollout is Friday",
        ts(6, 10, 0),
        thread_ts=PARENT_TS,
        parent_user_id=BOB,
    ),
    message(
        ALICE,
        "Friday works for me",
        ts(6, 10, 1),
        subtype="thread_broadcast",
        thread_ts=PARENT_TS,
        root={"user": BOB, "ts": PARENT_TS, "text": "Morning"},
    ),
    {
        "type": "message",
        "subtype": "message_changed",
        "hidden": True,
        "ts": ts(6, 10, 2),
        "message": {"type": "message", "user": BOB, "text": "fixed", "ts": ts(6, 10, 0)},
        "previous_message": {"type": "message", "user": BOB, "text": "fxed", "ts": ts(6, 10, 0)},
    },
    message("USLACKBOT", "Reminder: standup.", ts(6, 10, 3)),
]

RANDOM_DAY = [
    message(CARA, "anyone for lunch?", ts(5, 12, 0)),
    message(ALICE, "me!", ts(5, 12, 0, micro=500_000)),
]
DM_DAY = [
    message(BOB, "are you coming tomorrow?", ts(5, 18, 0)),
    message(ALICE, "yes, see you at 10", ts(5, 18, 1)),
]
MPIM_DAY = [message(CARA, "hi both", ts(7, 8, 0))]


def write_json(path: Path, value) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value, indent=4, ensure_ascii=False), encoding="utf-8")
    return path


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    """The export unpacked: metadata at the root, a folder of daily files per conversation."""
    root = tmp_path / "Acme Slack export Jan 1 2023 - Jan 7 2023"
    write_json(root / "users.json", USERS)
    write_json(root / "channels.json", CHANNELS)
    write_json(root / "groups.json", [])
    write_json(root / "dms.json", DMS)
    write_json(root / "mpims.json", MPIMS)
    write_json(root / "integration_logs.json", {"logs": []})
    write_json(root / "canvases.json", [])
    write_json(root / "general" / "2023-01-05.json", GENERAL_DAY1)
    write_json(root / "general" / "2023-01-06.json", GENERAL_DAY2)
    write_json(root / "random" / "2023-01-05.json", RANDOM_DAY)
    write_json(root / "D0ALICEBOB" / "2023-01-05.json", DM_DAY)
    write_json(root / "mpdm-alice--bob--cara-1" / "2023-01-07.json", MPIM_DAY)
    return root


def utc(day: int, hh: int, mm: int, us: int = 100) -> datetime:
    return datetime(2023, 1, day, hh, mm, 0, us, tzinfo=UTC)


def test_every_column_of_a_daily_file(workspace, check_file_table):
    path = workspace / "general" / "2023-01-05.json"
    assert detect_format(path) == "slack"
    table = check_file_table(read_export(path))
    rows = table.to_pylist()
    assert {r["source_format"] for r in rows} == {"slack"}
    assert {r["source_file"] for r in rows} == {str(path)}
    assert {(r["channel_id"], r["channel_name"]) for r in rows} == {("slack:C0GENERAL", "general")}
    columns = [
        "message_id",
        "timestamp",
        "author_id",
        "author_name",
        "is_bot",
        "kind",
        "content",
        "reply_to_id",
        "has_attachments",
        "attachment_kind",
        "edited",
    ]
    got = [tuple(r[c] for c in columns) for r in rows]
    assert got == [
        (ts(5, 9, 0), utc(5, 9, 0), CARA, "cara", False, "system",
         "@cara has joined the channel", None, False, None, False),
        (PARENT_TS, utc(5, 9, 1, 200), BOB, "Bob Brown", False, "message",
         "Morning @here! Notes: the notes (https://example.com/notes) & see #random, "
         "example.org, https://x.io", None, False, None, False),
        (ts(5, 9, 2), utc(5, 9, 2), ALICE, "ally", False, "reply",
         "thanks @Bob Brown, looks good <3", PARENT_TS, False, None, False),
        (ts(5, 9, 3), utc(5, 9, 3), BOB, "Bob Brown", False, "message",
         "", None, True, "image", False),
        (ts(5, 9, 4), utc(5, 9, 4), "B0DEPLOY1", "deploybot", True, "message",
         "Deployed v1.2", None, False, None, False),
        (ts(5, 9, 5), utc(5, 9, 5), CARA, "cara", False, "message",
         "@dave can you check?", None, False, None, False),
        (ts(5, 9, 6), utc(5, 9, 6), DAVE, "dave", False, "message",
         "on it", None, False, None, True),
        (ts(5, 9, 8), utc(5, 9, 8), BOB, "Bob Brown", False, "message",
         "example.org", None, False, None, False),
        (ts(5, 9, 9), utc(5, 9, 9), BOB, "Bob Brown", False, "forward",
         "", None, False, None, False),
        (ts(5, 9, 10), utc(5, 9, 10), CARA, "cara", False, "system",
         "set the channel topic: Releases & fixes", None, False, None, False),
        (ts(5, 9, 11), utc(5, 9, 11), CARA, "cara", False, "other",
         "something Slack will invent next", None, False, None, False),
    ]  # fmt: skip


def test_a_thread_spans_days_and_bots_and_events_are_marked(workspace, check_file_table):
    table = check_file_table(read_slack(workspace / "general" / "2023-01-06.json"))
    rows = table.to_pylist()
    assert [(r["kind"], r["reply_to_id"], r["is_bot"]) for r in rows] == [
        ("reply", PARENT_TS, False),  # the parent is in yesterday's file
        ("reply", PARENT_TS, False),  # thread_broadcast: still an answer in the thread
        ("system", None, False),  # message_changed: an edit event, not new words
        ("message", None, True),  # Slackbot
    ]
    assert rows[3]["author_id"] == "USLACKBOT"


def test_conversations_are_named_from_the_metadata(workspace):
    dm = read_slack(workspace / "D0ALICEBOB" / "2023-01-05.json")
    assert set(dm["channel_id"].to_pylist()) == {"slack:D0ALICEBOB"}
    assert set(dm["channel_name"].to_pylist()) == {"ally, Bob Brown"}
    group = read_slack(workspace / "mpdm-alice--bob--cara-1" / "2023-01-07.json")
    assert set(group["channel_id"].to_pylist()) == {"slack:G0MPIM001"}
    assert set(group["channel_name"].to_pylist()) == {"ally, Bob Brown, cara"}
    lunch = read_slack(workspace / "random" / "2023-01-05.json")
    assert lunch["timestamp"].to_pylist()[1] == datetime(2023, 1, 5, 12, 0, 0, 500000, tzinfo=UTC)


def test_a_whole_workspace_end_to_end(workspace):
    files = discover_export_files([workspace])
    assert sorted(f.relative_to(workspace).as_posix() for f in files) == [
        "D0ALICEBOB/2023-01-05.json",
        "general/2023-01-05.json",
        "general/2023-01-06.json",
        "mpdm-alice--bob--cara-1/2023-01-07.json",
        "random/2023-01-05.json",
    ]  # users.json, channels.json, integration_logs.json... are metadata, not exports
    table = read_exports([workspace])
    counts = table.group_by("channel_id").aggregate([("message_id", "count")]).to_pylist()
    assert {c["channel_id"]: c["message_id_count"] for c in counts} == {
        "slack:C0GENERAL": len(GENERAL_DAY1) + len(GENERAL_DAY2),
        "slack:C0RANDOM1": 2,
        "slack:D0ALICEBOB": 2,
        "slack:G0MPIM001": 1,
    }
    replies = table.filter(pc.equal(table["kind"], "reply"))
    assert set(replies["reply_to_id"].to_pylist()) == {PARENT_TS}
    assert PARENT_TS in table["message_id"].to_pylist()  # every thread reply finds its parent

    pairs, report = build_pairs(table.to_pandas(), PairingConfig(me=(ALICE,)))
    assert report.me_ids == [ALICE]
    got = sorted(
        zip(
            pairs["channel_id"].to_pylist(),
            pairs["prompt"].to_pylist(),
            pairs["reply"].to_pylist(),
            pairs["is_explicit_reply"].to_pylist(),
            strict=True,
        )
    )
    assert got == [
        (
            "slack:C0GENERAL",
            "Morning @here! Notes: the notes (https://example.com/notes) & see #random, "
            "example.org, https://x.io",
            "thanks @Bob Brown, looks good <3",
            True,
        ),
        ("slack:C0GENERAL", "one more thing: the rollout is Friday", "Friday works for me", False),
        ("slack:C0RANDOM1", "anyone for lunch?", "me!", False),
        ("slack:D0ALICEBOB", "are you coming tomorrow?", "yes, see you at 10", False),
    ]


def test_a_zipped_export_reads_like_the_folder(workspace, tmp_path):
    archive = zip_folder(workspace, tmp_path / "export.zip")
    member = zipfile.Path(archive, "general/2023-01-05.json")
    assert is_slack_metadata(zipfile.Path(archive, "users.json"))
    assert not is_slack_metadata(member)
    from_zip = read_slack(member).drop_columns(["source_file"])
    from_folder = read_slack(workspace / "general" / "2023-01-05.json")
    assert from_zip.equals(from_folder.drop_columns(["source_file"]))
    assert describe_slack(member)["shape"].startswith("Slack workspace export")


def test_a_lone_daily_file_is_read_without_metadata(workspace, tmp_path, check_file_table):
    lone = tmp_path / "elsewhere" / "general" / "2023-01-05.json"
    lone.parent.mkdir(parents=True)
    shutil.copy(workspace / "general" / "2023-01-05.json", lone)
    table = check_file_table(read_export(lone))
    assert set(table["channel_id"].to_pylist()) == {"slack:general"}
    names = dict(zip(table["author_id"].to_pylist(), table["author_name"].to_pylist(), strict=True))
    assert names[BOB] == BOB and names[DAVE] == "dave"  # only a message's own profile names it
    assert table["content"][2].as_py() == f"thanks @{BOB}, looks good <3"
    described = describe_slack(lone)
    assert "lone Slack daily file" in described["shape"]
    assert described["suggested_me"] == []


def test_describe_names_the_conversation_and_its_metadata(workspace):
    described = describe_slack(workspace / "D0ALICEBOB" / "2023-01-05.json")
    assert described == {
        "shape": "Slack workspace export, daily file of the DM 'ally, Bob Brown' (metadata: "
        "users.json, channels.json, groups.json, mpims.json, dms.json)",
        "suggested_me": [],
    }


def zip_folder(folder: Path, archive: Path) -> Path:
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        for file in sorted(folder.rglob("*.json")):
            zf.write(file, file.relative_to(folder).as_posix())
    return archive


def test_metadata_is_parsed_once_per_export(workspace):
    first = slack_metadata(workspace)
    read_slack(workspace / "general" / "2023-01-05.json")
    read_slack(workspace / "general" / "2023-01-06.json")
    assert slack_metadata(workspace) is first


def test_a_rewritten_zip_is_never_served_from_the_cache(workspace, tmp_path):
    archive = zip_folder(workspace, tmp_path / "export.zip")
    member = "general/2023-01-05.json"
    assert read_slack(zipfile.Path(archive, member))["author_name"][1].as_py() == "Bob Brown"
    users = json.loads((workspace / "users.json").read_text())
    users[1]["profile"]["display_name"] = "bobby tables"
    write_json(workspace / "users.json", users)
    zip_folder(workspace, archive)
    assert read_slack(zipfile.Path(archive, member))["author_name"][1].as_py() == "bobby tables"


def test_edited_metadata_is_never_served_from_the_cache(workspace):
    day = workspace / "general" / "2023-01-05.json"
    assert read_slack(day)["author_name"][1].as_py() == "Bob Brown"
    users = json.loads((workspace / "users.json").read_text())
    users[1]["profile"]["display_name"] = "bobby tables"
    write_json(workspace / "users.json", users)
    assert read_slack(day)["author_name"][1].as_py() == "bobby tables"


# --- detection and discovery -------------------------------------------------------------------


def test_detected_by_content_whatever_the_name(workspace, tmp_path):
    renamed = tmp_path / "notes.txt"
    shutil.copy(workspace / "general" / "2023-01-06.json", renamed)
    assert detect_format(renamed) == "slack"
    compact = tmp_path / "compact"
    compact.write_text(json.dumps(DM_DAY, separators=(",", ":")), encoding="utf-8")
    assert detect_format(compact) == "slack"


@pytest.mark.parametrize(
    "head",
    [
        json.dumps(USERS),
        json.dumps(CHANNELS, indent=2),
        json.dumps(DMS),
        "[]",
        '[{"a": 1, "ts": 5}]',
        "[1, 2, 3]",
        '{"ts": "1672909260.000200", "type": "message"}',
    ],
)
def test_the_sniffer_claims_no_generic_array_and_no_metadata(head):
    assert not sniff_slack(head)


def test_the_sniffer_works_on_a_head_cut_mid_document():
    text = json.dumps(GENERAL_DAY1, indent=4)
    assert sniff_slack(text[:300])


def test_metadata_files_are_skipped_only_where_they_are_slack_metadata(workspace, tmp_path):
    for name in ("users.json", "channels.json", "dms.json", "integration_logs.json"):
        assert is_slack_metadata(workspace / name)
    assert not is_slack_metadata(workspace / "general" / "2023-01-05.json")
    alone = write_json(tmp_path / "alone" / "users.json", USERS)
    assert is_slack_metadata(alone)  # sniffed as a Slack users list
    unrelated = write_json(tmp_path / "mine" / "users.json", {"who": ["me"]})
    assert not is_slack_metadata(unrelated)
    assert discover_export_files([unrelated.parent]) == [unrelated]  # detection judges it later


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("<@U01ALICE1>", "@ally"),
        ("<@U9UNKNOWN|olduser>", "@olduser"),
        ("<@U9UNKNOWN>", "@U9UNKNOWN"),
        ("<#C0RANDOM1>", "#random"),
        ("<#C0RANDOM1|random>", "#random"),
        ("<!channel> <!everyone> <!here|here>", "@channel @everyone @here"),
        ("<!subteam^S0TEAM|@devs> ping", "@devs ping"),
        ("<!date^1672909260^{date_short}|Jan 5, 2023>", "Jan 5, 2023"),
        ("<mailto:bob@example.com|bob@example.com>", "bob@example.com"),
        ("<https://a.b/c?x=1&amp;y=2|docs>", "docs (https://a.b/c?x=1&y=2)"),
        ("<https://a.b/c>", "https://a.b/c"),
        ("&lt;b&gt; is not bold &amp;&amp; fine", "<b> is not bold && fine"),
        ("&amp;lt; stays literal", "&lt; stays literal"),
        ("no markup at all", "no markup at all"),
    ],
)
def test_text_renders_mrkdwn_escapes_as_plain_text(text, expected):
    names = {"U01ALICE1": "ally"}
    channels = {"C0RANDOM1": "random"}
    assert render_text(text, names, channels) == expected


@pytest.mark.parametrize(
    ("filename", "name", "mimetype", "expected"),
    [
        ("a", "clip.mp4", "video/mp4", "video"),
        ("b", "voice", "audio/webm", "audio"),
        ("c", "report.pdf", "application/pdf", "file"),
        ("d", None, None, "file"),  # a file hidden by the plan's limit: no name, no type
    ],
)
def test_attachment_kinds_come_from_the_file_name_or_type(
    tmp_path, filename, name, mimetype, expected
):
    f = (
        {"id": "F1", "mode": "hidden_by_limit"}
        if name is None
        else {"name": name, "mimetype": mimetype}
    )
    path = write_json(
        tmp_path / "c" / f"{filename}.json", [message(BOB, "", ts(5, 9, 0), files=[f])]
    )
    row = read_slack(path).to_pylist()[0]
    assert (row["has_attachments"], row["attachment_kind"], row["content"]) == (True, expected, "")


# --- hostile input -----------------------------------------------------------------------------


def expect_error(path, *words):
    with pytest.raises(ExportError) as caught:
        read_slack(path)
    message_ = str(caught.value)
    assert "\n" not in message_
    assert message_.startswith(f"{path}: ")
    for word in words:
        assert word in message_
    return message_


def test_a_truncated_daily_file(workspace):
    day = workspace / "general" / "2023-01-05.json"
    day.write_bytes(day.read_bytes()[:700])
    expect_error(day, "truncated")
    with pytest.raises(ExportError, match="truncated or invalid JSON"):
        read_exports([workspace])  # detected as Slack still, and the file is named


def test_an_empty_daily_file(workspace):
    day = workspace / "general" / "2023-01-08.json"
    day.write_bytes(b"")
    expect_error(day, "empty file")


def test_an_unreadable_ts_is_named(workspace):
    day = write_json(
        workspace / "general" / "2023-01-08.json", [message(BOB, "x", "yesterday noon")]
    )
    expect_error(day, "message 1", "'yesterday noon'")


def test_an_object_where_the_array_belongs(workspace):
    day = write_json(workspace / "general" / "2023-01-08.json", {"messages": GENERAL_DAY2})
    expect_error(day, "expected a JSON array of messages", "object")


def test_a_message_without_ts(workspace):
    broken = [GENERAL_DAY2[0], {k: v for k, v in GENERAL_DAY2[1].items() if k != "ts"}]
    day = write_json(workspace / "general" / "2023-01-08.json", broken)
    expect_error(day, 'message 2 has no "ts"')


def test_a_wrong_type_in_a_message(workspace):
    day = write_json(
        workspace / "general" / "2023-01-08.json", [message(BOB, "x", ts(8, 1, 0)) | {"text": 5}]
    )
    expect_error(day, "message 1, key text", "got `int`")


def test_a_malformed_users_json_is_named(workspace):
    users = workspace / "users.json"
    users.write_bytes(users.read_bytes()[:100])
    with pytest.raises(ExportError) as caught:
        read_slack(workspace / "general" / "2023-01-05.json")
    assert str(caught.value).startswith(f"{users}: truncated or invalid JSON")
    write_json(users, {"members": USERS})
    with pytest.raises(ExportError) as caught:
        read_slack(workspace / "general" / "2023-01-05.json")
    assert str(caught.value).startswith(f"{users}: not a Slack users list")


def test_invalid_utf8_is_named_with_its_offset(workspace):
    day = workspace / "general" / "2023-01-08.json"
    day.write_bytes(b'[{"type": "message", "text": "caf\xe9", "ts": "1672909260.000200"}]')
    expect_error(day, "not UTF-8", "0xE9")


def test_read_exports_reads_the_workspace_zip_as_slack_delivers_it(workspace, tmp_path):
    """The metadata members are skipped inside the archive as in the folder."""
    archive = zip_folder(workspace, tmp_path / "Acme Slack export.zip")
    from_zip = read_exports([archive]).drop_columns(["source_file"])
    from_folder = read_exports([workspace]).drop_columns(["source_file"])
    assert from_zip.num_rows > 0
    assert from_zip.equals(from_folder)
