"""Meta "Download your information" JSON (Messenger, Instagram, Messenger end-to-end encrypted).

Fixtures are written here the way Meta writes them: the legacy form escapes every string's
UTF-8 bytes as Latin-1 code points (``json.dumps`` with ``ensure_ascii`` then shows them as
``\\u00c3\\u00a9``, as Meta's files do) and lists messages newest first.
"""

from __future__ import annotations

import json
import zipfile
from datetime import UTC, datetime
from pathlib import Path

import pytest

from echo_pipeline.exports import ExportError, detect_format, read_export, read_exports
from echo_pipeline.exports._common import stable_channel_id
from echo_pipeline.exports.meta import describe_meta, read_meta_legacy, repair_mojibake
from echo_pipeline.pairs.conversations import build_pairs
from echo_pipeline.pairs.pairing_config import PairingConfig

T0 = 1_700_000_000_000  # 2023-11-14T22:13:20Z, in ms
OWNER = "Zoë Owner"
BOB = "Bob Martin"


def moji(text: str) -> str:
    """What Meta's legacy export does to a string: UTF-8 bytes read as Latin-1."""
    return text.encode("utf-8").decode("latin-1")


def legacy_message(sender: str, seconds: int, content: str | None = None, **extra) -> dict:
    message = {"sender_name": moji(sender), "timestamp_ms": T0 + seconds * 1000}
    if content is not None:
        message["content"] = moji(content)
    message.update(extra)
    message.setdefault("is_geoblocked_for_viewer", False)
    return message


def legacy_thread(messages: list[dict], *, title: str = BOB, people=(BOB, OWNER), **extra) -> dict:
    """A legacy thread; ``messages`` are given oldest first and written newest first."""
    return {
        "participants": [{"name": moji(name)} for name in people],
        "messages": list(reversed(messages)),
        "title": moji(title),
        "is_still_participant": True,
        "thread_path": "inbox/bobmartin_10158612345678901",
        "magic_words": [],
        **extra,
    }


def write(path: Path, document) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2, ensure_ascii=True), encoding="utf-8")
    return path


PHOTO = "messages/inbox/bobmartin_10158612345678901/photos/403_1234.jpg"
LEGACY = [
    legacy_message(BOB, 0, "Salut Zoë ! Un café ?"),
    legacy_message(
        OWNER,
        60,
        "Oui 😀 à 10h",
        reactions=[{"reaction": moji("❤"), "actor": moji(BOB)}],
    ),
    legacy_message(OWNER, 120, photos=[{"uri": PHOTO, "creation_timestamp": 1700000120}]),
    legacy_message(
        BOB,
        180,
        f"{BOB} sent an attachment.",
        share={"link": "https://www.instagram.com/reel/Cz1abc/", "share_text": "so true"},
    ),
    legacy_message(
        OWNER,
        240,
        "regarde https://example.com/x",
        type="Share",
        share={"link": "https://example.com/x"},
    ),
    legacy_message(BOB, 300, type="Generic", is_unsent=True),
    legacy_message(OWNER, 360, f"You called {BOB}.", type="Call", call_duration=42),
    legacy_message(BOB, 420, f"{BOB} reacted 😍 to your message "),
    legacy_message(
        OWNER,
        480,
        audio_files=[{"uri": "messages/inbox/x/audio/clip.mp4", "creation_timestamp": 1}],
    ),
    legacy_message(BOB, 540, "J'ai tapé Ã© exprès"),  # a person's own "Ã©", escaped by Meta too
    legacy_message(OWNER, 600, sticker={"uri": "messages/stickers_used/3917_n_369.png"}),
    legacy_message(BOB, 600, "même milliseconde"),  # a tie: file order decides
    legacy_message(BOB, 660, f"{BOB} set the nickname for you to Zozo."),
    legacy_message(BOB, 720, share={"link": "https://example.com/menu.pdf"}, type="Share"),
]


def at(seconds: int) -> datetime:
    return datetime.fromtimestamp((T0 + seconds * 1000) / 1000, tz=UTC)


