"""Explicit Arrow schemas for every table the pipeline writes: the data contracts between stages."""

from __future__ import annotations

import pyarrow as pa

#: ``kind`` values of a chat message. Only ``message`` and ``reply`` are human turns;
#: ``system`` (joins, calls, pins…), ``command`` (app-command output), ``forward`` (someone
#: else's words) and ``other`` (unknown numeric Discord types) are dropped before pairing.
MESSAGE_KINDS = ("message", "reply", "system", "command", "forward", "other")
HUMAN_KINDS = ("message", "reply")  # someone's own words: the kinds that are paired

#: A template dataset's token columns, and the label that masks a token out of the loss
#: (outside the reply and its EOS): PyTorch's cross-entropy ``ignore_index``.
TOKEN_COLUMNS = ("input_ids", "labels")
IGNORE_INDEX = -100

CHAT_MESSAGES = pa.schema(
    [
        pa.field("source_file", pa.string(), nullable=False),
        pa.field("source_format", pa.string(), nullable=False),  # discord_json | discord_csv | ...
        pa.field("channel_id", pa.string(), nullable=False),
        pa.field("channel_name", pa.string()),
        pa.field("message_id", pa.string(), nullable=False),
        pa.field(
            "seq", pa.int64(), nullable=False
        ),  # order within its file: ties at minute precision
        pa.field("timestamp", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("author_id", pa.string(), nullable=False),
        pa.field("author_name", pa.string(), nullable=False),
        pa.field("is_bot", pa.bool_(), nullable=False),
        pa.field("kind", pa.string(), nullable=False),
        pa.field("content", pa.string(), nullable=False),
        pa.field("reply_to_id", pa.string()),
        pa.field("has_attachments", pa.bool_(), nullable=False),
        pa.field("attachment_kind", pa.string()),  # image | video | audio | file, of the first one
        pa.field("edited", pa.bool_(), nullable=False),
    ]
)

CONTEXT_TURN = pa.struct(
    [
        pa.field("speaker", pa.string()),
        pa.field("text", pa.string()),
        pa.field("is_me", pa.bool_()),  # my earlier turns render as the assistant's
    ]
)

CONVERSATION_PAIRS = pa.schema(
    [
        pa.field("pair_id", pa.string(), nullable=False),
        pa.field("session_id", pa.string(), nullable=False),
        pa.field("channel_id", pa.string(), nullable=False),
        pa.field("context", pa.list_(CONTEXT_TURN), nullable=False),
        pa.field("prompt_author", pa.string(), nullable=False),
        pa.field("prompt_author_id", pa.string(), nullable=False),
        pa.field("reply_author_id", pa.string(), nullable=False),
        pa.field("prompt_session_id", pa.string(), nullable=False),  # equals session_id: checked
        pa.field("prompt", pa.string(), nullable=False),
        pa.field("reply", pa.string(), nullable=False),
        pa.field("prompt_timestamp", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("reply_timestamp", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("is_explicit_reply", pa.bool_(), nullable=False),
        pa.field("split", pa.string(), nullable=False),  # train | val | test
    ]
)

TEMPLATE_DATASET = pa.schema(
    [
        pa.field("pair_id", pa.string(), nullable=False),
        pa.field("split", pa.string(), nullable=False),
        pa.field("prompt_text", pa.string(), nullable=False),
        pa.field("completion_text", pa.string(), nullable=False),
        pa.field("text", pa.string(), nullable=False),
        pa.field("prompt_tokens", pa.int32(), nullable=False),
        pa.field("completion_tokens", pa.int32(), nullable=False),
        pa.field("truncated", pa.bool_(), nullable=False),
    ]
)

#: ``source`` values of a preference pair: ``self_sample`` (the rejected reply was sampled from
#: an adapter by the preference stage), ``human_rating`` (a person scored a generated reply
#: below the real one), ``human_choice`` (a person picked the real reply over a generated one).
PREFERENCE_SOURCES = ("self_sample", "human_rating", "human_choice")

#: One turn of a preference pair's context: only who spoke and what, so a rating page that never
#: saw the pairs table can still write it.
PREFERENCE_CONTEXT_TURN = pa.struct(
    [
        pa.field("speaker", pa.string(), nullable=False),
        pa.field("text", pa.string(), nullable=False),
    ]
)

#: A (chosen, rejected) reply pair for the preference stage: ``chosen`` is my real reply,
#: ``rejected`` an adapter's reply to the same prompt. Written by the self-sampling asset and by
#: the human rating page (Parquet or JSONL with these columns); ``pair_id`` is the conversation
#: pair it answers, so the trainer renders the prompt exactly as supervised training did.
PREFERENCE_PAIRS = pa.schema(
    [
        pa.field("pair_id", pa.string(), nullable=False),
        pa.field("context", pa.list_(PREFERENCE_CONTEXT_TURN), nullable=False),
        pa.field("prompt_author", pa.string(), nullable=False),
        pa.field("prompt", pa.string(), nullable=False),
        pa.field("chosen", pa.string(), nullable=False),
        pa.field("rejected", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),  # one of PREFERENCE_SOURCES
        # The partition key (adapter) that produced the rejected or rated reply; "" if none.
        pa.field("adapter", pa.string(), nullable=False),
        pa.field("created_at", pa.timestamp("us", tz="UTC"), nullable=False),
    ]
)


def empty_table(schema: pa.Schema) -> pa.Table:
    """A zero-row table of ``schema``, so empty inputs still write well-typed Parquet."""
    return schema.empty_table()
