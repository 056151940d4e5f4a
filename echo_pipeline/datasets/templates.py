"""Prompt templates: how one conversation pair is written out for a given base model.

A rendering is a list of :class:`Segment` s: plain text, or a BOS/EOS marker that carries its
literal spelling in this template (``<s>``, ``</s>``, ``<|im_end|>``…). The literal text is
what hosted fine-tuning services get in JSONL; the tokenizer layer swaps each marker for a
token id, so training never depends on whether a model's vocabulary happens to contain the
string ``"<s>"``. Each rendering is split where the reply begins: ``prompt`` is exactly what
inference renders, ``completion`` is the reply and its EOS, the only tokens with a loss.

Conversation shape, the same for every template:

* the context turns and the prompt become alternating user/assistant messages: my earlier
  turns are the assistant's, everyone else's are the user's; consecutive turns of one role are
  joined with newlines (so the prompt absorbs other people's turns just before it);
* leading turns of mine are dropped, because every template here (and most chat templates)
  expects the user to speak first;
* in a group chat (more than one other speaker) user lines are prefixed with ``name: ``;
* texts are stripped, and an empty system prompt leaves the system block out;
* examples (past exchanges of mine, :mod:`echo_pipeline.pairs.memory`) come after the system block
  and before the conversation, each a complete earlier exchange in the template's own
  multi-turn form: the one shape every template already has for "this is how I answered".

Multi-turn conventions: ``llama2_chat`` follows Meta's reference code, every earlier exchange
being a complete ``<s>[INST] u [/INST] a </s>`` with the system block only in the first
``[INST]``. ``nous_hermes`` has no official multi-turn form, so it does the same: each earlier
exchange is a complete seed-format block ``<s>### Instruction:\\n…\\n\\n### Response:\\n…</s>``,
and a system prompt is a plain paragraph before the first ``### Instruction:`` (Alpaca's
preamble convention). ``chatml`` ends every turn with ``<|im_end|>`` as an EOS marker, so a
turn end means the same token in the context as after the reply. ``model_default`` is the
tokenizer's own ``chat_template``. A tokenizer without one (pretrained bases such as Gemma 3
270M) gets :func:`fallback_chat_template`, ChatML.

This module is pure Python: it imports neither torch nor transformers (``model_default`` calls
methods of the tokenizer object it is given).
"""

from __future__ import annotations

import contextlib
import enum
import weakref
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from echo_pipeline.pairs.memory import Example

TEMPLATE_NAMES = ("llama2_chat", "nous_hermes", "chatml", "model_default")
DEFAULT_SYSTEM_PROMPT = "You are {me}. Reply the way {me} would in a casual chat."

USER, ASSISTANT, SYSTEM = "user", "assistant", "system"


class Special(enum.Enum):
    """A token the tokenizer layer inserts by id rather than by tokenising its spelling."""

    BOS = "bos"
    EOS = "eos"


class TemplateError(ValueError):
    """A template cannot render this conversation (or its chat_template breaks our assumptions)."""


@dataclass(frozen=True)
class Segment:
    """A piece of a rendering. For a marker, ``text`` is its literal spelling in this template."""

    text: str
    is_target: bool = False
    special: Special | None = None


@dataclass(frozen=True)
class ContextTurn:
    speaker: str
    text: str
    is_me: bool = False


@dataclass(frozen=True)
class ChatPair:
    """What a template needs from a ``conversation_pairs`` row. ``reply=None`` at inference.

    ``is_group`` pins group-chat rendering (``name: `` prefixes); ``None`` infers it from the
    speakers, which is what you want unless you are truncating context away. ``examples`` are
    past exchanges of mine (:mod:`echo_pipeline.pairs.memory`), least similar first.
    """

    context: tuple[ContextTurn, ...]
    prompt: str
    reply: str | None
    prompt_author: str = ""
    is_group: bool | None = None
    examples: tuple[Example, ...] = ()

    @classmethod
    def from_record(cls, record: Mapping[str, Any], me_names: Iterable[str] = ()) -> ChatPair:
        """From a pairs row (dict, pandas row). Context turns without ``is_me`` match ``me_names``."""
        return cls(
            context=context_turns(record.get("context"), me_names),
            prompt=str(record["prompt"]),
            reply=None if record.get("reply") is None else str(record["reply"]),
            prompt_author=str(record.get("prompt_author") or ""),
        )

    def group_chat(self) -> bool:
        if self.is_group is not None:
            return self.is_group
        others = {t.speaker for t in self.context if not t.is_me} | {self.prompt_author}
        return len(others - {""}) > 1