def test_legacy_messenger_thread_every_column(tmp_path, check_file_table):
    path = write(
        tmp_path / "inbox/bobmartin_10158612345678901/message_1.json", legacy_thread(LEGACY)
    )
    assert detect_format(path) == "meta_legacy"
    table = check_file_table(read_export(path))
    rows = table.to_pylist()
    assert len(rows) == len(LEGACY)
    channel = "meta:" + stable_channel_id("meta", "inbox/bobmartin_10158612345678901")[2:]
    assert {(r["source_format"], r["channel_id"], r["channel_name"]) for r in rows} == {
        ("meta_legacy", channel, BOB)
    }
    assert [r["seq"] for r in rows] == list(range(len(LEGACY)))
    assert [r["timestamp"] for r in rows] == [
        at(s) for s in (0, 60, 120, 180, 240, 300, 360, 420, 480, 540, 600, 600, 660, 720)
    ]
    assert [r["author_name"] for r in rows] == [
        BOB, OWNER, OWNER, BOB, OWNER, BOB, OWNER, BOB, OWNER, BOB, OWNER, BOB, BOB, BOB
    ]  # fmt: skip
    assert all(r["author_id"] == "meta:" + r["author_name"] for r in rows)
    assert [
        (r["kind"], r["content"], r["has_attachments"], r["attachment_kind"]) for r in rows
    ] == [
        ("message", "Salut Zoë ! Un café ?", False, None),
        ("message", "Oui 😀 à 10h", False, None),
        ("message", "", True, "image"),
        ("message", "", True, "file"),  # "X sent an attachment." is Meta's words, not Bob's
        ("message", "regarde https://example.com/x", False, None),  # a link with text: text
        ("other", "", False, None),  # unsent
        ("system", f"You called {BOB}.", False, None),
        ("system", f"{BOB} reacted 😍 to your message ", False, None),
        ("message", "", True, "audio"),  # audio_files, whatever the file's extension
        ("message", "J'ai tapé Ã© exprès", False, None),
        ("message", "", True, "image"),  # sticker
        ("message", "même milliseconde", False, None),
        ("system", f"{BOB} set the nickname for you to Zozo.", False, None),
        ("message", "", True, "file"),  # a share with no text of its own
    ]
    assert not any(r["is_bot"] or r["edited"] or r["reply_to_id"] for r in rows)
    assert all(r["message_id"].startswith("m-") for r in rows)


def test_message_ids_are_stable_across_parts_and_reexports(tmp_path):
    thread = legacy_thread(LEGACY)
    one = read_export(write(tmp_path / "a/message_1.json", thread))
    again = read_export(write(tmp_path / "b/message_1.json", thread))
    assert one["message_id"].to_pylist() == again["message_id"].to_pylist()
    assert one["channel_id"].to_pylist() == again["channel_id"].to_pylist()  # from thread_path


def test_channel_from_folder_when_thread_path_is_missing(tmp_path):
    thread = legacy_thread(LEGACY[:2])
    del thread["thread_path"]
    first = read_export(write(tmp_path / "inbox/bob_1/message_1.json", thread))
    second = read_export(write(tmp_path / "inbox/bob_1/message_2.json", thread))
    other = read_export(write(tmp_path / "inbox/bob_2/message_1.json", thread))
    assert first["channel_id"][0] == second["channel_id"][0] != other["channel_id"][0]


def test_group_system_texts_in_english_and_french(tmp_path):
    people = (OWNER, BOB, "Chloé Dupont", "Dan Lee")
    messages = [
        legacy_message(OWNER, 0, "You named the group Weekend."),
        legacy_message(BOB, 1, f"{BOB} added Dan Lee to the group."),
        legacy_message("Dan Lee", 2, "Dan Lee left the group.", type="Unsubscribe"),
        legacy_message(OWNER, 3, "The video chat ended.", type="Call"),
        legacy_message(BOB, 4, f"{BOB} missed your call."),
        legacy_message(BOB, 5, f"{BOB} changed the theme to Love."),
        legacy_message(BOB, 6, f"{BOB} pinned a message."),
        legacy_message(BOB, 7, "Chloé Dupont", type="Subscribe", users=[{"name": "x"}]),
        legacy_message("Chloé Dupont", 8, "Chloé Dupont a quitté le groupe."),
        legacy_message("Chloé Dupont", 9, "Chloé Dupont a réagi 👍 à votre message "),
        legacy_message(OWNER, 10, "Vous avez créé le groupe."),
        legacy_message(BOB, 11, "I left the group chat open, sorry"),  # a person's words
        legacy_message(BOB, 12, "Liked a message"),
    ]
    path = write(tmp_path / "m.json", legacy_thread(messages, title="Weekend", people=people))
    kinds = read_export(path)["kind"].to_pylist()
    assert kinds == ["system"] * 11 + ["message", "system"]
    assert describe_meta(path)["suggested_me"] == ["meta:" + OWNER]  # "You named the group"


