"""My own replies as memory: past (prompt, my reply) exchanges retrieved as examples of how I answer.

The index holds the train split's pairs only, each prompt embedded with the shipped MiniLM
(:mod:`echo_pipeline.evaluation.relevance`). For a prompt, :meth:`ReplyMemory.examples_for`
returns the ``k`` train exchanges whose prompts are most similar, never from the prompt's own
session (so never the pair itself); held-out prompts can only ever see train pairs. The
examples go into the prompt before the conversation (:class:`~echo_pipeline.datasets.templates.Example`),
the same way when the dataset is built and when a model is prompted, so training and
inference see the same prompt shape.

Deterministic, bit for bit, whatever else is embedded alongside: texts are embedded in batches
of a fixed shape (:data:`EMBED_BATCH` rows of :data:`EMBED_TOKENS` tokens, short batches filled
with empty rows), so a prompt's vector does not depend on its batch, and a query is scored
against the index one matrix-vector product at a time, its scores rounded, ties going to the
earlier pair. A prompt embedded alone in ``chat`` gets the examples the dataset gave it.

Pure: no Dagster; numpy here, pyarrow/torch/transformers only inside the functions that need them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa

EMBEDDER_NAME = "all-MiniLM-L6-v2"
EMBED_BATCH = 8
EMBED_TOKENS = 64  # a prompt's first 64 tokens decide what it is about
EXAMPLE_CHARS = 240  # each example's prompt and reply are cut here: k examples stay cheap
SCORE_DECIMALS = 6
#: The index's columns: one row per train pair, in pairs order.
INDEX_COLUMNS = ("pair_id", "session_id", "prompt_author", "prompt", "reply", "vector")

Encode = Callable[[Sequence[str]], np.ndarray]


def clip(text: str, limit: int = EXAMPLE_CHARS) -> str:
    """``text`` stripped and cut to ``limit`` characters at a word boundary where one is near."""
    text = str(text).replace("\r\n", "\n").strip()
    if len(text) <= limit:
        return text
    cut = text[:limit]
    space = cut.rfind(" ")
    return (cut[:space] if space > limit * 2 // 3 else cut).rstrip() + "…"


@dataclass(frozen=True)
class Example:
    """An earlier exchange of mine shown before the conversation: how I answer (reply memory)."""

    prompt: str
    reply: str
    prompt_author: str = ""


@dataclass(frozen=True)
class MemoryIndex:
    """The train split's exchanges and the unit-length embedding of each prompt."""

    pair_ids: tuple[str, ...]
    session_ids: tuple[str, ...]
    prompt_authors: tuple[str, ...]
    prompts: tuple[str, ...]
    replies: tuple[str, ...]
    vectors: np.ndarray = field(repr=False)  # float32 [len, dim]

    def __len__(self) -> int:
        return len(self.pair_ids)

    def example(self, position: int) -> Example:
        return Example(
            clip(self.prompts[position]),
            clip(self.replies[position]),
            self.prompt_authors[position],
        )

    def to_table(self) -> pa.Table:
        import pyarrow as pa

        dim = int(self.vectors.shape[1]) if self.vectors.ndim == 2 else 0
        flat = pa.array(np.ascontiguousarray(self.vectors, np.float32).reshape(-1))
        return pa.table(
            {
                "pair_id": pa.array(self.pair_ids, pa.string()),
                "session_id": pa.array(self.session_ids, pa.string()),
                "prompt_author": pa.array(self.prompt_authors, pa.string()),
                "prompt": pa.array(self.prompts, pa.string()),
                "reply": pa.array(self.replies, pa.string()),
                "vector": pa.FixedSizeListArray.from_arrays(flat, dim),
            }
        )

    @classmethod
    def from_table(cls, table: pa.Table, source: str | Path = "reply_memory") -> MemoryIndex:
        missing = [c for c in INDEX_COLUMNS if c not in table.column_names]
        if missing:
            raise ValueError(
                f"{source}: not a reply memory index (no {', '.join(missing)}); "
                "re-materialise reply_memory"
            )
        column = table.column("vector").combine_chunks()
        dim = column.type.list_size if len(table) else 0
        vectors = np.asarray(column.flatten(), np.float32).reshape(len(table), dim)

        def texts(name: str) -> tuple[str, ...]:
            return tuple(str(v or "") for v in table.column(name).to_pylist())

        return cls(
            texts("pair_id"),
            texts("session_id"),
            texts("prompt_author"),
            texts("prompt"),
            texts("reply"),
            vectors,
        )

    @classmethod
    def load(cls, path: str | Path) -> MemoryIndex:
        import pyarrow.parquet as pq

        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"{path}: no reply memory index; materialise reply_memory")
        return cls.from_table(pq.read_table(path), path)

    def digest(self) -> str:
        """What the index holds: the pairs and their vectors, in order."""
        hasher = hashlib.sha256()
        for column in (
            self.pair_ids,
            self.session_ids,
            self.prompt_authors,
            self.prompts,
            self.replies,
        ):
            for value in column:
                hasher.update(value.encode("utf-8") + b"\x00")
        hasher.update(np.ascontiguousarray(self.vectors, np.float32).tobytes())
        return hasher.hexdigest()[:16]


