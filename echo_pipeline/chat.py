"""Talk to an adapter with the exact template it was trained with.

The prompt goes through the same tokenisation code as training (token for token), generation
stops at the template's EOS id, and the conversation so far is kept as context turns, the way
the pairs were built.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from echo_pipeline.adapters import base_model_config, validate_adapter_dir
from echo_pipeline.base_model import ResolvedBaseModel, resolve_base_model
from echo_pipeline.records import AdapterMetadata

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
    template: str
    system_prompt: str
    context_turns: int = 3
    max_new_tokens: int = 64
    history: list[dict[str, Any]] = field(default_factory=list)
    partner: str = "friend"
    me: str = "me"  # my name in the history: the dataset's, recorded with the adapter
    # How replies are decoded (GenerationSettings.generate_kwargs()); empty: greedy. The CLI and
    # the MLflow model sample, as the evaluation does, since greedy collapses small clones.
    decoding: dict[str, Any] = field(default_factory=dict)

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

        from echo_pipeline.base_model import load_causal_lm

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
        options.setdefault("me", meta.me_name or "me")
        return cls(model, tokenizer, meta.template, meta.system_prompt, **options)

    def prompt_ids(self, prompt: str) -> list[int]:
        from echo_pipeline.tokenization import tokenize_inference_prompt

        context = self.history[-self.context_turns :] if self.context_turns else []
        return tokenize_inference_prompt(
            self.template,
            self.tokenizer,
            context,
            prompt,
            self.system_prompt,
            prompt_author=self.partner,
        )

    def generate(
        self, prompt_ids: list[list[int]], *, do_sample: bool = False, **kwargs: Any
    ) -> list[tuple[str, bool]]:
        """Replies for a batch of prompt ids (left-padded), each with whether it ended at EOS."""
        import torch

        from echo_pipeline.tokenization import stop_token_id

        eos = stop_token_id(self.template, self.tokenizer)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else eos
        width = max(len(p) for p in prompt_ids)
        input_ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompt_ids])
        attention = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompt_ids])
        device = next(self.model.parameters()).device
        with torch.inference_mode():
            out = self.model.generate(
                input_ids=input_ids.to(device),
                attention_mask=attention.to(device),
                max_new_tokens=kwargs.pop("max_new_tokens", self.max_new_tokens),
                eos_token_id=eos,
                pad_token_id=pad,
                do_sample=do_sample,
                **kwargs,
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
