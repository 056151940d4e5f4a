"""The adapters a person can talk to, and how each one is prompted and decoded.

Everything about a voice is read from the adapter's own records, never typed here again: how
it is prompted (its :class:`~echo_pipeline.datasets.prompt.PromptSpec`: template, system prompt,
my name, context turns, token bound) from ``echo_metadata.json``, and decoding (temperature,
top-p, repetition penalty, reply length) from its last evaluation report's config
(``metrics.json``; the evaluation's defaults when it has none). The prompt goes through the
same builder as training and evaluation (:meth:`PromptSpec.prompt_ids`).

One base model is loaded per base (by fingerprint) and every adapter of it is loaded onto that
one PEFT model by name; "the base model" is the same weights with the adapter switched off, as
in the evaluation. One generation runs at a time (the adapters share the weights).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from echo_pipeline.datasets.prompt import PromptSpec
from echo_pipeline.evaluation.feedback import adapter_partition
from echo_pipeline.infra.layout import Layout
from echo_pipeline.infra.records import METADATA_FILE, AdapterMetadata

logger = logging.getLogger(__name__)

BASE_PREFIX = "base:"
#: Who the person is in the prompt when they type (the chat CLI's name for them too).
PARTNER = "friend"


@dataclass(frozen=True)
class Voice:
    """One adapter (or the base model prompted as that adapter is) and its recorded settings."""

    id: str  # the adapter's partition key, or "base:" + it
    adapter_dir: Path
    experiment: str
    prompt: PromptSpec  # how the adapter was trained to be prompted (the base borrows it)
    base_source: str
    base_fingerprint: str
    decoding: dict[str, Any]  # GenerationSettings fields
    verdict: str | None
    reply_loss: float | None
    trained_at: float  # mtime of echo_metadata.json

    @property
    def template(self) -> str:
        return self.prompt.template

    @property
    def me(self) -> str:
        return self.prompt.me_name or "me"

    @property
    def is_base(self) -> bool:
        return self.id.startswith(BASE_PREFIX)

    @property
    def adapter(self) -> str:
        """The adapter's partition key (for the base: the adapter whose prompt it borrows)."""
        return self.id.removeprefix(BASE_PREFIX)

    @property
    def label(self) -> str:
        if self.is_base:
            return f"base model {self.base_source} ({self.template} prompt)"
        return f"{self.template} × {self.experiment}"

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "label": self.label,
            "is_base": self.is_base,
            "template": self.template,
            "experiment": self.experiment,
            "me": self.me,
            "partner": PARTNER,
            "verdict": self.verdict,
            "reply_loss": self.reply_loss,
            "decoding": self.decoding,
            "context_turns": self.prompt.context_turns,
            "max_prompt_tokens": self.prompt.max_tokens,
        }


def _report(layout: Layout, template: str, experiment: str) -> dict[str, Any]:
    from echo_pipeline.evaluation.report import METRICS_FILE

    path = layout.report_dir(template, experiment) / METRICS_FILE
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def discover_voices(layout: Layout) -> list[Voice]:
    """Every trained adapter, newest first, each followed by its base model (same prompt)."""
    from echo_pipeline.evaluation.config import EvaluationConfig
    from echo_pipeline.serving.chat import adapter_prompt
    from echo_pipeline.serving.generation import GenerationSettings

    defaults = EvaluationConfig()
    setting_names = {f.name for f in dataclasses.fields(GenerationSettings)}
    voices: list[Voice] = []
    base_numbers: dict[str, tuple[str | None, float | None]] = {}
    for meta_path in (layout.root / "lora_adapter").glob(f"*/{METADATA_FILE}"):
        try:
            meta = AdapterMetadata.load(meta_path.parent)
        except (OSError, ValueError) as error:
            logger.warning("skipping %s: %s", meta_path.parent, error)
            continue
        try:
            spec = adapter_prompt(meta_path.parent, meta)
        except ValueError as error:  # a memory that cannot be known: chat would refuse it too
            logger.warning("skipping %s: %s", meta_path.parent, error)
            continue
        report = _report(layout, meta.template, meta.experiment)
        config = report.get("config") or {}
        recorded = {k: v for k, v in (config.get("generation") or {}).items() if k in setting_names}
        settings = dataclasses.replace(defaults.generation, **recorded).for_adapter(
            meta.calibrated_temperature
        )
        metrics, verdicts = report.get("metrics") or {}, report.get("verdicts") or {}
        voices.append(
            Voice(
                id=adapter_partition(meta.template, meta.experiment),
                adapter_dir=meta_path.parent,
                experiment=meta.experiment,
                prompt=spec,
                base_source=meta.base_model.source,
                base_fingerprint=str(meta.base_model.fingerprint),
                # the temperature resolved, so the page shows the one it samples at
                decoding=dataclasses.asdict(settings)
                | {"temperature": settings.sampling_temperature},
                verdict=(verdicts.get("adapter") or {}).get("label"),
                reply_loss=_number(metrics.get("adapter_reply_loss")),
                trained_at=meta_path.stat().st_mtime,
            )
        )
        base_numbers[voices[-1].id] = (
            (verdicts.get("base") or {}).get("label"),
            _number(metrics.get("base_reply_loss")),
        )
    voices.sort(key=lambda v: v.trained_at, reverse=True)
    with_bases = []
    for voice in voices:
        with_bases.append(voice)
        verdict, loss = base_numbers[voice.id]  # the same report's numbers for the base
        base = dataclasses.replace(
            voice, id=BASE_PREFIX + voice.id, verdict=verdict, reply_loss=loss
        )
        with_bases.append(base)
    return with_bases


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) else None


