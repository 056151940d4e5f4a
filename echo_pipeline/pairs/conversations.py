"""From chat messages to (context, prompt) -> my reply pairs.

The steps mirror how a person reads a chat log: keep what humans wrote, merge one author's
burst of messages into a turn, cut the log into sessions at long silences, and pair each of my
turns with the turn it answers. Everything is vectorised over pandas columns because real
exports reach millions of messages; only the final list-of-struct context column is assembled
with Arrow offsets rather than Python loops.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from echo_pipeline.infra import schemas
from echo_pipeline.pairs.pairing_config import PairingConfig  # build_pairs takes it: re-exported
from echo_pipeline.pairs.redaction import redact_series

ME_IDS_METADATA_KEY = b"echo.me_ids"  # Parquet schema metadata: who "me" resolved to
ME_NAMES_METADATA_KEY = b"echo.me_names"  # ...and my display names, most used first
REDACTED_METADATA_KEY = b"echo.redacted"  # whether redaction ran (the user may turn it off)
CONTEXT_TURNS_METADATA_KEY = b"echo.context_turns"  # earlier turns each pair keeps at most
SPLITS = ("train", "val", "test")

_RAW_USER_MENTION = r"<@!?\d+>"
_RAW_ROLE_MENTION = r"<@&\d+>"
_RAW_CHANNEL_MENTION = r"<#\d+>"
_RAW_CUSTOM_EMOJI = r"<a?(:\w+:)\d+>"
_LINK_ONLY = r"^\s*(?:<?https?://\S+>?\s*)+$"
# A turn of nothing but attachment placeholders ("[image]", "[video]\n[file]"): see clean_messages.
_PLACEHOLDER_ONLY = r"^\s*(?:\[(?:image|video|audio|file)\]\s*)+$"


class MeNotFoundError(ValueError):
    """Raised when "me" matches no author; the message lists who could be meant."""


def heldout_split(rows_by_split: Mapping[str, int], preferred: str = "test") -> str:
    """The split a model is judged on: ``preferred`` if it has rows, else ``val``.

    Training and evaluation both ask here, so the reply loss logged at training time and the
    evaluation report are about the same pairs. ``val`` may be empty too (a chat too small to
    hold anything out); callers decide whether that is an error.
    """
    return preferred if rows_by_split.get(preferred, 0) else "val"


@dataclass
class PairingReport:
    """What happened on the way from messages to pairs, for metadata and the CLI."""

    messages_in: int = 0
    messages_kept: int = 0
    dropped: Counter = field(default_factory=Counter)
    redactions: dict[str, int] = field(default_factory=dict)
    me_ids: list[str] = field(default_factory=list)
    me_names: list[str] = field(default_factory=list)
    turns: int = 0
    sessions: int = 0
    pairs: int = 0
    explicit_reply_pairs: int = 0
    pairs_by_split: dict[str, int] = field(default_factory=dict)
    blank_share: float = 0.0
    content_access_suspect: bool = False
    warnings: list[str] = field(default_factory=list)


def _stable_hash(*parts: pd.Series) -> pd.Series:
    """A 16-hex-digit content hash per row: ids that survive reruns and input reordering."""
    joined = parts[0].astype(str)
    for part in parts[1:]:
        joined = joined + "\x1f" + part.astype(str)
    return joined.map(
        lambda s: hashlib.blake2b(s.encode("utf-8", "surrogatepass"), digest_size=8).hexdigest()
    )


def author_counts(messages: pd.DataFrame) -> pd.DataFrame:
    """Human authors with their message counts, most active first: the candidates for "me"."""
    human = messages[messages["kind"].isin(schemas.HUMAN_KINDS) & ~messages["is_bot"]]
    counts = (
        human.groupby(["author_id", "author_name"], sort=False)
        .size()
        .rename("messages")
        .reset_index()
    )
    return counts.sort_values("messages", ascending=False, kind="stable").reset_index(drop=True)


def resolve_me(messages: pd.DataFrame, me: Iterable[str]) -> list[str]:
    """Author ids matching any of ``me`` (ids exactly, names case-insensitively).

    Alt accounts across exports are simply several entries. Unknown names fail loudly with the
    candidates, because a typo here would silently train on somebody else's voice.
    """
    wanted = [m.strip() for m in me if m and m.strip()]
    lowered = {m.casefold() for m in wanted}
    ids = messages["author_id"].astype(str)
    names = messages["author_name"].astype(str).str.casefold()
    hit = ids.isin(wanted) | names.isin(lowered)
    found = sorted(set(ids[hit]))
    if not found:
        candidates = author_counts(messages).head(15)
        listing = ", ".join(
            f"{r.author_name} (id {r.author_id}, {r.messages} messages)"
            for r in candidates.itertuples()
        )
        raise MeNotFoundError(
            f"no author matches me={wanted!r}; candidates: {listing or 'none (no human messages)'}"
        )
    return found


def clean_messages(
    messages: pd.DataFrame, config: PairingConfig, report: PairingReport | None = None
) -> pd.DataFrame:
    """Human messages only, with readable mentions, attachment handling and redaction applied."""
    report = report if report is not None else PairingReport()
    report.messages_in = len(messages)
    df = messages.copy()
    df["content"] = df["content"].fillna("").astype(str)

    non_human = ~df["kind"].isin(schemas.HUMAN_KINDS)
    for kind, n in df.loc[non_human, "kind"].value_counts().items():
        report.dropped[f"kind:{kind}"] += int(n)
    bots = ~non_human & df["is_bot"]
    report.dropped["bot"] += int(bots.sum())
    df = df[~non_human & ~bots]

    content = df["content"].str.strip()
    blank = content.eq("")
    attachment_only = blank & df["has_attachments"]
    fully_blank = blank & ~df["has_attachments"]
    report.blank_share = float(fully_blank.mean()) if len(df) else 0.0
    if len(df) >= 20 and report.blank_share > 0.5:
        report.content_access_suspect = True
        report.warnings.append(
            f"{report.blank_share:.0%} of human messages have no text and no attachment: the export "
            "was probably made without message-content access (re-export with a user token)"
        )
    report.dropped["blank"] += int(fully_blank.sum())
    if config.attachments == "drop":
        report.dropped["attachment_only"] += int(attachment_only.sum())
        keep = ~blank
    else:
        kinds = df["attachment_kind"].fillna("file").astype(str)
        content = content.where(~attachment_only, "[" + kinds + "]")
        keep = ~fully_blank
    df = df.assign(content=content)[keep]

    text = df["content"]
    # Every markup starts with "<": only those rows go through the patterns. On non-ASCII text
    # (any emoji) pandas runs \d/\w patterns with Python's re row by row, not with RE2: all
    # rows four times cost about 4 s per million messages.
    markup = text.str.contains("<", regex=False).to_numpy(dtype=bool)
    if markup.any():
        sub = text[markup]
        sub = sub.str.replace(_RAW_USER_MENTION, "@user", regex=True)
        sub = sub.str.replace(_RAW_ROLE_MENTION, "@role", regex=True)
        sub = sub.str.replace(_RAW_CHANNEL_MENTION, "#channel", regex=True)
        sub = sub.str.replace(_RAW_CUSTOM_EMOJI, r"\1", regex=True)
        text = text.copy()
        text[markup] = sub.to_numpy()
    if config.redact:
        text, counts = redact_series(text)
        report.redactions = {k: int(v) for k, v in counts.items() if v}
    df = df.assign(content=text)
    report.messages_kept = len(df)
    return df.reset_index(drop=True)


def build_turns(
    messages: pd.DataFrame, me_ids: Sequence[str], config: PairingConfig
) -> pd.DataFrame:
    """Merge bursts into turns and number sessions.

    A turn is one author's consecutive messages within ``merge_gap_s`` of each other; a
    message that explicitly replies to something starts its own turn so that its target stays
    attached to it. A session ends after ``session_gap_s`` of silence.
    """
    df = messages.sort_values(["channel_id", "timestamp", "seq"], kind="stable").reset_index(
        drop=True
    )
    if df.empty:
        return _empty_turns()
    ts = df["timestamp"]
    channel = df["channel_id"]
    new_channel = channel.ne(channel.shift())
    gap_s = ts.diff().dt.total_seconds().fillna(np.inf)
    new_session = new_channel | (gap_s > config.session_gap_s)
    has_reply = df["reply_to_id"].notna() & df["reply_to_id"].astype(str).ne("")
    new_turn = (
        new_session
        | df["author_id"].ne(df["author_id"].shift())
        | (gap_s > config.merge_gap_s)
        | has_reply
    )
    df["session_no"] = new_session.cumsum() - 1
    df["turn_no"] = new_turn.cumsum() - 1

    grouped = df.groupby("turn_no", sort=True)
    turns = grouped.agg(
        channel_id=("channel_id", "first"),
        session_no=("session_no", "first"),
        author_id=("author_id", "first"),
        author_name=("author_name", "first"),
        first_message_id=("message_id", "first"),
        reply_to_id=("reply_to_id", "first"),
        start=("timestamp", "first"),
        end=("timestamp", "last"),
    )
    turns["text"] = _join_turn_texts(df["content"], new_turn.to_numpy(dtype=bool))
    turns = turns.reset_index()
    turns["is_me"] = turns["author_id"].isin(list(me_ids))
    # One hash per session (not per turn), broadcast to its turns; a session has one channel.
    sessions = turns.groupby("session_no", sort=True)[["channel_id", "first_message_id"]].first()
    session_ids = _stable_hash(sessions["channel_id"], sessions["first_message_id"])
    turns["session_id"] = session_ids.reindex(turns["session_no"].to_numpy()).to_numpy()
    # Where each message landed, so explicit replies can find the turn of their target.
    turns.attrs["message_turn"] = pd.Series(
        df["turn_no"].to_numpy(),
        index=df["channel_id"].astype(str) + "\x1f" + df["message_id"].astype(str),
    )
    return turns


def arrow_column(values: pd.Series | np.ndarray, type: pa.DataType) -> pa.Array:
    """A pandas column (or numpy array) as one contiguous Arrow array: the one place pairing
    hands columns to Arrow kernels that build offsets over them.

    With pandas 3 a text column stays Arrow-backed and keeps the chunks of the table it came
    from (one per export file once a folder holds several), so ``pa.array`` returns a
    ``ChunkedArray``, which ``ListArray.from_arrays`` and ``StructArray.from_arrays`` refuse.
    A single-chunk column costs nothing extra; a multi-chunk one is copied once.
    """
    array = pa.array(values, type=type)
    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks() if array.num_chunks else pa.array([], type=type)
    return array


def _join_turn_texts(content: pd.Series, new_turn: np.ndarray) -> pd.api.extensions.ExtensionArray:
    """Each turn's messages joined by newlines, in turn order, in one Arrow kernel.

    A turn's messages are consecutive rows, so the turn starts are list offsets over the content
    column. (``groupby(...).agg("\\n".join)`` did the same with a Python call per turn: about
    half of build_pairs' time on a 100k-message export.)
    """
    import pyarrow.compute as pc

    offsets = np.append(np.flatnonzero(new_turn), len(content)).astype(np.int64)
    values = arrow_column(content, pa.large_string())
    turns = pa.LargeListArray.from_arrays(pa.array(offsets), values)
    joined = pc.binary_join(turns, pa.scalar("\n", pa.large_string()))
    return joined.to_pandas().array  # positional, same str dtype as the groupby gave


def _empty_turns() -> pd.DataFrame:
    turns = pd.DataFrame(
        {
            "turn_no": pd.Series(dtype="int64"),
            "channel_id": pd.Series(dtype="object"),
            "session_no": pd.Series(dtype="int64"),
            "author_id": pd.Series(dtype="object"),
            "author_name": pd.Series(dtype="object"),
            "first_message_id": pd.Series(dtype="object"),
            "reply_to_id": pd.Series(dtype="object"),
            "start": pd.Series(dtype="datetime64[us, UTC]"),
            "end": pd.Series(dtype="datetime64[us, UTC]"),
            "text": pd.Series(dtype="object"),
            "is_me": pd.Series(dtype="bool"),
            "session_id": pd.Series(dtype="object"),
        }
    )
    turns.attrs["message_turn"] = pd.Series(dtype="int64")
    return turns


def _prompt_turns(turns: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each of my turns: the turn it answers (or -1) and whether that came from a reply.

    An explicit reply takes its target's turn when the target is someone else's and lies in
    the same session (pairs never cross sessions; an answer to a day-old message is better
    left out than paired with a context it does not belong to). Otherwise the turn right
    before mine answers to, if it is someone else's.
    """
    n = len(turns)
    session = turns["session_no"].to_numpy()
    is_me = turns["is_me"].to_numpy(dtype=bool)
    prev = np.arange(n) - 1
    adjacent_ok = (prev >= 0) & is_me
    adjacent_ok[adjacent_ok] &= session[prev[adjacent_ok]] == session[adjacent_ok]
    adjacent_ok[adjacent_ok] &= ~is_me[prev[adjacent_ok]]
    prompt = np.where(adjacent_ok, prev, -1)

    explicit = np.zeros(n, dtype=bool)
    lookup: pd.Series = turns.attrs.get("message_turn", pd.Series(dtype="int64"))
    reply_to = turns["reply_to_id"]
    has_target = is_me & reply_to.notna().to_numpy() & reply_to.astype(str).ne("").to_numpy()
    if has_target.any() and len(lookup):
        keys = (
            turns.loc[has_target, "channel_id"].astype(str)
            + "\x1f"
            + reply_to[has_target].astype(str)
        )
        target = lookup.reindex(keys.to_numpy()).to_numpy()
        rows = np.flatnonzero(has_target)
        found = ~pd.isna(target)
        rows, target = rows[found], target[found].astype(np.int64)
        ok = (session[target] == session[rows]) & ~is_me[target] & (target < rows)
        prompt[rows[ok]] = target[ok]
        explicit[rows[ok]] = True
    return np.flatnonzero(prompt >= 0), prompt[prompt >= 0], explicit[prompt >= 0]


def _context_column(turns: pd.DataFrame, prompt_idx: np.ndarray, k: int) -> pa.Array:
    """Up to ``k`` turns of the same session before each prompt, oldest first, as Arrow lists."""
    session = turns["session_no"].to_numpy()
    lengths = np.zeros(len(prompt_idx), dtype=np.int64)
    for back in range(1, k + 1):
        idx = prompt_idx - back
        ok = (idx >= 0) & (lengths == back - 1)
        ok[ok] &= session[idx[ok]] == session[prompt_idx[ok]]
        lengths += ok
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    # Flattened indices: for pair i, turns prompt_i - len_i .. prompt_i - 1.
    starts = np.repeat(prompt_idx - lengths, lengths)
    within = np.arange(offsets[-1]) - np.repeat(offsets[:-1], lengths)
    flat = starts + within
    # Gather Python str objects, not ``.astype(str)``: that makes a fixed-width numpy unicode
    # array as wide as the longest turn (gigabytes at 1M messages, and then a ChunkedArray).
    names = turns["author_name"].astype(str).to_numpy(dtype=object)
    texts = turns["text"].astype(str).to_numpy(dtype=object)
    values = pa.StructArray.from_arrays(
        [
            arrow_column(names[flat], pa.string()),
            arrow_column(texts[flat], pa.string()),
            arrow_column(turns["is_me"].to_numpy()[flat], pa.bool_()),
        ],
        fields=list(schemas.CONTEXT_TURN),
    )
    return pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), values)