def is_group_chat(pairs: Any) -> bool:
    """Whether ``pairs`` (a pairs frame) answer more than one other person: a group chat.

    Then every prompt names every speaker, even where a pair's own few turns hold one other
    person: in a channel, who wrote the message decides whom I answer (and @mention), and a
    pair rendered without names hides that. Measured on komodo-dev-general, base SmolLM2:
    held-out reply loss 4.205 -> 4.143 nats/token (benchmarks/RESULTS.md section 13)."""
    others = {str(a) for a in pairs["prompt_author"] if str(a or "")}
    if len(others) > 1:
        return True
    for context in pairs["context"]:
        for turn in context if context is not None else ():
            if not turn.get("is_me") and str(turn.get("speaker") or "") not in ("", *others):
                return True
    return False


def context_turns(raw: Any, me_names: Iterable[str] = ()) -> tuple[ContextTurn, ...]:
    """Normalise a context column value (list/array of dicts, or ContextTurns) to ContextTurns."""
    if raw is None:
        return ()
    me = {name.casefold() for name in me_names}
    turns = []
    for turn in raw:
        if isinstance(turn, ContextTurn):
            turns.append(turn)
            continue
        speaker = str(turn.get("speaker") or "")
        flag = turn.get("is_me")
        is_me = bool(flag) if flag is not None else speaker.casefold() in me
        turns.append(ContextTurn(speaker, str(turn.get("text") or ""), is_me))
    return tuple(turns)


@dataclass(frozen=True)
class Rendering:
    """``prompt`` ends exactly where the reply begins; ``completion`` holds the trained tokens."""

    prompt: tuple[Segment, ...]
    completion: tuple[Segment, ...] = ()

    @property
    def segments(self) -> tuple[Segment, ...]:
        return self.prompt + self.completion

    @property
    def prompt_text(self) -> str:
        return "".join(s.text for s in self.prompt)

    @property
    def completion_text(self) -> str:
        return "".join(s.text for s in self.completion)

    @property
    def text(self) -> str:
        return self.prompt_text + self.completion_text


def check_template(template: str) -> str:
    if template not in TEMPLATE_NAMES:
        raise ValueError(
            f"unknown template {template!r}; choose one of {', '.join(TEMPLATE_NAMES)}"
        )
    return template


def default_system_prompt(me: str) -> str:
    return DEFAULT_SYSTEM_PROMPT.format(me=me.strip() or "me")


def resolve_system_prompt(configured: str | None, me_name: str) -> str:
    """The system prompt a dataset is rendered with: ``configured`` as given ("" for none), or
    the default naming me when unset. The one place the default is chosen."""
    return default_system_prompt(me_name) if configured is None else configured


def clean_text(text: str) -> str:
    """How every template normalises a message: CRLF to LF, surrounding whitespace stripped."""
    return text.replace("\r\n", "\n").strip()