def decoding_settings(voice: Voice, overrides: Mapping[str, Any] | None = None) -> Any:
    """The voice's recorded decoding, with what the page's controls changed (validated)."""
    from echo_pipeline.serving.generation import GenerationSettings

    allowed = {"max_new_tokens", "do_sample", "temperature", "top_p", "repetition_penalty", "seed"}
    changed = {k: v for k, v in (overrides or {}).items() if k in allowed and v is not None}
    return GenerationSettings(**(voice.decoding | changed))


class ModelPool:
    """Base models loaded once per base, adapters loaded onto them by name, on first use."""

    def __init__(self) -> None:
        self._models: dict[str, Any] = {}  # base fingerprint -> PeftModel
        self._tokenizers: dict[str, Any] = {}  # adapter id -> tokenizer
        # adapter id -> its reply memory (None: it has none), as it was trained with
        self._memories: dict[str, Any] = {}
        self._loading = threading.Lock()
        self.generating = threading.Lock()

    def _load(self, voice: Voice) -> tuple[Any, Any, str]:
        """(model, tokenizer, adapter name) for ``voice``; loads what is missing."""
        from echo_pipeline.training.adapter_files import base_model_config, validate_adapter_dir
        from echo_pipeline.training.base_model import resolve_base_model

        name = voice.adapter.replace("|", "__").replace(".", "_")
        with self._loading:
            model = self._models.get(voice.base_fingerprint)
            if model is not None and name in model.peft_config:
                return model, self._tokenizers[voice.adapter], name
            from peft import PeftModel
            from transformers import AutoTokenizer

            from echo_pipeline.serving.chat import adapter_memory
            from echo_pipeline.training.base_model import load_causal_lm

            recorded = AdapterMetadata.load(voice.adapter_dir).base_model
            base = resolve_base_model(recorded.source, revision=recorded.revision)
            if base.fingerprint != recorded.fingerprint:
                raise ValueError(
                    f"{voice.adapter_dir}: trained on base {recorded.fingerprint}, but "
                    f"{recorded.source!r} now resolves to {base.fingerprint}"
                )
            validate_adapter_dir(voice.adapter_dir, base_model_config(base))
            tokenizer = AutoTokenizer.from_pretrained(voice.adapter_dir, local_files_only=True)
            meta = AdapterMetadata.load(voice.adapter_dir)
            self._memories[voice.adapter] = adapter_memory(voice.adapter_dir, meta)
            if model is None:
                loaded = load_causal_lm(base, quantization="none", purpose="inference")
                model = PeftModel.from_pretrained(
                    loaded, voice.adapter_dir, adapter_name=name, is_trainable=False
                )
                model.eval()
                self._models[voice.base_fingerprint] = model
            else:
                with self.generating:  # not while another adapter of these weights writes
                    model.load_adapter(voice.adapter_dir, adapter_name=name, is_trainable=False)
            self._tokenizers[voice.adapter] = tokenizer
            return model, tokenizer, name

    def prompt_ids(
        self,
        voice: Voice,
        tokenizer: Any,
        context: Sequence[Mapping[str, Any]],
        prompt: str,
        prompt_author: str,
    ) -> list[int]:
        """The training prompt, by the adapter's spec, with its reply memory's examples (the
        base borrows its adapter's prompt)."""
        memory = self._memories.get(voice.adapter)
        return voice.prompt.prompt_ids(
            tokenizer,
            context,
            prompt,
            prompt_author=prompt_author,
            examples=memory.examples_for([prompt])[0] if memory is not None else (),
        )

    def stream(
        self,
        voice: Voice,
        context: Sequence[Mapping[str, Any]],
        prompt: str,
        settings: Any,
        prompt_author: str = PARTNER,
    ) -> Iterator[str]:
        """The reply to ``prompt``, piece by piece as the model writes it (stops at EOS)."""
        import torch
        from transformers import TextIteratorStreamer

        from echo_pipeline.datasets.tokenization import stop_token_id
        from echo_pipeline.serving.generation import adapter_disabled, model_generate_kwargs

        model, tokenizer, name = self._load(voice)
        ids = self.prompt_ids(voice, tokenizer, context, prompt, prompt_author)
        eos = stop_token_id(voice.template, tokenizer)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
        streamer = TextIteratorStreamer(
            tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=300
        )
        kwargs = model_generate_kwargs(settings.generate_kwargs(), len(ids))
        failure: list[BaseException] = []

        def generate() -> None:
            try:
                with self.generating, torch.inference_mode():
                    model.set_adapter(name)
                    torch.manual_seed(settings.seed)
                    switch = adapter_disabled(model) if voice.is_base else _nothing()
                    with switch:
                        model.generate(
                            input_ids=torch.tensor([ids]),
                            attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                            eos_token_id=eos,
                            pad_token_id=pad,
                            streamer=streamer,
                            **kwargs,
                        )
            except BaseException as error:  # handed to the reader; the stream must end
                failure.append(error)
                streamer.end()

        worker = threading.Thread(target=generate, name="echo-generate", daemon=True)
        worker.start()
        yield from streamer
        worker.join()
        if failure:
            raise failure[0]

    def reply(self, voice: Voice, context, prompt: str, settings: Any, prompt_author: str) -> str:
        return "".join(self.stream(voice, context, prompt, settings, prompt_author)).strip()


def _nothing():
    import contextlib

    return contextlib.nullcontext()