def _session_order(sessions: pd.DataFrame, config: PairingConfig) -> np.ndarray:
    """Positions of the sessions in the order they are taken into the held-out splits.

    ``hash``: by the stable session id, so reruns and grown exports keep old sessions where they
    were. ``chronological``: latest first, the honest choice when the question is "does it still
    sound like me next month". Ties (equal start) fall back to the session id.
    """
    ids = sessions["session_id"].astype(str).to_numpy()
    if config.split_method == "hash":
        return np.lexsort((ids,))
    start = sessions["start"].to_numpy()
    return np.lexsort((ids, start))[::-1]


def kept_train_sessions(sessions: pd.DataFrame, share: float) -> pd.Series:
    """The train sessions a ``train_share`` below 1 keeps: those whose id hashes below
    ``share`` of the hash range. Nested (a quarter is inside the half) and independent of
    everything but the session id, so a learning curve compares like with like."""
    train = sessions.loc[sessions["split"] == "train", "session_id"]
    unit = _stable_hash(train).map(lambda h: int(h, 16) / 2.0**64)
    return train[unit < share]


def split_targets(total: int, config: PairingConfig) -> tuple[int, int, int]:
    """(test target, val target, held-out cap) in pairs for ``total`` pairs.

    The cap keeps ``min_train_fraction`` of the pairs for training. val gets ``val_fraction``;
    test gets at least ``test_fraction`` and ``test_min_pairs`` where the cap allows (it always
    allows ``test_fraction``, since the fractions sum below ``1 - min_train_fraction`` in any
    sane config; if not, test comes first).
    """
    cap = int(np.floor(total * (1.0 - config.min_train_fraction)))
    wanted = max(int(np.ceil(total * config.test_fraction)), config.test_min_pairs)
    if config.test_fraction == 0 and config.test_min_pairs == 0:
        wanted = 0
    floor = min(int(np.ceil(total * config.test_fraction)), cap)
    val = min(int(np.ceil(total * config.val_fraction)), cap - floor)
    test = min(wanted, cap - val)
    return test, val, cap


