"""Talk to an adapter with the exact prompt it was trained with.

The adapter's :class:`~echo_pipeline.datasets.prompt.PromptSpec` (recorded with it) builds the
prompt through the same tokenisation code as training (token for token): its template, system
prompt, speaker naming and token bound, and as many earlier turns of the conversation as its
pairs kept. Generation stops at the template's EOS id. With reply memory (``memory_k`` > 0),
each typed message retrieves its examples from the same train index the dataset used, and they
go before the conversation as they did in training.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from echo_pipeline.datasets.prompt import PromptSpec
from echo_pipeline.infra.records import AdapterMetadata, DatasetManifest
from echo_pipeline.training.adapter_files import base_model_config, validate_adapter_dir
from echo_pipeline.training.base_model import ResolvedBaseModel, resolve_base_model

#: Told how many replies each ``ChatSession.generate`` call wrote: how the shell runner's progress
#: line follows an evaluation, batch by batch (in-process; empty unless a runner listens).
_reply_listeners: list[Callable[[int], None]] = []


@contextlib.contextmanager
def replies_counted(listener: Callable[[int], None]) -> Iterator[None]:
    """Inside the block, ``listener(n)`` hears of every batch of ``n`` generated replies."""
    _reply_listeners.append(listener)
    try:
        yield
    finally:
        _reply_listeners.remove(listener)


@dataclass
class ChatSession:
    model: Any
    tokenizer: Any
    prompt: PromptSpec  # how the adapter was trained to be prompted
    max_new_tokens: int = 64
    history: list[dict[str, Any]] = field(default_factory=list)
    partner: str = "friend"
    me: str = "me"  # my name in the history: the dataset's, recorded with the adapter
    # How replies are decoded (GenerationSettings.generate_kwargs()); empty: greedy. The CLI and
    # the MLflow model sample, as the evaluation does, since greedy collapses small clones.
    decoding: dict[str, Any] = field(default_factory=dict)
    memory: Any = None  # a ReplyMemory: examples per typed message (None: the adapter has none)

    @property
    def template(self) -> str:
        return self.prompt.template

    @classmethod
    def from_adapter(
        cls, adapter_dir: str | Path, *, base_model: ResolvedBaseModel | None = None, **options: Any
    ) -> ChatSession:
        """Load base + adapter; the base is the one recorded in ``echo_metadata.json``.

        The adapter directory is validated against the base model's config before anything in
        it is loaded (safetensors weights only, a LORA config, shapes that fit the base), so an
        adapter from elsewhere fails with one clear line instead of loading garbage or code.
        """
        from peft import PeftModel
        from transformers import AutoTokenizer

        from echo_pipeline.training.base_model import load_causal_lm

        adapter_dir = Path(adapter_dir)
        meta = AdapterMetadata.load(adapter_dir)
        if base_model is None:
            recorded = meta.base_model
            base_model = resolve_base_model(recorded.source, revision=recorded.revision)
            if base_model.fingerprint != recorded.fingerprint:
                raise ValueError(
                    f"{adapter_dir}: trained on base {recorded.fingerprint}, but "
                    f"{recorded.source!r} now resolves to {base_model.fingerprint}"
                )
        validate_adapter_dir(adapter_dir, base_model_config(base_model))
        tokenizer = AutoTokenizer.from_pretrained(adapter_dir, local_files_only=True)
        base = load_causal_lm(base_model, quantization="none", purpose="inference")
        model = PeftModel.from_pretrained(base, adapter_dir, is_trainable=False)
        model.eval()
        spec = adapter_prompt(adapter_dir, meta)
        options.setdefault("me", spec.me_name or "me")
        if "memory" not in options:
            options["memory"] = adapter_memory(adapter_dir, meta)
        return cls(model, tokenizer, spec, **options)

    def examples(self, prompt: str) -> tuple:
        """The reply-memory examples ``prompt`` gets (none without memory)."""
        return self.memory.examples_for([prompt])[0] if self.memory is not None else ()

    def prompt_ids(self, prompt: str) -> list[int]:
        return self.prompt.prompt_ids(
            self.tokenizer,
            self.history,
            prompt,
            prompt_author=self.partner,
            examples=self.examples(prompt),
        )

    def generate(
        self, prompt_ids: list[list[int]], *, do_sample: bool = False, **kwargs: Any
    ) -> list[tuple[str, bool]]:
        """Replies for a batch of prompt ids (left-padded), each with whether it ended at EOS."""
        import torch

        from echo_pipeline.datasets.tokenization import stop_token_id
        from echo_pipeline.serving.generation import model_generate_kwargs

        eos = stop_token_id(self.template, self.tokenizer)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else eos
        width = max(len(p) for p in prompt_ids)
        input_ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompt_ids])
        attention = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompt_ids])
        device = next(self.model.parameters()).device
        max_new_tokens = kwargs.pop("max_new_tokens", self.max_new_tokens)
        with torch.inference_mode():
            out = self.model.generate(
                input_ids=input_ids.to(device),
                attention_mask=attention.to(device),
                max_new_tokens=max_new_tokens,
                eos_token_id=eos,
                pad_token_id=pad,
                do_sample=do_sample,
                **model_generate_kwargs(kwargs, width),
            )
        replies = []
        for row in out[:, width:].tolist():
            stopped = eos in row
            tokens = row[: row.index(eos)] if stopped else row
            replies.append(
                (self.tokenizer.decode(tokens, skip_special_tokens=True).strip(), stopped)
            )
        for listener in list(_reply_listeners):
            listener(len(replies))
        return replies

    def reply_once(self, prompt: str) -> str:
        """A reply to ``prompt`` without touching the history, decoded as ``decoding`` says."""
        return self.generate([self.prompt_ids(prompt)], **self.decoding)[0][0]

    def say(self, prompt: str) -> str:
        """A reply to ``prompt``; both join the history for the next turn."""
        reply = self.reply_once(prompt)
        self.history.append({"speaker": self.partner, "text": prompt, "is_me": False})
        self.history.append({"speaker": self.me, "text": reply, "is_me": True})
        return reply


def adapter_manifest(adapter_dir: str | Path, meta: AdapterMetadata) -> DatasetManifest | None:
    """The manifest of the dataset the adapter was trained on, or None where that is unknown
    (no dataset recorded, or the manifest is gone: an adapter copied from elsewhere).

    Raises when the dataset was re-rendered since, with memory on: the adapter's examples
    (how many, from which index) can no longer be known, and guessing would prompt it with a
    shape it never saw.
    """
    from echo_pipeline.infra.layout import DATASET_MANIFEST_SUFFIX

    if not meta.dataset.path:
        return None
    dataset = Path(meta.dataset.path)
    path = dataset.with_name(dataset.stem + DATASET_MANIFEST_SUFFIX)
    if not path.exists():
        return None
    manifest = DatasetManifest.load(path)
    if manifest.dataset_digest and manifest.dataset_digest != meta.dataset.digest:
        if manifest.memory_k > 0:
            raise ValueError(
                f"{adapter_dir}: its dataset {dataset} was re-rendered since it was trained "
                f"(digest {meta.dataset.digest} -> {manifest.dataset_digest}), so its reply "
                "memory is unknown; re-materialise lora_adapter"
            )
        return None
    return manifest


def adapter_prompt(adapter_dir: str | Path, meta: AdapterMetadata) -> PromptSpec:
    """How to prompt the adapter: the spec recorded with it; for adapters trained before it
    was recorded, the one its dataset's manifest gives, else its template and system prompt
    with the defaults."""
    if meta.prompt:
        return PromptSpec.from_dict(meta.prompt)
    manifest = adapter_manifest(adapter_dir, meta)
    if manifest is not None:
        return PromptSpec.from_manifest(manifest)
    return PromptSpec(meta.template, meta.system_prompt, me_names=meta.me_names)


def adapter_memory(adapter_dir: str | Path, meta: AdapterMetadata, encode: Any = None) -> Any:
    """The :class:`~echo_pipeline.pairs.memory.ReplyMemory` the adapter was trained with, or None.

    ``k`` and the index come from the dataset manifest; the index must be the one the dataset
    recorded (same digest), else its examples differ from training's.
    """
    from echo_pipeline.pairs.memory import load_reply_memory

    manifest = adapter_manifest(adapter_dir, meta)
    if manifest is None or manifest.memory_k <= 0:
        return None
    return load_reply_memory(
        manifest.memory_index, manifest.memory_k, encode, digest=manifest.memory_digest
    )
