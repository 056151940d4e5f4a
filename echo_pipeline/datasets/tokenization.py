"""Renderings to token ids and labels: reply-only loss, one BOS, and inference parity by construction.

Every rendering is tokenised unit by unit: a unit is a run of text with the same role (prompt
or target) between two BOS/EOS markers, tokenised with ``add_special_tokens=False``; markers
become ids. Because the prompt/reply boundary is always a unit boundary, the inference prompt
is the training prefix token for token, whatever the tokenizer does at string edges.

Special tokens
    * BOS: the id the model's own tokenizer prepends to a plain encode (Llama, Mistral, Gemma),
      inserted once by id; nothing for tokenizers that prepend none (Qwen, SmolLM2). The
      tokenizer never adds one itself, so there is never a double BOS. ``llama2_chat`` and
      ``nous_hermes`` open each earlier exchange with BOS too (Meta's multi-turn convention);
      on SmolLM2 all of these are empty.
    * EOS: a marker spelled as a special token of the vocabulary (``<|im_end|>`` in ChatML) is
      that token; otherwise (``</s>`` on SmolLM2) it is ``tokenizer.eos_token_id``. Labels end
      with it, and :func:`stop_token_id` gives generation the same id.

Truncation to ``max_tokens`` keeps the reply whole where it can: first the memory examples go
(least similar first), then the oldest context turns, then the prompt loses its beginning (keeping at least ``MIN_PROMPT_TOKENS`` of its
end). Only a reply that cannot fit even then is cut, keeping its beginning and dropping the
EOS: teaching the model to stop where a cut happened would teach it to stop mid-thought.
Every such example is flagged ``truncated``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from echo_pipeline.datasets.templates import (
    ChatPair,
    Rendering,
    Segment,
    Special,
    auto_bos_token_id,
    check_template,
    clean_text,
    context_turns,
    render,
    resolve_system_prompt,
)
from echo_pipeline.infra import schemas
from echo_pipeline.infra.schemas import IGNORE_INDEX
from echo_pipeline.pairs.memory import Example

if TYPE_CHECKING:
    import pandas as pd

#: Longest example in tokens unless told otherwise: the template_dataset asset, the CLI and
#: direct callers all cut here (oldest context first, then the prompt's start).
DEFAULT_MAX_TOKENS = 512
MIN_PROMPT_TOKENS = 32
_BATCH = 4096


@dataclass(frozen=True)
class TokenizedExample:
    """One training sequence. ``labels`` is ``IGNORE_INDEX`` outside the reply and its EOS."""

    input_ids: list[int]
    labels: list[int]
    prompt_len: int
    truncated: bool = False

    @property
    def completion_len(self) -> int:
        return len(self.input_ids) - self.prompt_len


class _Encoder:
    """Tokenises renderings for one tokenizer, caching each distinct text unit's ids."""

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer
        self._ids: dict[str, list[int]] = {"": []}
        self._special: dict[tuple[Special, str], int | None] = {}

    def prefetch(self, texts: Iterable[str]) -> None:
        """Tokenise all unseen texts in batches (the Rust tokenizer is much faster that way)."""
        missing = list(dict.fromkeys(t for t in texts if t not in self._ids))
        backend = self._plain_backend()
        for start in range(0, len(missing), _BATCH):
            chunk = missing[start : start + _BATCH]
            if backend is not None:
                ids = [e.ids for e in backend.encode_batch_fast(chunk, add_special_tokens=False)]
            else:
                ids = self.tokenizer(chunk, add_special_tokens=False, return_attention_mask=False)[
                    "input_ids"
                ]
            self._ids.update(zip(chunk, ids, strict=True))

    def _plain_backend(self) -> Any:
        """The Rust tokenizer, when calling it directly gives exactly what ``tokenizer(...)`` gives.

        That skips building a BatchEncoding per text (about 40% of the time on chat data); it
        is only safe while the backend neither truncates, pads nor splits special tokens
        differently from the wrapper, so anything else takes the ordinary path.
        """
        backend = getattr(self.tokenizer, "backend_tokenizer", None)
        if backend is None or not hasattr(backend, "encode_batch_fast"):
            return None
        split = bool(getattr(self.tokenizer, "split_special_tokens", False))
        if backend.truncation is not None or backend.padding is not None:
            return None
        if getattr(backend, "encode_special_tokens", split) != split:
            return None
        return backend

    def text_ids(self, text: str) -> list[int]:
        if text not in self._ids:
            self.prefetch([text])
        return self._ids[text]

    def special_id(self, segment: Segment) -> int | None:
        key = (segment.special, segment.text)
        if key not in self._special:
            self._special[key] = special_token_id(self.tokenizer, segment)
        return self._special[key]

    def assemble(self, rendering: Rendering, truncated: bool = False) -> TokenizedExample:
        input_ids: list[int] = []
        labels: list[int] = []
        prompt_len: int | None = None
        for content, is_target in _units(rendering.segments):
            if is_target and prompt_len is None:
                prompt_len = len(input_ids)
            if isinstance(content, Segment):
                token = self.special_id(content)
                ids = [] if token is None else [token]
            else:
                ids = self.text_ids(content)
            input_ids.extend(ids)
            labels.extend(ids if is_target else [IGNORE_INDEX] * len(ids))
        return TokenizedExample(
            input_ids, labels, len(input_ids) if prompt_len is None else prompt_len, truncated
        )

    def offsets(self, text: str) -> list[tuple[int, int]]:
        """Character span of each token of ``text``, to cut text at token boundaries."""
        try:
            encoded = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
            return [tuple(span) for span in encoded["offset_mapping"]]
        except (
            NotImplementedError,
            KeyError,
            TypeError,
        ):  # slow tokenizers: approximate by decoding
            ids = self.text_ids(text)
            spans, end = [], 0
            for i in range(1, len(ids) + 1):
                new_end = min(len(text), len(self.tokenizer.decode(ids[:i])))
                spans.append((end, new_end))
                end = new_end
            return spans