def assign_splits(sessions: pd.DataFrame, config: PairingConfig) -> pd.Series:
    """train/val/test per session, sized in pairs, deterministic, no session in two splits.

    ``sessions`` has ``session_id``, ``start`` and ``pairs`` (pairs per session). Real sessions
    are lumpy (one may hold a third of an export), so targets are met by whole sessions:

    1. in :func:`_session_order`, test then val take every session that fits in what is left
       of their target;
    2. a split still short takes the smallest session that reaches its target (else the biggest
       that fits, and again), never past the held-out cap: train keeps ``min_train_fraction``;
    3. a test split still empty (every session is bigger than the cap) gets the smallest
       session: with two or more sessions with pairs there is always something to evaluate on
       and something to train on.
    """
    split = np.full(len(sessions), "train", dtype=object)
    pairs = sessions["pairs"].to_numpy(dtype=np.int64)
    targets = dict(zip(("test", "val"), split_targets(int(pairs.sum()), config)[:2], strict=True))
    cap = split_targets(int(pairs.sum()), config)[2]
    order = [int(i) for i in _session_order(sessions, config) if pairs[i] > 0]
    rank = {i: n for n, i in enumerate(order)}
    taken = {"test": 0, "val": 0}

    def take(i: int, name: str) -> None:
        split[i] = name
        taken[name] += int(pairs[i])

    def fits(i: int) -> bool:
        return split[i] == "train" and taken["test"] + taken["val"] + pairs[i] <= cap

    for name in ("test", "val"):
        for i in order:
            if fits(i) and taken[name] + pairs[i] <= targets[name]:
                take(i, name)
    for name in ("test", "val"):
        while taken[name] < targets[name]:
            candidates = [i for i in order if fits(i)]
            if not candidates:
                break
            reaching = [i for i in candidates if taken[name] + pairs[i] >= targets[name]]
            if reaching:
                take(min(reaching, key=lambda i: (pairs[i], rank[i])), name)
            else:
                take(max(candidates, key=lambda i: (pairs[i], -rank[i])), name)
    # Whatever fitted val would have fitted test first, so here val is empty too.
    if targets["test"] > 0 and not taken["test"] and len(order) >= 2:
        take(min(order, key=lambda i: (pairs[i], rank[i])), "test")
    return pd.Series(split, index=sessions.index)


