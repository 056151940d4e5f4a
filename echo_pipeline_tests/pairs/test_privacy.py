"""Nothing private goes where it should not: metadata, logs, git, the network.

One ingest of the bundled sample (4300 messages with emails, phones, cards and tokens in them)
is materialised through Dagster with every log captured: Python logging, Dagster's event log
and the console. The message texts must appear in none of them at INFO and above, and the only
text in Dagster metadata is the short, redacted preview.
"""

from __future__ import annotations

import ast
import json
import logging
import re
import subprocess
from pathlib import Path

import dagster as dg
import pyarrow.parquet as pq
import pytest

from echo_pipeline.definitions import build_resources
from echo_pipeline.defs.exports import export_assets
from echo_pipeline.defs.pairs import conversation_pairs, conversation_pairs_checks
from echo_pipeline.exports import read_exports
from echo_pipeline.infra.paths import PROJECT_ROOT, data_dir, sample_export_dir
from echo_pipeline.pairs import redaction

PREVIEW_LIMIT = 80
MIN_TEXT = 16  # shorter messages ("lol", "see you") are not evidence of a leak
DAGSTER_LINE = re.compile(r"^\S+ \S+ [+-]\d{4} - dagster - (?P<level>[A-Z]+) - ")


@pytest.fixture(scope="module")
def sample_texts() -> list[str]:
    contents = read_exports([sample_export_dir()]).column("content").to_pylist()
    return sorted({c.strip() for c in contents if len(c.strip()) >= MIN_TEXT})


@pytest.fixture(scope="module")
def sample_secrets() -> dict[str, set[str]]:
    """The raw PII and secret values in the sample, as the redaction rules find them."""
    found: dict[str, set[str]] = {}
    for text in read_exports([sample_export_dir()]).column("content").to_pylist():
        for rule in redaction._RULES:
            for match in rule.pattern.finditer(text):
                if rule.validate(match) is not None:
                    found.setdefault(rule.kind, set()).add(match.group(0).strip(" .,;:!?)"))
    return found


@pytest.fixture
def ingest_run(pipeline_env, caplog, capfd):
    """The sample ingested with every log channel captured: (result, metadata, log lines)."""
    caplog.set_level(logging.INFO)
    instance = dg.DagsterInstance.ephemeral()
    result = dg.materialize(
        [*export_assets, conversation_pairs, conversation_pairs_checks],
        resources=build_resources(),
        instance=instance,
    )
    assert result.success
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO]
    for entry in instance.all_logs(result.run_id):
        if entry.level >= logging.INFO:
            lines.append(entry.user_message or "")
            if entry.dagster_event is not None and entry.dagster_event.message:
                lines.append(entry.dagster_event.message)
    lines += info_console_blocks("\n".join(capfd.readouterr()))
    metadata: dict[str, list] = {}
    for node in ("read_chat_exports", "conversation_pairs"):
        for m in result.asset_materializations_for_node(node):
            metadata.setdefault(m.asset_key.to_user_string(), []).append(m.metadata)
    return result, metadata, lines


def info_console_blocks(console: str) -> list[str]:
    """Dagster console records at INFO and above (a record runs until the next header)."""
    blocks, current, keep = [], [], False
    for line in console.splitlines():
        header = DAGSTER_LINE.match(line)
        if header:
            if keep and current:
                blocks.append("\n".join(current))
            level = header["level"]
            keep = level in ("INFO", "WARNING", "ERROR", "CRITICAL")
            current = [line]
        else:
            current.append(line)
    if keep and current:
        blocks.append("\n".join(current))
    return blocks


def test_logs_at_info_carry_no_message_text(ingest_run, sample_texts):
    _, _, lines = ingest_run
    # The capture works: Dagster's user logs (context.log) and its own INFO+ records are in.
    assert any(re.search(r"read 4300 messages from 3 files", line) for line in lines)
    assert any(re.search(r"built \d+ pairs from \d+ turns", line) for line in lines)
    blob = "\n".join(lines)
    leaked = [text for text in sample_texts if text in blob]
    assert leaked == []