def build_index(pairs: pd.DataFrame, encode: Encode) -> MemoryIndex:
    """The index of the train pairs of a ``conversation_pairs`` frame (other splits never enter)."""
    train = pairs[pairs["split"].astype(str) == "train"]
    keep = [
        bool(str(p).strip()) and bool(str(r).strip())
        for p, r in zip(train["prompt"], train["reply"], strict=True)
    ]
    train = train[keep]
    prompts = tuple(str(p) for p in train["prompt"])
    vectors = encode(list(prompts)) if prompts else np.zeros((0, 0), np.float32)
    return MemoryIndex(
        tuple(str(i) for i in train["pair_id"]),
        tuple(str(s) for s in train["session_id"]),
        tuple(str(a or "") for a in train["prompt_author"]),
        prompts,
        tuple(str(r) for r in train["reply"]),
        np.asarray(vectors, np.float32),
    )


def nearest(
    index: MemoryIndex, query: np.ndarray, k: int, exclude_session: str | None = None
) -> list[int]:
    """Positions of the ``k`` most similar indexed prompts, least similar first.

    Scores are rounded to :data:`SCORE_DECIMALS` and ties go to the earlier pair, so the
    choice does not hang on the last bits of a float. Pairs of ``exclude_session`` never count.
    """
    if k <= 0 or not len(index):
        return []
    scores = np.round(index.vectors @ np.asarray(query, np.float32), SCORE_DECIMALS)
    if exclude_session is not None:
        scores = np.where(np.asarray(index.session_ids) == str(exclude_session), -np.inf, scores)
    order = np.lexsort((np.arange(len(scores)), -scores))  # best first, then earlier
    chosen = [int(i) for i in order[:k] if np.isfinite(scores[i])]
    return chosen[::-1]


@dataclass
class ReplyMemory:
    """An index, the embedder that made it, and how many examples each prompt gets."""

    index: MemoryIndex
    encode: Encode
    k: int
    _vectors: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    def vectors(self, prompts: Sequence[str]) -> list[np.ndarray]:
        """Each prompt's embedding (computed once per distinct text)."""
        missing = list(dict.fromkeys(str(p) for p in prompts if str(p) not in self._vectors))
        if missing:
            self._vectors.update(zip(missing, self.encode(missing), strict=True))
        return [self._vectors[str(p)] for p in prompts]

    def examples_for(
        self, prompts: Sequence[str], sessions: Sequence[str | None] | None = None
    ) -> list[tuple[Example, ...]]:
        """The examples of each prompt, least similar first; ``sessions[i]``: prompt ``i``'s own
        session, whose pairs are never its examples (None: a new message, nothing to exclude)."""
        if self.k <= 0 or not len(self.index):
            return [() for _ in prompts]
        sessions = list(sessions) if sessions is not None else [None] * len(prompts)
        if len(sessions) != len(prompts):
            raise ValueError(f"{len(prompts)} prompts but {len(sessions)} sessions")
        return [
            tuple(self.index.example(i) for i in nearest(self.index, vector, self.k, session))
            for vector, session in zip(self.vectors(prompts), sessions, strict=True)
        ]


# --- the embedder ------------------------------------------------------------------------------


def fixed_shape_encoder(embedder: Any) -> Encode:
    """``embedder`` (a :class:`~echo_pipeline.pairs.embedder.SentenceEmbedder`) encoding in
    batches of one fixed shape, so a text's vector is the same bits in any batch."""

    def encode(texts: Sequence[str]) -> np.ndarray:
        return embedder.encode(
            texts, batch_size=EMBED_BATCH, max_length=EMBED_TOKENS, fixed_shape=True
        )

    return encode


def load_encoder() -> Encode:
    """The shipped MiniLM, on the CPU (a few hundred prompts a minute is plenty)."""
    from echo_pipeline.pairs.embedder import SentenceEmbedder

    return fixed_shape_encoder(SentenceEmbedder.load())


def load_reply_memory(
    path: str | Path, k: int, encode: Encode | None = None, *, digest: str = ""
) -> ReplyMemory:
    """The reply memory stored at ``path``, retrieving ``k`` examples per prompt. ``digest``
    (a dataset manifest's ``memory_digest``): the index must still be that one, else its
    examples differ from the ones the dataset was rendered with."""
    index = MemoryIndex.load(path)
    if digest and index.digest() != digest:
        raise ValueError(
            f"{path}: the reply memory changed since the dataset was rendered (digest {digest} "
            f"-> {index.digest()}); re-materialise template_dataset and lora_adapter"
        )
    return ReplyMemory(index, encode or load_encoder(), k)