def _redact_joined_turns(turns: pd.DataFrame, report: PairingReport) -> None:
    """Redact again the turns whose joined messages form a secret none of them was alone.

    Only a PEM private key can span messages (its pattern crosses newlines): Discord cuts
    messages at 2000 characters, so a pasted 4096-bit key arrives as two messages of one turn.
    """
    joined = turns["text"].str.contains("-----BEGIN", regex=False).to_numpy(dtype=bool)
    if not joined.any():
        return
    redacted, counts = redact_series(turns.loc[joined, "text"])
    turns.loc[joined, "text"] = redacted.to_numpy()
    for kind, n in counts.items():
        if n:
            report.redactions[kind] = report.redactions.get(kind, 0) + int(n)


def _beyond_cap(replies: pd.Series, pair_ids: pd.Series, keep: pd.Series, cap: int) -> pd.Series:
    """Kept rows whose normalised reply already has ``cap`` kept rows before it.

    Which ones stay is decided by the stable pair id, not by time, so the survivors are spread
    over the whole chat (and over the splits) and the choice is the same on every run.
    """
    normalised = replies.str.lower().str.replace(r"\s+", " ", regex=True).str.strip(" .!?,;:~")
    order = pair_ids.where(keep)  # dropped rows do not take a place
    rank = order.groupby(normalised).rank(method="first")
    return keep & (rank > cap)