def conversation_messages(pair: ChatPair, system_prompt: str = "") -> list[dict[str, str]]:
    """System (if any), each example as a complete user/assistant exchange, then the
    conversation: alternating user/assistant messages ending with the user's turn."""
    group = pair.group_chat()

    def user_text(speaker: str, text: str) -> str:
        return f"{speaker}: {text}" if group and speaker else text

    messages: list[dict[str, str]] = []
    for example in pair.examples:
        messages += [
            {"role": USER, "content": user_text(example.prompt_author, clean_text(example.prompt))},
            {"role": ASSISTANT, "content": clean_text(example.reply)},
        ]
    turns = [(t.is_me, t.speaker, clean_text(t.text)) for t in pair.context]
    turns.append((False, pair.prompt_author, clean_text(pair.prompt)))
    while turns and turns[0][0]:
        turns.pop(0)
    conversation: list[dict[str, str]] = []
    for is_me, speaker, text in turns:
        role = ASSISTANT if is_me else USER
        text = user_text(speaker, text) if role == USER else text
        if conversation and conversation[-1]["role"] == role:
            conversation[-1]["content"] += "\n" + text
        else:
            conversation.append({"role": role, "content": text})
    messages += conversation
    if system_prompt.strip():
        messages.insert(0, {"role": SYSTEM, "content": clean_text(system_prompt)})
    return messages


def _exchanges(messages: list[dict[str, str]]) -> tuple[str, list[tuple[str, str | None]]]:
    """(system, [(user, assistant or None for the last, open exchange)])."""
    system = messages[0]["content"] if messages and messages[0]["role"] == SYSTEM else ""
    chat = messages[1:] if system else messages
    exchanges = [
        (chat[i]["content"], chat[i + 1]["content"] if i + 1 < len(chat) else None)
        for i in range(0, len(chat), 2)
    ]
    return system, exchanges


def _bos(literal: str) -> Segment:
    return Segment(literal, special=Special.BOS)


def _eos(literal: str, is_target: bool = False) -> Segment:
    return Segment(literal, is_target=is_target, special=Special.EOS)


def render(
    template: str,
    pair: ChatPair,
    *,
    system_prompt: str = "",
    tokenizer: Any = None,
    end_reply: bool = True,
) -> Rendering:
    """The segments of ``pair`` in ``template``; no completion when ``pair.reply`` is None.

    ``end_reply=False`` leaves the EOS (and any template text after the reply) out: used for a
    reply cut short by truncation, which must not teach the model to stop mid-thought.
    ``tokenizer`` is needed by ``model_default`` only.
    """
    check_template(template)
    messages = conversation_messages(pair, system_prompt)
    reply = None if pair.reply is None else clean_text(pair.reply)
    if template == "model_default":
        if tokenizer is None:
            raise ValueError(
                "model_default renders with the tokenizer's chat_template: pass tokenizer="
            )
        return _render_model_default(tokenizer, messages, reply, end_reply)
    system, exchanges = _exchanges(messages)
    prompt: list[Segment] = []
    completion: list[Segment] = []
    if template == "llama2_chat":
        for i, (user, answer) in enumerate(exchanges):
            sys_block = f"<<SYS>>\n{system}\n<</SYS>>\n\n" if i == 0 and system else ""
            prompt += [_bos("<s>"), Segment(f"[INST] {sys_block}{user} [/INST]")]
            if answer is not None:
                prompt += [Segment(f" {answer} "), _eos("</s>")]
        if reply is not None:
            completion = (
                [Segment(f" {reply} ", True), _eos("</s>", True)]
                if end_reply
                else [Segment(f" {reply}", True)]
            )
    elif template == "nous_hermes":
        for i, (user, answer) in enumerate(exchanges):
            preamble = f"{system}\n\n" if i == 0 and system else ""
            prompt += [
                _bos("<s>"),
                Segment(f"{preamble}### Instruction:\n{user}\n\n### Response:\n"),
            ]
            if answer is not None:
                prompt += [Segment(answer), _eos("</s>")]
        if reply is not None:
            completion = [Segment(reply, True)] + ([_eos("</s>", True)] if end_reply else [])
    else:  # chatml
        prompt.append(_bos(""))
        for message in messages:
            prompt += [
                Segment(f"<|im_start|>{message['role']}\n{message['content']}"),
                _eos("<|im_end|>"),
                Segment("\n"),
            ]
        prompt.append(Segment("<|im_start|>assistant\n"))
        if reply is not None:
            completion = [Segment(reply, True)] + ([_eos("<|im_end|>", True)] if end_reply else [])
    return Rendering(tuple(prompt), tuple(completion))