def test_repair_mojibake_only_where_it_is_mojibake():
    assert repair_mojibake(["plain", moji("café"), moji("😀 ok")]) == ["plain", "café", "😀 ok"]
    # Meta escaped a person's own "Ã©" too: repairing once gives it back exactly.
    assert repair_mojibake([moji("typed Ã© on purpose"), moji("é")]) == [
        "typed Ã© on purpose",
        "é",
    ]
    # Already-decoded text: one character above U+00FF proves it; nothing is touched.
    decoded = ["café 😀", "typed Ã© on purpose"]
    assert repair_mojibake(decoded) == decoded
    # Already-decoded Latin-1-only text: most strings do not decode, so none is touched.
    latin = ["café", "naïve", "Ã©"]
    assert repair_mojibake(latin) == latin
    # An escaped file with one broken string: the rest is repaired, the broken one kept.
    assert repair_mojibake([moji("élan"), moji("ça va"), moji("à"), "bad \xe9 byte"]) == [
        "élan",
        "ça va",
        "à",
        "bad \xe9 byte",
    ]
    assert repair_mojibake(["nul\x00" + moji("é")]) == ["nul\x00é"]  # NUL inside: one by one


def test_names_and_title_are_repaired(tmp_path):
    path = write(tmp_path / "m.json", legacy_thread(LEGACY[:2], title="Chloé & Zoë"))
    table = read_export(path)
    assert table["channel_name"][0].as_py() == "Chloé & Zoë"
    assert table["author_id"].to_pylist() == ["meta:" + BOB, "meta:" + OWNER]


def test_detected_by_content_not_name(tmp_path):
    path = write(tmp_path / "renamed.txt", legacy_thread(LEGACY[:3]))
    assert detect_format(path) == "meta_legacy"
    e2ee = write(tmp_path / "chat", E2EE)
    assert detect_format(e2ee) == "meta_e2ee"


def test_describe_shapes_and_owner(tmp_path):
    thread = legacy_thread(LEGACY[:2])
    instagram = write(
        tmp_path / "your_instagram_activity/messages/inbox/b_1/message_1.json", thread
    )
    messenger = write(tmp_path / "your_facebook_activity/messages/inbox/b_1/message_1.json", thread)
    loose = write(tmp_path / "elsewhere/message_1.json", thread)
    by_uri = write(
        tmp_path / "x/message_1.json",
        legacy_thread(
            [legacy_message(BOB, 0, photos=[{"uri": "your_instagram_activity/messages/p.jpg"}])]
        ),
    )
    assert describe_meta(instagram) == {
        "shape": "Instagram legacy JSON",
        "suggested_me": ["meta:" + OWNER],
    }
    assert describe_meta(messenger)["shape"] == "Messenger legacy JSON"
    assert describe_meta(loose)["shape"] == "Meta legacy JSON (Messenger or Instagram)"
    assert describe_meta(by_uri)["shape"] == "Instagram legacy JSON"
    group = write(
        tmp_path / "g.json",
        legacy_thread(LEGACY[:2], title="Crew", people=(OWNER, BOB, "Dan Lee")),
    )
    assert describe_meta(group)["suggested_me"] == []  # nothing says who the owner is