def _source_files(messages: pd.DataFrame, shown: int = 3) -> str:
    """The export files behind ``messages``, for a warning that must say which file it means."""
    if "source_file" not in messages:
        return "the export"
    files = list(dict.fromkeys(messages["source_file"].astype(str)))
    if not files:
        return "the export"
    more = f" and {len(files) - shown} more" if len(files) > shown else ""
    return ", ".join(files[:shown]) + more


def build_pairs(messages: pd.DataFrame, config: PairingConfig) -> tuple[pa.Table, PairingReport]:
    """The whole path from ``chat_messages`` rows to ``conversation_pairs``."""
    report = PairingReport()
    me_ids = resolve_me(messages, config.me)
    report.me_ids = me_ids
    report.me_names = me_display_names(messages, me_ids)
    cleaned = clean_messages(messages, config, report)
    turns = build_turns(cleaned, me_ids, config)
    if config.redact:
        _redact_joined_turns(turns, report)
    report.turns = len(turns)
    report.sessions = int(turns["session_no"].nunique()) if len(turns) else 0
    if not (cleaned["author_id"].isin(me_ids)).any():
        report.warnings.append("none of my messages survived cleaning")
    if cleaned["author_id"].nunique() < 2:
        report.warnings.append(
            f"{_source_files(messages)}: only one author in the export: nobody to reply to, "
            "so no pairs"
        )

    reply_idx, prompt_idx, explicit = _prompt_turns(turns)
    replies = turns.iloc[reply_idx].reset_index(drop=True)
    prompts = turns.iloc[prompt_idx].reset_index(drop=True)
    context = _context_column(turns, prompt_idx, config.context_turns)

    frame = pd.DataFrame(
        {
            "pair_id": _stable_hash(
                replies["channel_id"], prompts["first_message_id"], replies["first_message_id"]
            ),
            "session_id": replies["session_id"],
            "channel_id": replies["channel_id"].astype(str),
            "prompt_author": prompts["author_name"].astype(str),
            "prompt_author_id": prompts["author_id"].astype(str),
            "reply_author_id": replies["author_id"].astype(str),
            "prompt_session_id": prompts["session_id"].astype(str),
            "prompt": prompts["text"].astype(str),
            "reply": replies["text"].astype(str),
            "prompt_timestamp": prompts["start"],
            "reply_timestamp": replies["start"],
            "is_explicit_reply": explicit,
        }
    )
    frame["_context_pos"] = np.arange(len(frame))

    keep = pd.Series(True, index=frame.index)
    reply_len = frame["reply"].str.len()
    for reason, bad in (
        ("empty", frame["reply"].str.strip().eq("") | frame["prompt"].str.strip().eq("")),
        ("reply_too_short", reply_len < config.min_reply_chars),
        ("reply_too_long", reply_len > config.max_reply_chars),
        ("prompt_too_long", frame["prompt"].str.len() > config.max_prompt_chars),
        (
            "link_only",
            frame["reply"].str.match(_LINK_ONLY)
            if config.drop_link_only
            else pd.Series(False, index=frame.index),
        ),
        (
            "placeholder_only",
            frame["reply"].str.match(_PLACEHOLDER_ONLY)
            if config.drop_placeholder_replies
            else pd.Series(False, index=frame.index),
        ),
    ):
        report.dropped[f"pair:{reason}"] += int((keep & bad).sum())
        keep &= ~bad
    dup = frame.duplicated(subset=["prompt", "reply"], keep="first")
    report.dropped["pair:duplicate"] += int((keep & dup).sum())
    keep &= ~dup
    if config.max_same_reply:
        frequent = _beyond_cap(frame["reply"], frame["pair_id"], keep, config.max_same_reply)
        report.dropped["pair:frequent_reply"] += int(frequent.sum())
        keep &= ~frequent
    frame = frame[keep]

    sessions = turns.groupby("session_id", sort=False)["start"].min().rename("start").reset_index()
    per_session = frame["session_id"].value_counts()
    sessions["pairs"] = sessions["session_id"].map(per_session).fillna(0).astype("int64")
    sessions["split"] = assign_splits(sessions, config)
    frame = frame.merge(sessions[["session_id", "split"]], on="session_id", how="left")
    if config.train_share < 1:
        unused = (frame["split"] == "train") & ~frame["session_id"].isin(
            kept_train_sessions(sessions, config.train_share)
        )
        report.dropped["pair:train_share"] += int(unused.sum())
        frame = frame[~unused]
    frame = frame.sort_values(["channel_id", "reply_timestamp", "pair_id"], kind="stable")

    table = pa.Table.from_pandas(
        frame.drop(columns=["_context_pos"]), preserve_index=False
    ).append_column("context", context.take(pa.array(frame["_context_pos"].to_numpy())))
    table = table.select(schemas.CONVERSATION_PAIRS.names).cast(schemas.CONVERSATION_PAIRS)
    table = table.replace_schema_metadata(
        {
            ME_IDS_METADATA_KEY: json.dumps(me_ids),
            ME_NAMES_METADATA_KEY: json.dumps(report.me_names),
            REDACTED_METADATA_KEY: json.dumps(config.redact),
            CONTEXT_TURNS_METADATA_KEY: json.dumps(config.context_turns),
        }
    )

    report.pairs = table.num_rows
    report.explicit_reply_pairs = int(frame["is_explicit_reply"].sum())
    counts = frame["split"].value_counts()
    report.pairs_by_split = {s: int(counts.get(s, 0)) for s in SPLITS}
    return table, report