def test_metadata_holds_no_raw_pii_and_previews_are_short(ingest_run, sample_secrets):
    _, metadata, _ = ingest_run
    assert {"email", "phone"} <= set(sample_secrets)  # the sample really contains them
    everything = "\n".join(str(v.value) for ms in metadata.values() for m in ms for v in m.values())
    for kind, values in sample_secrets.items():
        leaked = sorted(v for v in values if v in everything)
        assert leaked == [], kind

    (pairs_meta,) = metadata["conversation_pairs"]
    preview = pairs_meta["preview"].value
    rows = [line for line in preview.splitlines()[2:] if line.strip()]
    assert 0 < len(rows) <= 5
    for row in rows:
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", row)[1:-1]]
        author, prompt, reply, split = cells
        assert len(prompt) <= PREVIEW_LIMIT and len(reply) <= PREVIEW_LIMIT
        assert len(author) <= 20 and split in {"train", "val", "test"}
        assert redaction.find_pii(prompt) == [] and redaction.find_pii(reply) == []
    assert pairs_meta["redactions"].value["email"] >= 1

    # The other assets carry counts, dates and author names, never message text.
    for node in ("raw_chat_export", "chat_messages"):
        (meta,) = metadata[node]
        text = "\n".join(str(v.value) for v in meta.values())
        assert all(len(line) <= 200 for line in text.splitlines())


def test_the_preview_of_long_messages_is_cut(ingest_run):
    from echo_pipeline.defs.pairs import _short

    assert len(_short("x" * 500)) == PREVIEW_LIMIT and _short("x" * 500).endswith("…")
    assert _short("a | b\nc") == "a \\| b c"


# --- planted secrets: the literal values never reach the pairs or the datasets ---------------

# Fake values of every kind redaction covers (documentation IPs, test cards, 555 and 07700 900
# phone ranges, example.* domains), each in a message with a marker word, so that a secret's
# absence downstream cannot come from its message having been dropped. The assertions look for
# these exact strings, not for what the redaction rules can find.
PLANTED = {
    "email": "jamie.rivera@example.com",
    "phone": "+44 7700 900123",
    "phone, US": "(555) 010-4477",
    "ip": "203.0.113.77",
    "ip, v6": "2001:db8:85a3::8a2e:370:7334",
    "card": "4111 1111 1111 1111",
    "card, no spaces": "5555555555554444",
    "token, GitHub": "ghp_aB3dE5fG7hJ9kL1mN3pQ5rS7tU9vW1xY3zA5",
    "token, AWS key id": "AKIAIOSFODNN7EXAMPLE",
    "token, Slack": "xoxb-2048-1024-aBcDeFgHiJkLmNoPqRsTuVwX",
    "token, password=": "hunter2hunter2",
    "url_credentials": "https://admin:s3cretPassw0rd@db.example.com:5432/prod",
    "url_credentials, password": "s3cretPassw0rd",
    "url_credentials, DSN": "postgres://svc:Tr0ub4dor3x@10.0.0.5/app",
    "url_credentials, DSN password": "Tr0ub4dor3x",
}
P = PLANTED
# (author, text) per session; sessions are days apart. Secrets sit in prompts, in replies, at
# the start and end of a message, before punctuation, on their own line of a multi-line
# message, and in consecutive messages of one author (merged into one turn).
PLANTED_SESSIONS = [
    [
        ("sam", "quokka01 hey what's your new email?"),
        ("alex", f"quokka02 it's {P['email']}, the old one is dead"),
        ("sam", f"quokka03 cool, mine's the same. call me on {P['phone']} later"),
        ("alex", "quokka04 will do"),
        ("sam", f"quokka05 or the office line {P['phone, US']}"),
        ("alex", "quokka06 noted"),
    ],
    [
        ("sam", "quokka07 the server is down again"),
        ("alex", f"{P['ip']} is the box quokka08, ssh in and check"),
        ("sam", f"quokka09 v6 only here: {P['ip, v6']}."),
        ("alex", "quokka10 then try that"),
        ("alex", f"quokka11 db is at {P['url_credentials, DSN']} btw"),
        ("sam", f"quokka12 and the admin panel?\n{P['url_credentials']} right?"),
        ("alex", f"quokka13 yes, password={P['token, password=']} for the old one"),
    ],
    [
        ("sam", "quokka14 can you pay for the tickets"),
        ("alex", f"quokka15 use my card\n{P['card']}\nexp 04/27"),
        ("sam", f"quokka16 or mine {P['card, no spaces']} whichever"),
        ("alex", "quokka17 mine is fine"),
    ],
    [
        ("sam", "quokka18 the deploy needs a token"),
        ("alex", f"quokka19 here {P['token, GitHub']} don't share it"),
        ("sam", f"quokka20 and aws? {P['token, AWS key id']}"),
        ("alex", f"quokka21 slack bot one too: {P['token, Slack']}"),
        ("sam", "quokka22 thanks!"),
        ("alex", "quokka23 np"),
    ],
]
MARKERS = [f"quokka{i:02d}" for i in range(1, 24)]