def auto_bos_token_id(tokenizer: Any) -> int | None:
    """The BOS id the tokenizer puts in front of a plain encode, or None if it adds none.

    That is our test for "this model was trained with a BOS": Llama, Mistral and Gemma
    tokenizers add one, Qwen's and SmolLM2's do not (SmolLM2 names ``<|im_start|>`` its
    bos_token, but that is ChatML's turn opener, and its tokenizer never prepends it).
    """
    return _facts(tokenizer)[0]


#: Per tokenizer object: (auto BOS id, special token strings). Rendering runs per pair.
_FACTS: weakref.WeakKeyDictionary[Any, tuple[int | None, frozenset[str]]] = (
    weakref.WeakKeyDictionary()
)


def _facts(tokenizer: Any) -> tuple[int | None, frozenset[str]]:
    try:
        return _FACTS[tokenizer]
    except (KeyError, TypeError):
        pass
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is not None:
        with_special = tokenizer("a", add_special_tokens=True)["input_ids"]
        plain = tokenizer("a", add_special_tokens=False)["input_ids"]
        added = len(with_special) > len(plain) and with_special[0] == bos and plain[:1] != [bos]
        bos = bos if added else None
    specials = {
        t.content for t in getattr(tokenizer, "added_tokens_decoder", {}).values() if t.special
    }
    specials.update(getattr(tokenizer, "all_special_tokens", []))
    facts = (bos, frozenset(s for s in specials if s))
    with contextlib.suppress(TypeError):  # not weak-referenceable: recompute next time
        _FACTS[tokenizer] = facts
    return facts


def has_own_chat_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def fallback_chat_template(tokenizer: Any) -> str | None:
    """What ``model_default`` renders with when the tokenizer has no ``chat_template``.

    ``None`` when it has one; otherwise ChatML, turns ending with ``<|im_end|>`` where that is
    a token and with the EOS token elsewhere (the same ids as the ``chatml`` template). Not the
    model family's own turn markers even when the vocabulary reserves them: a pretrained model
    never learned them. On Gemma 3 270M pretrained, Gemma's ``<start_of_turn>``/``<end_of_turn>``
    format scored a held-out reply loss of 9.10 before training and 5.50 after 12 LoRA steps,
    ChatML 6.04 and 4.10 (bundled sample, benchmarks/RESULTS.md).
    """
    if has_own_chat_template(tokenizer):
        return None
    return jinja_chat_template("chatml", tokenizer)


def _apply_chat_template(tokenizer: Any, messages: list[dict[str, str]], generation: bool) -> str:
    text = tokenizer.apply_chat_template(
        messages,
        tokenize=False,
        add_generation_prompt=generation,
        return_dict=False,
        chat_template=fallback_chat_template(tokenizer),
    )
    if not isinstance(text, str):
        raise TemplateError(
            f"apply_chat_template(tokenize=False) returned {type(text).__name__}, not text"
        )
    return text


def _leading_special_token(tokenizer: Any, text: str) -> str | None:
    """The longest special token string ``text`` starts with (a template's end-of-turn)."""
    found = [s for s in _facts(tokenizer)[1] if text.startswith(s)]
    return max(found, key=len) if found else None