def me_display_names(messages: pd.DataFrame, me_ids: Sequence[str]) -> list[str]:
    """The names my accounts wrote under, most messages first (what the system prompt calls me)."""
    mine = author_counts(messages[messages["author_id"].astype(str).isin(list(me_ids))])
    return list(dict.fromkeys(str(n) for n in mine["author_name"] if str(n).strip()))


@dataclass(frozen=True)
class MeIdentity:
    """Who "me" is in a conversation_pairs table: author ids and display names."""

    ids: tuple[str, ...]
    names: tuple[str, ...]


def pairs_identity(pairs: pa.Table) -> MeIdentity:
    """The one reader of the identity ``build_pairs`` stores with the pairs.

    Pairs written before names were stored fall back to my most frequent speaker name in the
    context turns (none with ``context_turns=0``).
    """
    metadata = pairs.schema.metadata or {}
    ids = tuple(json.loads(metadata.get(ME_IDS_METADATA_KEY, b"[]")))
    raw_names = metadata.get(ME_NAMES_METADATA_KEY)
    if raw_names is not None:
        return MeIdentity(ids, tuple(json.loads(raw_names)))
    guessed = infer_me_name(pairs.column("context").to_pylist())
    return MeIdentity(ids, () if guessed == "me" else (guessed,))


def pairs_context_turns(pairs: pa.Table) -> int:
    """How many earlier turns the pairing kept per pair: what a prompt keeps in chat too.
    Pairs written before it was stored: the most any pair carries."""
    import pyarrow.compute as pc

    raw = (pairs.schema.metadata or {}).get(CONTEXT_TURNS_METADATA_KEY)
    if raw is not None:
        return int(json.loads(raw))
    most = pc.max(pc.list_value_length(pairs.column("context"))).as_py() if len(pairs) else None
    return int(most or 0)


def infer_me_name(contexts: Sequence[Any]) -> str:
    """My most frequent speaker name in context turns (``is_me``), for the default system prompt;
    "me" when no turn says."""
    names: Counter[str] = Counter()
    for turns in contexts:
        for turn in turns if turns is not None else ():
            if turn.get("is_me") and turn.get("speaker"):
                names[str(turn["speaker"])] += 1
    return names.most_common(1)[0][0] if names else "me"