def write_planted_export(folder: Path) -> Path:
    """The sessions as an Android WhatsApp export (24-hour clock), one message every 3 minutes."""
    lines = [
        f"{day:02d}/03/2024, 18:{3 * minute:02d} - {author}: {text}"
        for day, session in enumerate(PLANTED_SESSIONS, start=14)
        for minute, (author, text) in enumerate(session)
    ]
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "WhatsApp Chat with sam.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def strings_in(value) -> list[str]:
    """Every string inside a Parquet/JSON value (nested lists and structs included)."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in strings_in(v)]
    if isinstance(value, list | tuple):
        return [s for v in value for s in strings_in(v)]
    return []


def artefact_text(path: Path, tokenizer) -> str:
    """All text a written artefact holds: cells, schema metadata, and the decoded token ids."""
    if path.suffix == ".jsonl":
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
        return "\n".join(strings_in(rows))
    table = pq.read_table(path)
    parts = [v.decode("utf-8", "replace") for v in (table.schema.metadata or {}).values()]
    for name in table.column_names:
        values = table.column(name).to_pylist()
        if name in ("input_ids", "labels"):
            parts += [tokenizer.decode([t for t in ids if t >= 0]) for ids in values]
        else:
            parts += strings_in(values)
    return "\n".join(parts)


def test_planted_secrets_of_every_kind_are_absent_from_pairs_and_datasets(
    pipeline_env, smollm2_tokenizer
):
    from echo_pipeline.defs.datasets import dataset_assets

    export = write_planted_export(pipeline_env / "planted")
    ingest = dg.materialize(
        [*export_assets, conversation_pairs, conversation_pairs_checks],
        resources=build_resources(),
        run_config={"ops": {"read_chat_exports": {"config": {"path": str(export)}}}},
    )
    assert ingest.success  # the blocking checks passed too
    dataset = dg.materialize(
        [*export_assets, conversation_pairs, *dataset_assets],
        selection=["template_dataset"],
        partition_key="chatml",
        resources=build_resources(),
    )
    assert dataset.success

    data = data_dir()
    written = sorted(p for p in data.rglob("*") if p.suffix in (".parquet", ".jsonl"))
    raw = {p.stem: p for p in written if p.stem in ("chat_messages", "raw_chat_export")}
    derived = {
        p.relative_to(data).as_posix(): artefact_text(p, smollm2_tokenizer)
        for p in written
        if p not in raw.values()
    }
    pairs = [text for name, text in derived.items() if "conversation_pairs" in name]
    datasets = [
        text
        for name, text in derived.items()
        if "template_dataset" in name and name.endswith(".parquet")
    ]
    jsonl = "\n".join(text for name, text in derived.items() if name.endswith(".jsonl"))
    assert len(pairs) == 1 and len(datasets) == 1 and jsonl

    # the secrets were read from the export (chat_messages keeps the raw text, git-ignored)...
    messages = artefact_text(raw["chat_messages"], smollm2_tokenizer)
    assert [kind for kind, value in PLANTED.items() if value not in messages] == []
    # ...every message carrying one became a pair (or its context) and a training example...
    for text in (pairs[0], datasets[0], jsonl):
        assert [m for m in MARKERS if m not in text] == []
    # ...with each secret replaced by a placeholder, and not one literal left in any file
    for name, text in derived.items():
        assert {kind: value for kind, value in PLANTED.items() if value in text} == {}, name
    assert [p for p in redaction.PLACEHOLDERS.values() if p not in pairs[0]] == []


# --- git: private data never gets committed ---------------------------------------------------


def check_ignore(*paths: str) -> set[str]:
    """The paths that .gitignore rules ignore (whether or not such files exist or are tracked)."""
    out = subprocess.run(
        ["git", "check-ignore", "--no-index", *paths],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
    )
    assert out.returncode in (0, 1), out.stderr
    return set(out.stdout.splitlines())


PRIVATE = [
    "data/chat_messages.parquet",
    "data/conversation_pairs.parquet",
    "data/template_dataset/chatml.parquet",
    "data/template_dataset_jsonl/chatml/train.jsonl",
    "data/lora_adapter/chatml__demo/adapter_model.safetensors",
    "data/training_work/chatml__demo/checkpoints/step-10/optimizer.pt",
    "data/models/smollm2-135m-instruct/model.safetensors",
    "data/evaluation_report/chatml__demo.html",
    "data/my_own_export/Direct Messages - bob [123].json",
    "mlruns/mlflow.db",
    "mlruns/mlflow.db.lock",
    "mlruns/artifacts/1/abc/artifacts/echo_metadata.json",
    ".dagster/storage/runs.db",
]
PUBLIC = [
    "data/sample/Direct Messages - sam [855575384304008197].json",
    "data/sample/README.md",
    "data/README.md",
    "mlruns/README.md",
]


def test_data_and_mlruns_are_git_ignored_except_the_sample():
    assert check_ignore(*PRIVATE) == set(PRIVATE)
    assert check_ignore(*PUBLIC) == set()


def test_only_the_sample_and_readmes_are_tracked_under_data_and_mlruns():
    tracked = subprocess.run(
        ["git", "ls-files", "data", "mlruns"],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split("\n")
    tracked = [t for t in tracked if t]
    assert tracked and all(
        t.startswith("data/sample/") or t in ("data/README.md", "mlruns/README.md") for t in tracked
    ), tracked


# --- servers listen on this machine only ------------------------------------------------------


def test_the_ui_servers_bind_localhost():
    from echo_pipeline.operations.servers import dagster_command, mlflow_command

    dagster = dagster_command(3000)
    assert dagster[dagster.index("-h") + 1] == "127.0.0.1"
    mlflow = mlflow_command(5000)
    assert mlflow[mlflow.index("--host") + 1] == "127.0.0.1"


def test_no_code_in_the_package_binds_all_interfaces():
    for path in sorted((PROJECT_ROOT / "echo_pipeline").rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            where = f"{path}:{getattr(node, 'lineno', '?')}"
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                assert "0.0.0.0" not in node.value and "[::]" not in node.value, where
            if isinstance(node, ast.Call):
                for kw in node.keywords:
                    if kw.arg in ("host", "bind", "listen") and isinstance(kw.value, ast.Constant):
                        assert kw.value.value in ("127.0.0.1", "localhost"), where