E2EE = {
    "participants": [OWNER, BOB, "Chloé Dupont"],
    "threadName": "Weekend 🏕️",
    "messages": [
        {
            "isUnsent": False,
            "media": [],
            "reactions": [{"actor": BOB, "reaction": "❤"}],
            "senderName": BOB,
            "text": "On part à 9h ? 😀",
            "timestamp": T0,
            "type": "Generic",
        },
        {
            "isUnsent": False,
            "media": [{"uri": "./media/8f2c6a.jpeg"}],
            "reactions": [],
            "senderName": OWNER,
            "text": "Vous avez envoyé une pièce jointe.",
            "timestamp": T0 + 60_000,
            "type": "Generic",
        },
        {
            "isUnsent": True,
            "media": [],
            "reactions": [],
            "senderName": "Chloé Dupont",
            "text": "",
            "timestamp": T0 + 120_000,
            "type": "Generic",
        },
        {
            "isUnsent": False,
            "media": [],
            "reactions": [],
            "senderName": "Chloé Dupont",
            "text": "Chloé Dupont a quitté le groupe.",
            "timestamp": T0 + 180_000,
            "type": "Generic",
        },
        {
            "isUnsent": False,
            "media": [{"uri": "./media/voice.m4a"}],
            "reactions": [],
            "senderName": BOB,
            "text": "écoute ça, Ã© voulu",
            "timestamp": T0 + 240_000,
            "type": "Generic",
        },
    ],
}


def test_e2ee_thread_every_column(tmp_path, check_file_table):
    path = tmp_path / "weekend_3.json"
    path.write_text(json.dumps(E2EE, ensure_ascii=False), encoding="utf-8")
    assert detect_format(path) == "meta_e2ee"
    rows = check_file_table(read_export(path)).to_pylist()
    channel = "meta:" + stable_channel_id("meta_e2ee", "weekend_3")[2:]
    assert {(r["source_format"], r["channel_id"], r["channel_name"]) for r in rows} == {
        ("meta_e2ee", channel, "Weekend 🏕️")
    }
    assert [r["timestamp"] for r in rows] == [at(s) for s in (0, 60, 120, 180, 240)]
    assert [r["author_id"] for r in rows] == [
        "meta:" + BOB, "meta:" + OWNER, "meta:Chloé Dupont", "meta:Chloé Dupont", "meta:" + BOB
    ]  # fmt: skip
    assert [
        (r["kind"], r["content"], r["has_attachments"], r["attachment_kind"]) for r in rows
    ] == [
        ("message", "On part à 9h ? 😀", False, None),
        ("message", "", True, "image"),
        ("other", "", False, None),
        ("system", "Chloé Dupont a quitté le groupe.", False, None),
        ("message", "écoute ça, Ã© voulu", True, "audio"),  # decoded text: left alone
    ]
    assert not any(r["is_bot"] or r["edited"] or r["reply_to_id"] for r in rows)
    assert describe_meta(path) == {
        "shape": "Messenger end-to-end encrypted JSON",
        "suggested_me": ["meta:" + OWNER],  # "Vous avez envoyé…" is the owner's
    }


def test_e2ee_newest_first_is_ordered_too(tmp_path):
    document = dict(E2EE, messages=list(reversed(E2EE["messages"])))
    path = write(tmp_path / "t.json", document)
    assert read_export(path)["timestamp"].to_pylist() == [at(s) for s in (0, 60, 120, 180, 240)]