def _units(segments: Sequence[Segment]) -> list[tuple[str | Segment, bool]]:
    """Runs of same-role text merged into one string; markers stay single."""
    units: list[tuple[str | Segment, bool]] = []
    run: list[str] = []
    run_target = False
    for segment in segments:
        if segment.special is None and run and segment.is_target == run_target:
            run.append(segment.text)
            continue
        if run:
            units.append(("".join(run), run_target))
            run = []
        if segment.special is None:
            run, run_target = [segment.text], segment.is_target
        else:
            units.append((segment, segment.is_target))
    if run:
        units.append(("".join(run), run_target))
    return units


def special_token_id(tokenizer: Any, segment: Segment) -> int | None:
    """The id a BOS/EOS marker becomes for ``tokenizer`` (None: this model has no BOS)."""
    if segment.special is Special.BOS:
        return auto_bos_token_id(tokenizer)
    if segment.special is Special.EOS:
        literal_ids = (
            tokenizer(segment.text, add_special_tokens=False)["input_ids"] if segment.text else []
        )
        if len(literal_ids) == 1 and segment.text in set(
            getattr(tokenizer, "all_special_tokens", [])
        ) | {t.content for t in getattr(tokenizer, "added_tokens_decoder", {}).values()}:
            return literal_ids[0]
        if tokenizer.eos_token_id is None:
            raise ValueError(
                f"{segment.text!r} is not a token of this vocabulary and the tokenizer has no EOS"
            )
        return tokenizer.eos_token_id
    raise ValueError(f"{segment!r} is not a BOS/EOS marker")


def stop_token_id(template: str, tokenizer: Any) -> int:
    """The EOS id that ends every labelled reply in ``template``: generation must stop on it."""
    probe = render(template, ChatPair((), "hi", "ok"), tokenizer=tokenizer)
    token = special_token_id(tokenizer, probe.completion[-1])
    assert token is not None
    return token


def _as_chat_pair(pair: ChatPair | Mapping[str, Any], me_names: Iterable[str]) -> ChatPair:
    return pair if isinstance(pair, ChatPair) else ChatPair.from_record(pair, me_names)


def _tail(text: str, spans: list[tuple[int, int]], keep: int) -> str:
    if keep >= len(spans):
        return text
    return "" if keep <= 0 else text[spans[len(spans) - keep][0] :]


def _head(text: str, spans: list[tuple[int, int]], keep: int) -> str:
    if keep >= len(spans):
        return text
    return "" if keep <= 0 else text[: spans[keep - 1][1]]


