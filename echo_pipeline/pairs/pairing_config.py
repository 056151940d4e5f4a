"""How messages become pairs: the settings, each with its one default and one description.

:class:`PairingConfig` is what :func:`echo_pipeline.pairs.conversations.build_pairs` takes. The
Dagster config of ``conversation_pairs`` and the CLI's ``pairs`` flags are derived from its
fields (:func:`setting`), so a default changed here changes everywhere. Standard library only:
the CLI builds its parser from it without importing pandas.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Literal

from echo_pipeline.infra.settings import setting, settings_of

#: "me" in the bundled sample export (data/sample): the demo's author, and the default "me".
SAMPLE_ME = "alex"
#: Comma-separated author ids or names: the default "me" when none is configured.
ME_ENV = "ECHO_ME"


def default_me() -> list[str]:
    """``$ECHO_ME`` split on commas, else the sample's "me"."""
    return [m.strip() for m in os.environ.get(ME_ENV, SAMPLE_ME).split(",") if m.strip()]


@dataclass(frozen=True)
class PairingConfig:
    """How messages become pairs. Defaults suit a casual 1:1 or small-group chat."""

    me: tuple[str, ...] = setting(
        description="Your author ids or names (several for alt accounts)."
    )
    merge_gap_s: float = setting(
        300.0,
        "Consecutive messages of one author closer than this (seconds) merge into one turn.",
        ge=0,
    )
    session_gap_s: float = setting(
        3600.0, "A silence longer than this (seconds) starts a new conversation session.", gt=0
    )
    context_turns: int = setting(
        3, "Earlier turns of the session kept as context for each pair.", ge=0, le=32
    )
    attachments: Literal["placeholder", "drop"] = setting(
        "placeholder",
        "Attachment-only messages: 'placeholder' keeps them as [image]/[video]/[file]; "
        "'drop' removes them.",
    )
    redact: bool = setting(
        True,
        "Replace emails, phones, IPs, cards, tokens and credential URLs by typed placeholders.",
    )
    min_reply_chars: int = setting(1, "Shorter replies are dropped.", ge=1)
    max_reply_chars: int = setting(2000, "Longer replies are dropped.", ge=1)
    max_prompt_chars: int = setting(4000, "Pairs with a longer prompt are dropped.", ge=1)
    drop_link_only: bool = setting(True, "Drop replies that are only links.")
    # An attachment-only reply ("[image]") tells the model nothing about how I write; as a
    # target it teaches the clone to answer "[image]".
    drop_placeholder_replies: bool = setting(
        True,
        "Drop replies that are only attachment placeholders ([image], [video], ...); they stay "
        "as prompts and context.",
    )
    # "ok" or "Ha" sent hundreds of times must not become the clone's answer to everything.
    max_same_reply: int = setting(
        8,
        "Keep at most this many pairs per distinct reply ('ok', 'Ha'), so one reflex does not "
        "become the answer to everything (0: no cap).",
        ge=0,
    )
    # Held-out sizing, in pairs (see conversations.assign_splits).
    val_fraction: float = setting(
        0.1, "Share of pairs held out for validation (whole sessions).", ge=0, lt=1
    )
    test_fraction: float = setting(
        0.1, "Least share of pairs held out for the test (whole sessions).", ge=0, lt=1
    )
    test_min_pairs: int = setting(
        100, "Least test pairs where the export allows it (train keeps min_train_fraction).", ge=0
    )
    min_train_fraction: float = setting(
        0.5, "Share of pairs that always stays in train.", gt=0, lt=1
    )
    # For learning curves ("what would less data buy?"): held-out splits stay as they are.
    train_share: float = setting(
        1.0,
        "Share of the train sessions kept, chosen by a hash of the session id so a smaller share "
        "is a subset of a larger one; val and test are unchanged (1: all of them).",
        gt=0,
        le=1,
    )
    split_method: Literal["hash", "chronological"] = setting(
        "hash",
        "'hash' (stable per session across reruns) or 'chronological' (latest sessions held out).",
    )

    def __post_init__(self) -> None:
        if not self.me:
            raise ValueError("`me` needs at least one author id or name")
        if self.attachments not in ("placeholder", "drop"):
            raise ValueError(
                f"attachments must be 'placeholder' or 'drop', got {self.attachments!r}"
            )
        if self.split_method not in ("hash", "chronological"):
            raise ValueError(
                f"split_method must be 'hash' or 'chronological', got {self.split_method!r}"
            )
        if self.val_fraction < 0 or self.test_fraction < 0 or self.test_min_pairs < 0:
            raise ValueError("split fractions and test_min_pairs must be >= 0")
        if self.val_fraction + self.test_fraction >= 1:
            raise ValueError("val_fraction + test_fraction must be < 1")
        if not 0 < self.min_train_fraction < 1:
            raise ValueError("min_train_fraction must be between 0 and 1")
        if not 0 < self.train_share <= 1:
            raise ValueError("train_share must be in (0, 1]")
        if self.merge_gap_s < 0 or self.session_gap_s <= 0:
            raise ValueError("gaps must be positive")


_SETTINGS = {s.name: s for s in settings_of(PairingConfig)}
#: Every setting of :class:`PairingConfig` but ``me`` (which has no default).
SETTINGS = tuple(name for name in _SETTINGS if name != "me")


def described(name: str) -> tuple[Any, str]:
    """``(default, description)`` of one :class:`PairingConfig` setting (for the CLI's flags)."""
    found = _SETTINGS[name]
    return (None if found.required else found.default), found.description