def _render_model_default(
    tokenizer: Any, messages: list[dict[str, str]], reply: str | None, end_reply: bool
) -> Rendering:
    try:
        prompt_text = _apply_chat_template(tokenizer, messages, generation=True)
    except Exception:
        if not messages or messages[0]["role"] != SYSTEM:
            raise
        # Templates without a system role (Gemma's raises): fold it into the first user turn.
        system, first = messages[0]["content"], messages[1]
        messages = [
            {"role": first["role"], "content": f"{system}\n\n{first['content']}"},
            *messages[2:],
        ]
        prompt_text = _apply_chat_template(tokenizer, messages, generation=True)

    bos_literal = ""
    bos_token = getattr(tokenizer, "bos_token", None)
    strip_bos = auto_bos_token_id(tokenizer) is not None and bool(bos_token)
    if strip_bos and prompt_text.startswith(bos_token):
        # The BOS goes in by id; keeping its text too would make a double BOS.
        bos_literal, prompt_text = bos_token, prompt_text[len(bos_token) :]
    prompt = (_bos(bos_literal), Segment(prompt_text))
    if reply is None:
        return Rendering(prompt)

    full = _apply_chat_template(
        tokenizer, [*messages, {"role": ASSISTANT, "content": reply}], generation=False
    )
    if strip_bos and full.startswith(bos_token):
        full = full[len(bos_token) :]
    if not full.startswith(prompt_text) or not full[len(prompt_text) :].startswith(reply):
        raise TemplateError(
            "the tokenizer's chat_template does not render the conversation with the reply as "
            "the generation prompt followed by the reply text, so training and inference would "
            "differ; use the chatml template for this model"
        )
    if not end_reply:
        return Rendering(prompt, (Segment(reply, True),))
    suffix = full[len(prompt_text) + len(reply) :]
    eos_literal = (
        _leading_special_token(tokenizer, suffix) or getattr(tokenizer, "eos_token", "") or ""
    )
    return Rendering(prompt, (Segment(reply, True), _eos(eos_literal, True)))


def render_training_text(
    template: str, pair: ChatPair, *, system_prompt: str = "", tokenizer: Any = None
) -> str:
    """The literal training text (``<s>``/``</s>`` spelled out): the JSONL ``inputs`` and ``text`` column."""
    if pair.reply is None:
        raise ValueError("a training text needs the reply")
    return render(template, pair, system_prompt=system_prompt, tokenizer=tokenizer).text


def render_inference_prompt(
    template: str, pair: ChatPair, *, system_prompt: str = "", tokenizer: Any = None
) -> str:
    """The literal prompt up to where the reply begins (``pair.reply`` is ignored)."""
    return render(
        template, replace(pair, reply=None), system_prompt=system_prompt, tokenizer=tokenizer
    ).prompt_text


def _jinja_literals(tokenizer: Any) -> tuple[str, str]:
    """How BOS and EOS markers are spelled for this tokenizer in a Jinja chat template."""
    bos = "{{ bos_token }}" if auto_bos_token_id(tokenizer) is not None else ""
    return bos, "{{ eos_token }}"


def jinja_chat_template(template: str, tokenizer: Any) -> str | None:
    """A Hugging Face ``chat_template`` that renders exactly like ``template``.

    Saved with every adapter (and merged model), so tools that format prompts with the
    tokenizer (vLLM, text-generation-webui, ``apply_chat_template``) use the format the adapter
    was trained on. For ``model_default`` that is the tokenizer's own template (``None``: keep
    it) or, when it has none, :func:`fallback_chat_template`.
    """
    check_template(template)
    if template == "model_default":
        return fallback_chat_template(tokenizer)
    bos, eos = _jinja_literals(tokenizer)
    if template == "chatml":
        end = "<|im_end|>" if "<|im_end|>" in _facts(tokenizer)[1] else eos
        return (
            "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}" + end + "\n"
            "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
        )
    head = (
        "{% if messages[0]['role'] == 'system' %}{% set sys = messages[0]['content'] %}"
        "{% set chat = messages[1:] %}{% else %}{% set sys = '' %}{% set chat = messages %}{% endif %}"
    )
    if template == "llama2_chat":
        body = (
            "{% for m in chat %}{% if m['role'] == 'user' %}" + bos + "[INST] "
            "{% if loop.first and sys %}<<SYS>>\n{{ sys }}\n<</SYS>>\n\n{% endif %}"
            "{{ m['content'] }} [/INST]{% else %} {{ m['content'] }} "
            + eos
            + "{% endif %}{% endfor %}"
        )
    else:  # nous_hermes
        body = (
            "{% for m in chat %}{% if m['role'] == 'user' %}" + bos + ""
            "{% if loop.first and sys %}{{ sys }}\n\n{% endif %}"
            "### Instruction:\n{{ m['content'] }}\n\n### Response:\n"
            "{% else %}{{ m['content'] }}" + eos + "{% endif %}{% endfor %}"
        )
    return head + body