def _fit(
    encoder: _Encoder,
    template: str,
    pair: ChatPair,
    system_prompt: str,
    max_tokens: int | None,
) -> tuple[Rendering, TokenizedExample]:
    """Render and tokenise ``pair``, truncated to ``max_tokens`` by the module's policy."""

    def attempt(candidate: ChatPair, end_reply: bool = True) -> tuple[Rendering, TokenizedExample]:
        rendering = render(
            template,
            candidate,
            system_prompt=system_prompt,
            tokenizer=encoder.tokenizer,
            end_reply=end_reply,
        )
        return rendering, encoder.assemble(rendering, truncated=candidate is not pair)

    rendering, example = attempt(pair)
    if max_tokens is None or len(example.input_ids) <= max_tokens:
        return rendering, example
    # Dropping context may drop speakers; it must not switch the group-chat name prefixes off.
    fixed = replace(pair, is_group=pair.group_chat())
    for dropped in range(1, len(pair.examples) + 1):  # examples first, least similar first
        rendering, example = attempt(replace(fixed, examples=fixed.examples[dropped:]))
        if len(example.input_ids) <= max_tokens:
            return rendering, example
    fixed = replace(fixed, examples=())
    for dropped in range(1, len(pair.context) + 1):
        rendering, example = attempt(replace(fixed, context=fixed.context[dropped:]))
        if len(example.input_ids) <= max_tokens:
            return rendering, example

    base = replace(fixed, context=())
    prompt = clean_text(base.prompt)
    spans = encoder.offsets(prompt)
    keep_min = min(MIN_PROMPT_TOKENS, len(spans))
    overhead = len(attempt(replace(base, prompt=""))[1].input_ids)
    keep = min(max_tokens - overhead, len(spans))
    while keep >= keep_min and keep > 0:
        rendering, example = attempt(replace(base, prompt=_tail(prompt, spans, keep)))
        over = len(example.input_ids) - max_tokens
        if over <= 0:
            return rendering, example
        keep -= over

    base = replace(base, prompt=_tail(prompt, spans, keep_min))
    prompt_len = len(attempt(replace(base, reply=None))[1].input_ids)
    if base.reply is not None:
        reply = clean_text(base.reply)
        reply_spans = encoder.offsets(reply)
        keep = min(max_tokens - prompt_len, len(reply_spans))
        while keep > 0:
            rendering, example = attempt(
                replace(base, reply=_head(reply, reply_spans, keep)), end_reply=False
            )
            over = len(example.input_ids) - max_tokens
            if over <= 0:
                return rendering, example
            keep -= over
    raise ValueError(
        f"max_tokens={max_tokens} is too small for template {template!r}: the template and "
        f"{keep_min} prompt tokens already take {prompt_len}"
    )


def tokenize_pair(
    template: str,
    tokenizer: Any,
    pair: ChatPair | Mapping[str, Any],
    *,
    system_prompt: str = "",
    max_tokens: int | None = DEFAULT_MAX_TOKENS,
    me_names: Iterable[str] = (),
) -> TokenizedExample:
    """Token ids and labels of one pair (a :class:`ChatPair` or a pairs-table row)."""
    check_template(template)
    chat = _as_chat_pair(pair, me_names)
    if chat.reply is None:
        raise ValueError("a training example needs the reply")
    return _fit(_Encoder(tokenizer), template, chat, system_prompt, max_tokens)[1]


def tokenize_inference_prompt(
    template: str,
    tokenizer: Any,
    context: Any,
    prompt: str,
    system_prompt: str = "",
    *,
    prompt_author: str = "",
    is_group: bool | None = None,
    me_names: Iterable[str] = (),
    max_tokens: int | None = None,
    examples: Sequence[Example] = (),
) -> list[int]:
    """The ids a model is given to write the reply: the training ``input_ids[:prompt_len]``.

    ``max_tokens`` bounds the prompt with the training policy (examples first, then the oldest
    context, then the prompt's beginning); leave room for the tokens to generate. ``examples``:
    the prompt's reply-memory examples (:meth:`echo_pipeline.pairs.memory.ReplyMemory.examples_for`).
    """
    check_template(template)
    chat = ChatPair(
        context_turns(context, me_names), prompt, None, prompt_author, is_group, tuple(examples)
    )
    return _fit(_Encoder(tokenizer), template, chat, system_prompt, max_tokens)[1].input_ids


