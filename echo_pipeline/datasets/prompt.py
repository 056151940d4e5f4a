"""The prompt specification: every fact that decides the token ids a model sees before it
writes my reply, fixed once when the dataset is rendered and read back by everything that
prompts the adapter (evaluation, chat, the web page, preference training, the MLflow model,
the Ollama export).

Training, evaluation and chat used to agree only while nobody changed a default: evaluation
bounded prompts at its own 512 tokens, chat at none, chat kept three context turns whatever
the pairing kept, and the default system prompt was built in three places. Here the dataset's
manifest records one :class:`PromptSpec`, the adapter carries it in ``echo_metadata.json``,
and :meth:`PromptSpec.prompt_ids` is the one way to turn a conversation into prompt ids.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from echo_pipeline.datasets.templates import check_template, resolve_system_prompt
from echo_pipeline.datasets.tokenization import DEFAULT_MAX_TOKENS
from echo_pipeline.pairs.pairing_config import PairingConfig

#: How many earlier turns a pair keeps when nothing recorded it (the pairing's default).
DEFAULT_CONTEXT_TURNS: int = PairingConfig.__dataclass_fields__["context_turns"].default


@dataclass(frozen=True)
class PromptSpec:
    """How a conversation becomes a prompt: template, system prompt, how much of it is kept
    (context turns, token budget), whether every speaker is named, and how many reply-memory
    examples go before it."""

    template: str
    system_prompt: str = ""
    context_turns: int = DEFAULT_CONTEXT_TURNS  # earlier turns kept, as the pairing kept them
    max_tokens: int = DEFAULT_MAX_TOKENS  # a training example's bound, and a prompt's
    group_chat: bool = False  # every speaker named in every prompt (templates.is_group_chat)
    memory_k: int = 0  # reply-memory examples before each conversation (0: none)
    me_names: tuple[str, ...] = ()  # my display names, most used first

    def __post_init__(self) -> None:
        check_template(self.template)
        if self.context_turns < 0:
            raise ValueError(f"context_turns must be >= 0, got {self.context_turns}")
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {self.max_tokens}")
        if self.memory_k < 0:
            raise ValueError(f"memory_k must be >= 0, got {self.memory_k}")

    @property
    def me_name(self) -> str:
        return self.me_names[0] if self.me_names else ""

    @property
    def is_group(self) -> bool | None:
        """What the renderer takes: True names every speaker; None lets each pair's speakers
        decide, as the dataset's rows did when it was not a group chat."""
        return True if self.group_chat else None

    def kept_context(self, history: Sequence[Any]) -> list[Any]:
        """The last ``context_turns`` turns of ``history``: what a pair would have kept."""
        return list(history)[-self.context_turns :] if self.context_turns else []

    def prompt_ids(
        self,
        tokenizer: Any,
        context: Sequence[Any],
        prompt: str,
        *,
        prompt_author: str = "",
        examples: Sequence[Any] = (),
    ) -> list[int]:
        """The ids a model is given to write the reply: for an untruncated pair, its training
        ``input_ids[:prompt_len]``. ``context``: the conversation before ``prompt`` (cut to
        ``context_turns`` here); ``examples``: the prompt's reply-memory examples."""
        from echo_pipeline.datasets.tokenization import tokenize_inference_prompt

        return tokenize_inference_prompt(
            self.template,
            tokenizer,
            self.kept_context(context),
            prompt,
            self.system_prompt,
            prompt_author=prompt_author,
            is_group=self.is_group,
            me_names=self.me_names,
            max_tokens=self.max_tokens,
            examples=examples,
        )

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "me_names": list(self.me_names)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PromptSpec:
        return cls(
            template=str(data["template"]),
            system_prompt=str(data.get("system_prompt") or ""),
            context_turns=int(data.get("context_turns", DEFAULT_CONTEXT_TURNS)),
            max_tokens=int(data.get("max_tokens") or DEFAULT_MAX_TOKENS),
            group_chat=bool(data.get("group_chat") or False),
            memory_k=int(data.get("memory_k") or 0),
            me_names=tuple(str(n) for n in data.get("me_names") or ()),
        )

    @classmethod
    def from_manifest(cls, manifest: Any) -> PromptSpec:
        """The spec a :class:`~echo_pipeline.infra.records.DatasetManifest` records (manifests
        written before context turns were recorded keep the pairing's default)."""
        return cls(
            template=manifest.template,
            system_prompt=manifest.system_prompt,
            context_turns=DEFAULT_CONTEXT_TURNS
            if manifest.context_turns is None
            else manifest.context_turns,
            max_tokens=manifest.max_tokens,
            group_chat=manifest.group_chat,
            memory_k=manifest.memory_k,
            me_names=manifest.me_names,
        )

    @classmethod
    def for_pairs(
        cls,
        template: str,
        pairs: Any,
        *,
        system_prompt: str | None = None,
        max_tokens: int = DEFAULT_MAX_TOKENS,
        memory_k: int = 0,
    ) -> PromptSpec:
        """The spec a dataset of ``pairs`` (a conversation_pairs table) is rendered with: my
        names, the context the pairing kept and whether it is a group chat come from the pairs;
        ``system_prompt`` None means the default one naming me."""
        from echo_pipeline.datasets.templates import is_group_chat
        from echo_pipeline.pairs.conversations import pairs_context_turns, pairs_identity

        me = pairs_identity(pairs)
        return cls(
            template=template,
            system_prompt=resolve_system_prompt(system_prompt, next(iter(me.names), "")),
            context_turns=pairs_context_turns(pairs),
            max_tokens=max_tokens,
            group_chat=is_group_chat(pairs.select(["prompt_author", "context"]).to_pydict()),
            memory_k=memory_k,
            me_names=me.names,
        )
