"""One person across apps: a Discord DM, a Telegram account export and a Messenger thread read
together, ``inspect`` naming the owners the exports know, and ``pairs`` with several ``--me``."""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import pyarrow.parquet as pq
from test_exports_meta import BOB as META_BOB
from test_exports_meta import LEGACY, OWNER, legacy_thread
from test_exports_telegram import ME as TELEGRAM_ME
from test_exports_telegram import full_export

from echo_pipeline.exports import read_exports
from echo_pipeline.infra.paths import sample_export_dir
from echo_pipeline.operations.cli import main
from echo_pipeline.pairs.pairing_config import SAMPLE_ME

DISCORD_DM = (
    Path(__file__).parents[1] / "fixtures" / "discord" / "mlomb__chat-analytics__DM_2A_2M.json"
)


def _discord_me() -> str:
    """The DM's second author: a person with messages of their own."""
    table = read_exports([DISCORD_DM])
    return table["author_id"].unique().to_pylist()[-1]


def _downloads(root: Path) -> Path:
    """The three downloads as people get them: a DCE file, Telegram's folder, Meta's zip."""
    shutil.copytree(sample_export_dir(), root / "discord")  # DCE JSON; "me" is alex there
    (root / "telegram").mkdir()
    (root / "telegram" / "result.json").write_text(json.dumps(full_export()), encoding="utf-8")
    member = "your_facebook_activity/messages/inbox/bobmartin_1/message_1.json"
    with zipfile.ZipFile(root / "facebook-zoe.zip", "w", zipfile.ZIP_DEFLATED) as zipped:
        zipped.writestr(member, json.dumps(legacy_thread(LEGACY)))
    return root


def test_inspect_names_each_format_and_the_owners_the_exports_know(tmp_path, capsys):
    root = _downloads(tmp_path / "downloads")
    assert main(["inspect", str(root), "--json"]) == 0
    summaries = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    by_format = {s["format"]: s for s in summaries}
    assert set(by_format) == {"discord_json", "telegram", "meta_legacy"}
    assert by_format["telegram"]["shape"].startswith("Telegram Desktop JSON, full-account export")
    assert by_format["telegram"]["suggested_me"] == [f"user{TELEGRAM_ME}"]
    assert len(by_format["telegram"]["channels"]) > 1  # one file, several chats
    assert by_format["meta_legacy"]["suggested_me"] == [f"meta:{OWNER}"]
    assert by_format["meta_legacy"]["path"].endswith(
        ".zip/your_facebook_activity/messages/inbox/bobmartin_1/message_1.json"
    )
    assert by_format["discord_json"]["suggested_me"] == []  # DCE does not say who exported

    assert main(["inspect", str(root)]) == 0
    command = capsys.readouterr().out.splitlines()[-1]
    assert f"--me user{TELEGRAM_ME}" in command and f"--me 'meta:{OWNER}'" in command


def test_pairs_with_one_identity_per_app_merge_into_one_dataset(tmp_path, capsys):
    root = _downloads(tmp_path / "downloads")
    discord = read_exports([root / "discord"])
    (discord_me,) = {
        i
        for i, n in zip(
            discord["author_id"].to_pylist(), discord["author_name"].to_pylist(), strict=True
        )
        if n == SAMPLE_ME
    }
    out = tmp_path / "pairs.parquet"
    identities = [SAMPLE_ME, f"user{TELEGRAM_ME}", OWNER]  # names and ids, as people know them
    argv = ["pairs", str(root), "--out", str(out)]
    for me in identities:
        argv += ["--me", me]
    assert main(argv) == 0
    pairs = pq.read_table(out).to_pandas()
    replies_by = dict(pairs.groupby("reply_author_id").size())
    # My replies come from all three apps, each under its own source's id.
    assert set(replies_by) == {discord_me, f"user{TELEGRAM_ME}", f"meta:{OWNER}"}
    channels = set(pairs["channel_id"])
    assert any(c.startswith("telegram:") for c in channels)
    assert any(c.startswith("meta:") for c in channels)
    assert not pairs["prompt_author_id"].isin(list(replies_by)).any()
    # The other people keep their own ids: Meta's Bob is not Telegram's Bob.
    assert f"meta:{META_BOB}" in set(pairs["prompt_author_id"])