def build_template_dataset(
    pairs: pd.DataFrame,
    template: str,
    tokenizer: Any,
    *,
    me_name: str | None = None,
    me_names: Iterable[str] = (),
    system_prompt: str | None = None,
    max_tokens: int | None = DEFAULT_MAX_TOKENS,
    examples: Sequence[Sequence[Example]] | None = None,
    is_group: bool | None = None,
) -> tuple[pd.DataFrame, list[TokenizedExample]]:
    """A ``TEMPLATE_DATASET`` frame and the tokenised examples, row for row, from ``pairs``.

    ``is_group`` pins every row's speaker-name rendering (None: inferred per row from its
    speakers, :meth:`~echo_pipeline.datasets.templates.ChatPair.group_chat`).

    ``examples[i]``: row ``i``'s reply-memory examples, shown before its conversation (None:
    none for any row).

    ``system_prompt=None`` uses :data:`~echo_pipeline.datasets.templates.DEFAULT_SYSTEM_PROMPT` with
    ``me_name`` (the pairs' own, :func:`~echo_pipeline.pairs.conversations.pairs_identity`; unset:
    "me"); ``""`` means none.
    ``me_names`` only matters for context turns without an ``is_me`` flag.
    """
    import pyarrow as pa

    check_template(template)
    me_names = tuple(me_names)
    system_prompt = resolve_system_prompt(system_prompt, me_name or "")
    if examples is None:
        examples = [()] * len(pairs)
    if len(examples) != len(pairs):
        raise ValueError(f"{len(examples)} rows of examples for {len(pairs)} pairs")
    chats = [
        ChatPair(
            context_turns(context, me_names),
            str(prompt),
            str(reply),
            str(author or ""),
            is_group,
            examples=tuple(shown),
        )
        for context, prompt, reply, author, shown in zip(
            pairs["context"],
            pairs["prompt"],
            pairs["reply"],
            pairs["prompt_author"],
            examples,
            strict=True,
        )
    ]
    renderings = [
        render(template, c, system_prompt=system_prompt, tokenizer=tokenizer) for c in chats
    ]
    encoder = _Encoder(tokenizer)
    encoder.prefetch(
        unit for r in renderings for unit, _ in _units(r.segments) if isinstance(unit, str)
    )
    examples = [encoder.assemble(r) for r in renderings]
    for i, example in enumerate(examples):
        if max_tokens is not None and len(example.input_ids) > max_tokens:
            renderings[i], examples[i] = _fit(
                encoder, template, chats[i], system_prompt, max_tokens
            )

    table = pa.table(
        {
            "pair_id": pairs["pair_id"].astype(str).tolist(),
            "split": pairs["split"].astype(str).tolist(),
            "prompt_text": [r.prompt_text for r in renderings],
            "completion_text": [r.completion_text for r in renderings],
            "text": [r.text for r in renderings],
            "prompt_tokens": [e.prompt_len for e in examples],
            "completion_tokens": [e.completion_len for e in examples],
            "truncated": [e.truncated for e in examples],
        },
        schema=schemas.TEMPLATE_DATASET,
    )
    return table.to_pandas(), examples


def write_jsonl(frame: pd.DataFrame, paths: Mapping[str, str | Path]) -> dict[str, int]:
    """One ``{"inputs": text}`` line per row, a file per split (the seed's hosted-service shape).

    ``paths`` maps a split to its file; every split in ``frame`` needs one. Files are written
    atomically. Returns the rows written per split.
    """
    from echo_pipeline.infra.storage import atomic_path

    unmapped = sorted(set(frame["split"]) - set(paths))
    if unmapped:
        raise ValueError(f"no JSONL path for split(s) {unmapped}; got {sorted(paths)}")
    counts = {}
    for split, path in paths.items():
        texts = frame.loc[frame["split"] == split, "text"]
        with atomic_path(Path(path)) as tmp, open(tmp, "w", encoding="utf-8") as fh:
            for text in texts:
                fh.write(json.dumps({"inputs": text}, ensure_ascii=False) + "\n")
        counts[split] = len(texts)
    return counts


def format_labels_debug(
    tokenizer: Any, example: TokenizedExample, max_rows: int | None = 200
) -> str:
    """Every token with its id and label, like Axolotl's ``preprocess --debug``.

    Masked positions read ``-100 masked``; a rule marks where the reply (the loss) begins. With
    more than ``max_rows`` tokens, the first and last rows are shown around a gap.
    """
    n = len(example.input_ids)
    labelled = sum(label != IGNORE_INDEX for label in example.labels)
    header = f"{n} tokens: {example.prompt_len} prompt, {labelled} labelled" + (
        " (truncated)" if example.truncated else ""
    )
    lines = [header, f"{'pos':>5}  {'id':>7}  {'label':>12}  token"]
    positions: list[int | None] = list(range(n))
    if max_rows is not None and n > max_rows:
        head = max_rows // 2
        positions = [*range(head), None, *range(n - (max_rows - head), n)]
    special_ids = set(getattr(tokenizer, "all_special_ids", []))
    for pos in positions:
        if pos is None:
            lines.append(f"{'…':>5}  ({n - max_rows} rows not shown)")
            continue
        if pos == example.prompt_len:
            lines.append("-" * 18 + " reply: labelled from here " + "-" * 18)
        token_id, label = example.input_ids[pos], example.labels[pos]
        text = repr(tokenizer.decode([token_id]))
        if token_id in special_ids:
            text += "  [special]"
        shown = "-100 masked" if label == IGNORE_INDEX else str(label)
        lines.append(f"{pos:>5}  {token_id:>7}  {shown:>12}  {text}")
    return "\n".join(lines)