HOSTILE = {
    "truncated": lambda: json.dumps(legacy_thread(LEGACY), indent=2)[:700],
    "list": lambda: json.dumps([legacy_message(BOB, 0, "hi")]),
    "no_messages": lambda: json.dumps(
        {k: v for k, v in legacy_thread(LEGACY).items() if k != "messages"}
    ),
    "timestamp_text": lambda: json.dumps(
        legacy_thread([dict(legacy_message(BOB, 0, "hi"), timestamp_ms="yesterday")])
    ),
    "timestamp_missing": lambda: json.dumps(
        legacy_thread([{"sender_name": "A", "content": "x"}, legacy_message(BOB, 0, "hi")])
    ),
    "e2ee_truncated": lambda: json.dumps(E2EE)[:300],
    "e2ee_text_not_string": lambda: json.dumps(
        dict(E2EE, messages=[dict(E2EE["messages"][0], text=["a", "b"])])
    ),
}
EXPECTED = {
    "truncated": "truncated or invalid JSON",
    "list": "the file is a JSON list",
    "no_messages": 'no "messages" list',
    "timestamp_text": "$.messages[0].timestamp_ms",
    "timestamp_missing": "message 2 (counted from the top of the file) has no timestamp",
    "e2ee_truncated": "truncated or invalid JSON",
    "e2ee_text_not_string": "$.messages[0].text",
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_files_are_one_line_errors_naming_the_file(tmp_path, case):
    path = tmp_path / f"{case}.json"
    path.write_text(HOSTILE[case](), encoding="utf-8")
    assert detect_format(path) in {"meta_legacy", "meta_e2ee"}
    with pytest.raises(ExportError) as error:
        read_export(path)
    message = str(error.value)
    assert message.startswith(f"{path}: ") and "\n" not in message
    assert EXPECTED[case] in message


def test_split_thread_merges_and_pairs(tmp_path):
    folder = tmp_path / "messages/inbox/bobmartin_10158612345678901"
    older = [
        legacy_message(BOB, 0, "Tu viens ce soir ?"),
        legacy_message(OWNER, 600, "Oui, vers 20h"),
        legacy_message(BOB, 1200, "The video chat ended.", type="Call"),
    ]
    newer = [
        legacy_message(BOB, 1800, "Super, j'apporte le café"),
        legacy_message(OWNER, 2400, "Parfait 😀"),
        legacy_message(BOB, 3000, is_unsent=True),
    ]
    write(folder / "message_1.json", legacy_thread(newer))  # Meta: message_1 holds the newest
    write(folder / "message_2.json", legacy_thread(older))
    (folder / "photos").mkdir()
    (folder / "photos/403_1234.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")

    table = read_exports([tmp_path])
    assert table["channel_id"].unique().to_pylist() == [
        "meta:" + stable_channel_id("meta", "inbox/bobmartin_10158612345678901")[2:]
    ]
    assert table["timestamp"].to_pylist() == [at(s) for s in (0, 600, 1200, 1800, 2400, 3000)]
    pairs, _ = build_pairs(table.to_pandas(), PairingConfig(me=(OWNER,)))
    got = [(p["prompt"], p["reply"]) for p in pairs.to_pylist()]
    assert got == [
        ("Tu viens ce soir ?", "Oui, vers 20h"),
        ("Super, j'apporte le café", "Parfait 😀"),
    ]
    assert set(pairs["reply_author_id"].to_pylist()) == {"meta:" + OWNER}


def test_reads_a_member_of_a_zip_archive(tmp_path):
    archive = tmp_path / "facebook-zoe.zip"
    member = "your_instagram_activity/messages/inbox/bob_1/message_1.json"
    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.writestr(member, json.dumps(legacy_thread(LEGACY[:2])))
    path = zipfile.Path(archive, member)
    table = read_meta_legacy(path)
    assert table["content"].to_pylist() == ["Salut Zoë ! Un café ?", "Oui 😀 à 10h"]
    assert table["source_file"][0].as_py() == f"{archive}/{member}"
    assert describe_meta(path)["shape"] == "Instagram legacy JSON"


def test_a_whole_download_skips_what_is_not_a_thread(tmp_path):
    """Meta's download holds account files beside the inbox and the files shared in a thread
    (a .txt among them); reading the download's root reads only the threads."""
    root = tmp_path / "facebook-zoe"
    thread = root / "your_facebook_activity/messages/inbox/bobmartin_10158612345678901"
    write(thread / "message_1.json", legacy_thread(LEGACY[:2]))
    (thread / "files").mkdir()
    (thread / "files/notes.txt").write_text("shopping list: eggs, milk\n", encoding="utf-8")
    messages = root / "your_facebook_activity/messages"
    write(messages / "autofill_information.json", {"autofill_information_v2": {"EMAIL": []}})
    write(messages / "secret_conversations.json", {"secret_conversations_v2": {}})

    table = read_exports([root])
    assert table["content"].to_pylist() == ["Salut Zoë ! Un café ?", "Oui 😀 à 10h"]
    archive = tmp_path / "facebook-zoe.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        for file in sorted(p for p in root.rglob("*") if p.is_file()):
            zipped.write(file, file.relative_to(root).as_posix())
    assert (
        read_exports([archive])
        .drop_columns(["source_file"])
        .equals(table.drop_columns(["source_file"]))
    )
