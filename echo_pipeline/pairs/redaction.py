"""Detect and redact PII and secrets in chat messages before they become training data.

A LoRA trained on someone's chats memorises rare strings verbatim, and e-mail addresses,
phone numbers, card numbers, IPs and API keys are exactly the rare strings it would later
regurgitate. Every match is replaced by a typed placeholder (``<EMAIL>``, ``<TOKEN>``, ...)
so the model still learns *that* people share such things, without learning the values.

Design notes
------------
* Kinds run in a fixed order (:data:`PII_KINDS`): credentials in URLs and tokens first,
  because a token or a URL password can contain an ``@`` or long digit runs that the later,
  looser e-mail/card/phone patterns would only partly consume; IPs last because the IPv6
  candidate pattern is the most permissive.
* Patterns are deliberately conservative: a false positive silently deletes a piece of the
  person's voice, and chat is full of digits (prices, scores, dates, times, versions,
  Discord snowflake ids). Candidates that need judgement (Luhn for cards, digit counts for
  phones, ``ipaddress`` for IPv6, "does this look like code?" for ``password=...``) go
  through a Python validator and are left untouched when it says no.
* Placeholders consist of ``<``, ``>``, upper-case letters and ``_`` only, and no pattern can
  match across ``<`` or ``>``, so a placeholder never matches anything. Redaction is repeated
  until nothing changes (normally one pass), which makes it idempotent and guarantees that
  :func:`find_pii` returns ``[]`` on its output.
* :func:`redact_series` first runs one cheap, RE2-compatible prefilter per kind over the whole
  column (pyarrow string kernels, no Python per row) and only hands the few candidate rows to
  Python's ``re`` with the validating callables. Each prefilter is a necessary condition of
  its kind's pattern, so the result equals :func:`redact_text` row by row.
"""

from __future__ import annotations

import ipaddress
import itertools
import json
import re
import sys
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

__all__ = [
    "PII_KINDS",
    "PLACEHOLDERS",
    "evaluate_redaction",
    "find_pii",
    "find_pii_series",
    "redact_series",
    "redact_text",
]

PII_KINDS: tuple[str, ...] = ("url_credentials", "token", "email", "card", "phone", "ip")
"""Kinds in the order they are applied (earlier kinds win overlapping text)."""

PLACEHOLDERS: dict[str, str] = {
    "url_credentials": "<URL_WITH_CREDENTIALS>",
    "token": "<TOKEN>",
    "email": "<EMAIL>",
    "card": "<CARD>",
    "phone": "<PHONE>",
    "ip": "<IP>",
}

# Redaction is re-applied to rows that changed, until a fixed point; two passes are the
# most seen in practice (a placeholder can turn a glued neighbour into a free-standing one).
_MAX_PASSES = 6

# A validator gets the regex match and returns the replacement text, or None when the
# candidate turns out not to be PII (the text is then left exactly as it was).
_Validator = Callable[[re.Match[str]], str | None]

_TRAILING_PUNCT = ".,;:!?)]}"


@dataclass(frozen=True)
class _Rule:
    kind: str
    pattern: re.Pattern[str]
    validate: _Validator
    # Necessary condition of `pattern`, written in the regex subset shared by RE2 and Python
    # (no lookarounds, no \d \w \s \b classes) so pandas runs it in pyarrow, not per row.
    prefilter: str

    @property
    def placeholder(self) -> str:
        return PLACEHOLDERS[self.kind]


def _split_trailing(s: str) -> tuple[str, str]:
    """Split sentence punctuation off the end of a greedy match ("…/x)." -> "…/x", ").")."""
    core = s.rstrip(_TRAILING_PUNCT)
    return core, s[len(core) :]


# --------------------------------------------------------------------------- URL credentials

_URL_CREDENTIALS_RE = re.compile(
    r"(?<![\w+.-])[A-Za-z][A-Za-z0-9+.-]{1,15}://"
    r"[^\s/?#@<>:\"']*:[^\s/?#<>\"']+@"  # user:password@ (user may be empty)
    r"[^\s/?#<>\"'@]+"  # host[:port]
    r"(?:[/?#][^\s<>\"']*)?",  # path, query, fragment
    re.ASCII,
)


def _validate_url_credentials(m: re.Match[str]) -> str | None:
    core, tail = _split_trailing(m.group(0))
    if "@" not in core.split("://", 1)[1]:
        return None
    return PLACEHOLDERS["url_credentials"] + tail


# --------------------------------------------------------------------------------- tokens

# Keywords whose value is a secret in `key = value` / `key: value` assignments (env files,
# YAML, JSON, code pasted into chat). Longer names first so the whole name is consumed.
_SECRET_NAMES = (
    r"api[_-]?key|api[_-]?secret|secret[_-]?access[_-]?key|access[_-]?key(?:[_-]?id)?"
    r"|secret[_-]?key|client[_-]?secret|private[_-]?key"
    r"|(?:access|auth|refresh|bearer|session|id)[_-]?token"
    r"|password|passwd|passphrase|passcode|pwd|pw|secret|token"
)
_TOKEN_RE = re.compile(
    # PEM private keys pasted whole.
    r"(?P<pem>-----BEGIN[A-Z ]*PRIVATE KEY-----[\s\S]*?-----END[A-Z ]*PRIVATE KEY-----)"
    # `Authorization: Bearer …` / `Basic …` headers: keep the scheme word, drop the credential.
    r"|(?P<bearer_kw>(?<![A-Za-z0-9])(?:[Bb]earer|Basic)[ \t]+)(?P<bearer_val>[A-Za-z0-9._~+/-]{16,}=*)"
    # `password = hunter2`, `"api_key": "…"`, `DB_PASSWORD=…`: keep the name, drop the value.
    rf"|(?P<assign_kw>(?<![A-Za-z0-9])(?i:{_SECRET_NAMES})(?![A-Za-z0-9])[\"']?[ \t]*(?P<assign_sep>[:=])[ \t]*)"
    r"(?P<assign_val>\"[^\"\n<>]+\"|'[^'\n<>]+'|[^\s\"'<>,;]+)"
    # `my password is hunter2`.
    r"|(?P<is_kw>(?<![A-Za-z0-9])(?i:password|passwd|passcode|pwd|pw|pass)[ \t]+(?i:is|was)[ \t]+)"
    r"(?P<is_val>\"[^\"\n<>]+\"|'[^'\n<>]+'|[^\s\"'<>,;]+)"
    # JSON Web Tokens: base64url header and payload both start with `{"` -> "eyJ".
    r"|(?<![\w-])eyJ[\w-]{8,}\.eyJ[\w-]{8,}\.[\w-]*"
    # Discord bot/user tokens: base64(user id).timestamp.hmac, and legacy mfa. tokens.
    r"|(?<![\w-])(?:[MNO][\w-]{23,}\.[\w-]{6}\.[\w-]{27,}|mfa\.[\w-]{20,})(?![\w-])"
    # OpenAI / Anthropic style `sk-…` keys; must contain a digit and a 16-char alnum run
    # so hyphenated words ("sk-ating-is-fun-…") never qualify.
    r"|(?<![\w-])sk-(?:proj-|svcacct-|admin-)?(?=[\w-]*\d)(?=[\w-]*?[A-Za-z0-9]{16})[\w-]{20,}(?![\w-])"
    # Stripe secret/restricted keys.
    r"|(?<![\w-])[sr]k_(?:live|test)_[A-Za-z0-9]{16,}(?![\w-])"
    # GitHub classic and fine-grained tokens.
    r"|(?<![\w-])(?:gh[pousr]_[A-Za-z0-9]{30,}|github_pat_[A-Za-z0-9_]{22,})(?![\w-])"
    # Hugging Face access tokens (this project downloads models).
    r"|(?<![\w-])hf_[A-Za-z0-9]{30,}(?![\w-])"
    # Google API keys.
    r"|(?<![\w-])AIza[\w-]{35}(?![\w-])"
    # AWS access key ids (long-term AKIA, temporary ASIA).
    r"|(?<![A-Za-z0-9])(?:AKIA|ASIA)[A-Z0-9]{16}(?![A-Za-z0-9])"
    # Slack bot/user/app/refresh tokens.
    r"|(?<![\w-])xox[abposr]-[A-Za-z0-9-]{10,}(?![\w-])",
    re.ASCII,
)
_TOKEN_PREFILTER = (
    r"-----BEGIN|eyJ|[A-Za-z0-9_-]{24}[.][A-Za-z0-9_-]{6}[.]|mfa[.]|sk-|k_live_|k_test_"
    r"|gh[pousr]_|github_pat_|hf_|AIza|AKIA|ASIA|xox[abposr]-|[Bb]earer[ \t]|Basic[ \t]"
    # every secret name above ends in one of these, followed by its `:`/`=`
    r"|(?i:key|id|secret|token|word|wd|phrase|code|pw)[\"']?[ \t]*[:=]"
    r"|(?i:pass|pw)[A-Za-z]*[ \t]+(?i:is|was)[ \t]"
)

# `token = os.environ["TOKEN"]`, `password: Optional[str]`, `api_key=settings.API_KEY`:
# code that names a secret without containing one.
# Dotted names are code only if every part reads like an identifier (snake, UPPER, camel):
# "ya29.a0AfH6SMBx7Kq" (an OAuth token) is not.
_IDENT = r"(?:[a-z_]+|[A-Z_][A-Z0-9_]*|[A-Za-z][a-z]*(?:[A-Z][a-z]*)+)"
_CODE_REFERENCE_RE = re.compile(
    rf"{_IDENT}(?:\.{_IDENT})+|[A-Za-z_][\w.]*[(\[].*|[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+",
    re.ASCII,
)
_NON_SECRET_VALUES = frozenset(
    {"none", "null", "nil", "true", "false", "undefined", "required", "optional", "str"}
)


def _looks_like_code(value: str) -> bool:
    """Variable references, calls, env lookups, masks and null-ish literals."""
    return (
        value.lower() in _NON_SECRET_VALUES
        or value[0] in "$%{[(<"
        or set(value) <= set("*•xX.-_")  # already masked: "********", "xxxx"
        or _CODE_REFERENCE_RE.fullmatch(value) is not None
    )


def _secret_value(raw: str, *, strict: bool, min_len: int) -> str | None:
    """Replacement for the value part of an assignment, or None if it is not a secret.

    Quoted values are taken as given. Unquoted ones after `:` or `is` (``strict``) also need
    a digit or symbol, because prose such as "password: forgotten" is common in chat.
    """
    if raw[0] in "\"'":
        inner = raw[1:-1]
        if len(inner.strip()) < 3 or _looks_like_code(inner.strip()):
            return None
        return raw[0] + PLACEHOLDERS["token"] + raw[-1]
    core, tail = _split_trailing(raw)
    if len(core) < min_len or _looks_like_code(core):
        return None
    if strict and core.isalpha():
        return None
    return PLACEHOLDERS["token"] + tail


def _validate_token(m: re.Match[str]) -> str | None:
    if m.group("bearer_kw") is not None:
        value = m.group("bearer_val")
        if not any(ch.isdigit() for ch in value):
            return None
        return m.group("bearer_kw") + PLACEHOLDERS["token"]
    if m.group("assign_kw") is not None:
        strict = m.group("assign_sep") == ":"
        out = _secret_value(m.group("assign_val"), strict=strict, min_len=6 if strict else 3)
        return None if out is None else m.group("assign_kw") + out
    if m.group("is_kw") is not None:
        out = _secret_value(m.group("is_val"), strict=True, min_len=5)
        return None if out is None else m.group("is_kw") + out
    return PLACEHOLDERS["token"]


# ---------------------------------------------------------------------------------- email

_EMAIL_RE = re.compile(
    r"(?<![\w.%+-])(?P<local>\w[\w.%+-]*)"
    r"(?:@|[ \t]*[\[({](?i:at)[\])}][ \t]*)"  # also "jane [at] example [dot] com"
    r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.|[ \t]*[\[({](?i:dot)[\])}][ \t]*))+"
    r"(?P<tld>[A-Za-z]{2,24})(?![\w-])",
    re.ASCII,
)
# "icon@2x.png" is an asset name, not an address.
_FILE_EXTENSIONS = frozenset(
    {
        *("png", "jpg", "jpeg", "gif", "svg", "webp", "bmp", "ico", "pdf", "txt", "csv"),
        *("json", "yaml", "yml", "toml", "js", "ts", "tsx", "jsx", "py", "ipynb", "lock"),
        *("mp3", "mp4", "mov", "wav", "zip", "gz", "tgz", "html", "css", "scss"),
    }
)


def _validate_email(m: re.Match[str]) -> str | None:
    if m.group("tld").lower() in _FILE_EXTENSIONS:
        return None
    text, end = m.string, m.end()
    if m.group("local") == "git" and text[end : end + 1] == ":":  # git@github.com:org/repo
        return None
    return PLACEHOLDERS["email"]


# ----------------------------------------------------------------------------------- card

# A card is looked for inside a *chain*: digit groups joined by single spaces or dashes
# ("4111 1111 1111 1111", "3782-822463-10005", "4111111111111111"). The pattern takes the
# whole chain, so other numbers typed right beside a card ("room 101", "at 7", "12:30", a
# CVC) are part of the candidate, and the validator looks for the card among its groups.
_CARD_RE = re.compile(r"(?<![0-9])(?<![0-9][ -])[0-9]+(?:[ -][0-9]+)*", re.ASCII)
# A chain glued to one of these is part of something else: an IBAN or other identifier
# ("DE89 3704 0044 0532 0130 00"), a phone's country code, an order "#", a price, a
# negative number, a placeholder. No card is looked for in it.
_CARD_POISON = frozenset("+-#$€£>")
# A chain glued to one of these starts with the tail of another number: a time, decimal,
# thousands or date ("12:30 4111 …", "1.5 …", "16/05/2023 …"). Its first group is left out.
_CARD_GLUED = frozenset(":.,/")
_GLUED_TAIL_RE = re.compile(r"\w|[.,]\d", re.ASCII)


def _luhn_ok(digits: str) -> bool:
    """Luhn mod-10 check. Chat is full of long numbers (order ids, tracking numbers); all
    payment cards carry this check digit, and a random number passes it only 1 time in 10."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _card_shaped(groups: list[str]) -> bool:
    """How cards are written: one run, groups of four (last 2-5), or Amex/Diners 4-6-5/4-6-4.
    Other groupings are order or reference numbers ("112-4457891-2244558")."""
    sizes = [len(g) for g in groups]
    if len(sizes) == 1:  # an unseparated run of 17+ digits is a snowflake id, never a card
        return sizes[0] <= 16
    if sizes in ([4, 6, 5], [4, 6, 4]):
        return True
    return all(s == 4 for s in sizes[:-1]) and 2 <= sizes[-1] <= 5


def _is_card(groups: list[str]) -> bool:
    if not _card_shaped(groups):
        return False
    digits = "".join(groups)
    if not 13 <= len(digits) <= 19 or digits[0] not in "23456":  # MII 2-6: payment cards
        return False
    return _luhn_ok(digits)


def _is_word_char(ch: str) -> bool:
    """``\\w`` under ``re.ASCII``."""
    return ch.isascii() and (ch.isalnum() or ch == "_")


def _validate_card(m: re.Match[str]) -> str | None:
    text, chain = m.string, m.group(0)
    before = text[m.start() - 1] if m.start() else ""
    if before in _CARD_POISON or _is_word_char(before):
        return None
    groups = re.split(r"[ -]", chain)
    lo, hi = int(before in _CARD_GLUED), len(groups)
    # The last group glued to a word or a decimal ("… 1111abc", "… 123.45") is not the card's.
    if _GLUED_TAIL_RE.match(text, m.end()):
        hi -= 1
    # The card is a run of consecutive groups with other numbers typed beside it: "4242 4242
    # 4242 4242 123" (a CVC), "at 7 5500-0000-0000-0004", "room 101 4111 … 1111 2024".
    # Numbers of 3+ digits typed next to each other make a list ("2000 2001 2002 ..."), and
    # a window of 4-digit groups inside a list would pass Luhn 1 time in 10: the list's other
    # numbers must all be on one side, or be one on each side, one of them of 3 digits.
    # Leftmost and longest first.
    # long_before[k] / long_from[k]: numbers of 3+ digits just before / from groups[k] on.
    long_before, long_from = [0] * (hi + 1), [0] * (hi + 1)
    for k in range(lo, hi):
        long_before[k + 1] = long_before[k] + 1 if len(groups[k]) > 2 else 0
    for k in range(hi - 1, lo - 1, -1):
        long_from[k] = long_from[k + 1] + 1 if len(groups[k]) > 2 else 0
    for i in range(lo, hi):
        if len(groups[i]) != 4 and not 13 <= len(groups[i]) <= 16:
            continue  # every card starts with a group of four or is one run
        left = long_before[i]
        for j in range(min(hi, i + 5), i, -1):  # a card has at most 5 groups
            right = long_from[j]
            beside = (
                min(left, right) == 0
                or j == i + 1  # one long run of digits, not a window of a list
                or (left == right == 1 and min(len(groups[i - 1]), len(groups[j])) == 3)
            )
            if beside and _is_card(groups[i:j]):
                start = sum(len(g) + 1 for g in groups[:i])
                stop = start + sum(len(g) + 1 for g in groups[i:j]) - 1
                return chain[:start] + PLACEHOLDERS["card"] + chain[stop:]
    return None


# ---------------------------------------------------------------------------------- phone

_PHONE_RE = re.compile(
    # Not glued to a word, a number or a placeholder. Right after another number and a space
    # ("room 101 07700 900123") the validator decides (see _validate_phone).
    r"(?<![\w+.,/$€£#>-])(?:"
    # International: +44 20 7946 0958, +1 (555) 123-4567, +33612345678, 0049 30 1234567.
    r"(?P<intl>(?:\+|00)[1-9]\d{0,2}(?:[ .-]?\(\d{1,4}\))?[ .-]?\d{1,12}(?:[ .-]\d{2,8}){0,4})"
    # North American: (555) 123-4567, 1-800-555-0199, 555-123-4567, 555.123.4567.
    r"|(?P<nanp>(?:1[ .-]?)?\([2-9]\d{2}\)[ .-]?\d{3}[ .-]?\d{4}"
    r"|(?:1(?P<s1>[ .-]))?[2-9]\d{2}(?P<s2>[ .-])\d{3}(?P=s2)\d{4})"
    # National numbers with a trunk 0: 07700 900123, 020 7946 0958, 06 12 34 56 78,
    # 030 1234567, 0612345678. One separator style throughout, so dates do not qualify.
    r"|(?P<national>0[1-9]\d{0,3}(?P<s3>[ .-])\d{2,8}(?:(?P=s3)\d{2,8}){0,3}|0[1-9]\d{7,9})"
    r")(?!\w)(?![.,-]\d)",
    re.ASCII,
)


def _number_before(text: str, start: int) -> int:
    """Digits of the number that ends just before ``start`` ("<digits> "), or 0 when it does
    not stand alone: glued to a word ("DE89 3704 0044 ...", an IBAN) or one of a run of
    numbers (a list, a date)."""
    j = start - 1  # the space
    while j and "0" <= text[j - 1] <= "9":
        j -= 1
    if j and (
        (text[j - 1] in " -" and j >= 2 and "0" <= text[j - 2] <= "9") or _is_word_char(text[j - 1])
    ):
        return 0
    return start - 1 - j


_NUMBER_AHEAD_RE = re.compile(r" ([0-9]{3,})")


def _phone_ok(m: re.Match[str], end: int) -> bool:
    number = m.string[m.start() : end]
    n_digits = sum(ch.isdigit() for ch in number)
    if m.group("intl") is not None:
        return 8 <= n_digits <= 15  # E.164 allows at most 15 digits
    if m.group("national") is not None:
        groups = [int(g) for g in re.findall(r"\d+", number)]
        counting = len(groups) > 2 and all(b - a == 1 for a, b in itertools.pairwise(groups))
        return 9 <= n_digits <= 12 and not counting  # "days 06 07 08 09 10"
    # "300 500 1000" is a list of round numbers, not a phone.
    return not all(g.endswith("0") for g in re.findall(r"\d+", number)[-3:])


def _validate_phone(m: re.Match[str]) -> str | None:
    text, start, number = m.string, m.start(), m.group(0)
    end = m.end()
    if not _phone_ok(m, end):
        # Another number typed right after the phone ("07700 900123 12:30") was taken as
        # more groups: retry without trailing space-separated groups, the longest first.
        cut = len(number)
        while (cut := number.rfind(" ", 0, cut)) > 0:
            shorter = _PHONE_RE.fullmatch(text, start, start + cut)
            if shorter is not None and _phone_ok(shorter, start + cut):
                end = start + cut
                break
        else:
            return None
    # Right after another number ("room 101 07700 900123", "12:30 0612345678") the phone
    # must not be part of a list: "4927 2047 995 217 280 9741", "2959 272 968 2552 8381",
    # or the tail of an IBAN "DE89 3704 0044 0532 0130 00". A "+" or "(" starts a number.
    if (
        start >= 2
        and text[start - 1] == " "
        and "0" <= text[start - 2] <= "9"
        and number[0].isdigit()
    ):
        before = _number_before(text, start)
        after = _NUMBER_AHEAD_RE.match(text, end)
        if not before or (after and min(before, len(after.group(1))) > 3):
            return None
    return PLACEHOLDERS["phone"] + number[end - start :]


# ------------------------------------------------------------------------------------- IP

_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
_IPV4 = rf"{_OCTET}(?:\.{_OCTET}){{3}}"
_IP_RE = re.compile(
    # IPv6 candidates (any hex:hex:... shape with 2+ colons); ipaddress decides.
    rf"(?<![\w:.])(?P<v6>(?:[0-9A-Fa-f]{{0,4}}:){{2,7}}(?:{_IPV4}(?![\w.])|[0-9A-Fa-f]{{1,4}})?"
    r"(?:%[A-Za-z0-9_.]+)?)(?!\w)"
    rf"|(?<![\w.])(?P<v4>{_IPV4})(?!\w)(?!\.\d)",
    re.ASCII,
)
_VERSION_CONTEXT_RE = re.compile(
    r"(?i)(?:\b(?:version|ver|v|build|release|firmware|patch|rev)\.?[ \t]*|[A-Za-z][\w.-]*/)$"
)


def _validate_ip(m: re.Match[str]) -> str | None:
    text, start = m.string, m.start()
    before = text[max(0, start - 24) : start]
    if m.group("v4") is not None:
        # "version 1.2.0.4", "Chrome/120.0.0.0" -- but keep "http://10.0.0.1".
        if _VERSION_CONTEXT_RE.search(before) and not before.endswith("//"):
            return None
        return PLACEHOLDERS["ip"]
    cand = m.group("v6")
    tail = ""
    if cand.endswith(":") and not cand.endswith("::"):  # "fe80::1: that one"
        cand, tail = cand[:-1], ":"
    try:
        ipaddress.IPv6Address(cand)
    except ValueError:
        return None
    # `Bad::Add` (C++/Rust paths) is valid hex but not an address; real compressed
    # addresses nearly always contain a digit.
    if "::" in cand and not any(ch.isdigit() for ch in cand):
        return None
    # "1::2" (a ratio, a slice) -- short compressed forms need a real-looking group.
    groups = [g for g in re.split(r"[:%]", cand) if g]
    if "::" in cand and not cand.startswith("::") and all(len(g) == 1 for g in groups[:2]):
        return None
    # Python slices `x[::2]`, `a[1::3]`.
    if before.endswith("[") and len(before) > 1 and (before[-2].isalnum() or before[-2] in "_)]"):
        return None
    return PLACEHOLDERS["ip"] + tail


# ------------------------------------------------------------------------------ the rules

# Prefilters emulate a pattern's "not glued to a word" lookbehind by consuming the previous
# character, so snowflake ids and hashes rarely become candidates. This stays exact across
# passes only because nothing is redacted as a card or phone right after ">" (the phone
# pattern refuses to start there, the card validator rejects a chain glued to it, and a card
# inside a chain follows a space or dash): the character before a replaced match is then
# never the end of a placeholder, so it is the same as in the original text, which is what
# the prefilter saw.
_START = r"(?:^|[^0-9A-Za-z_])"


def _card_prefilter() -> str:
    """13+ digits in groups of at most 16: an unseparated 13-16 digit run, or a first group
    of k digits followed by a separator and the remaining 13-k digits. Enumerating k keeps
    snowflake ids (17-20 digits, e.g. in every `<@mention>`) out of the candidates."""
    branches = [r"[0-9]{13,16}(?:[^0-9]|\Z)"]
    for k in range(3, 17):
        rest = max(1, 13 - k)
        branches.append(rf"[0-9]{{{k}}}[ -][0-9](?:[ -]?[0-9]){{{rest - 1}}}")
    return _START + "(?:" + "|".join(branches) + ")"


_RULES: tuple[_Rule, ...] = (
    _Rule("url_credentials", _URL_CREDENTIALS_RE, _validate_url_credentials, r"://[^ \t\n\r\f]*@"),
    _Rule("token", _TOKEN_RE, _validate_token, _TOKEN_PREFILTER),
    _Rule(
        "email", _EMAIL_RE, _validate_email, r"[A-Za-z0-9_.%+-]@[A-Za-z0-9]|[\[({][Aa][Tt][\])}]"
    ),
    _Rule("card", _CARD_RE, _validate_card, _card_prefilter()),
    _Rule(
        "phone",
        _PHONE_RE,
        _validate_phone,
        # 8+ digits after "+", 9+ after a trunk 0, or the two North American shapes.
        _START + r"(?:[+][1-9](?:[^0-9]{0,3}[0-9]){7}|00[1-9](?:[^0-9]{0,3}[0-9]){5}"
        r"|0[1-9](?:[^0-9]?[0-9]){7})"
        r"|[0-9]{3}[ .-][0-9]{3}[ .-][0-9]{4}|[(][0-9]{3}[)][ .-]?[0-9]{3}[ .-]?[0-9]{4}",
    ),
    _Rule(
        "ip",
        _IP_RE,
        _validate_ip,
        # "::", or four colon-joined hex groups (a full address has eight), or dotted quad.
        r"::|[0-9A-Fa-f]:[0-9A-Fa-f]{1,4}:[0-9A-Fa-f]{1,4}:[0-9A-Fa-f]"
        r"|[0-9][.][0-9]{1,3}[.][0-9]{1,3}[.][0-9]",
    ),
)
assert tuple(r.kind for r in _RULES) == PII_KINDS
_PY_PREFILTERS = {r.kind: re.compile(r.prefilter, re.ASCII) for r in _RULES}


def _counting(rule: _Rule, counts: Counter[str]) -> Callable[[re.Match[str]], str]:
    validate, kind = rule.validate, rule.kind

    def repl(m: re.Match[str]) -> str:
        out = validate(m)
        if out is None:
            return m.group(0)
        counts[kind] += 1
        return out

    return repl


def redact_text(text: str) -> tuple[str, Counter[str]]:
    """Replace every PII/secret match in ``text`` by its placeholder.

    Returns the redacted text and how many replacements were made per kind.
    """
    counts: Counter[str] = Counter()
    if not text:
        return text, counts
    for _ in range(_MAX_PASSES):
        before = text
        for rule in _RULES:
            if _PY_PREFILTERS[rule.kind].search(text):
                text = rule.pattern.sub(_counting(rule, counts), text)
        if text == before:
            break
    return text, counts


def find_pii(text: str) -> list[str]:
    """Kinds (in :data:`PII_KINDS` order) that :func:`redact_text` would still redact.

    Used by the blocking asset check: on already-redacted text it must return ``[]``.
    For a whole column use :func:`find_pii_series`.
    """
    if not text:
        return []
    return [
        rule.kind
        for rule in _RULES
        if _PY_PREFILTERS[rule.kind].search(text)
        and any(rule.validate(m) is not None for m in rule.pattern.finditer(text))
    ]


def _string_cells(texts: pd.Series) -> tuple[pd.Series, np.ndarray]:
    """The string cells as a pyarrow-backed column, and their positions in ``texts``.

    A pyarrow-backed ``str`` column (pandas' default string dtype) is used as is; anything
    else is converted once, because RE2 prefilters are ~50x cheaper than a Python loop.
    """
    dtype = texts.dtype
    if isinstance(dtype, pd.StringDtype):
        positions = np.flatnonzero(texts.notna().to_numpy(dtype=bool))
        col = texts.reset_index(drop=True)
        if dtype.storage == "pyarrow":
            return (col if len(positions) == len(texts) else col.iloc[positions]), positions
        values = col.to_numpy(dtype=object)[positions]
    else:
        values = texts.to_numpy(dtype=object)
        is_str = ~pd.isna(values)
        if pd.api.types.infer_dtype(values[is_str], skipna=False) not in ("string", "empty"):
            is_str = np.fromiter((isinstance(v, str) for v in values), bool, len(values))
        positions = np.flatnonzero(is_str)
        values = values[positions]
    try:
        import pyarrow as pa

        arr = pd.arrays.ArrowStringArray(pa.array(values, type=pa.large_string()))
    except ImportError:  # pragma: no cover - pyarrow is a project dependency
        arr = pd.array(values, dtype=pd.StringDtype("python"))
    return pd.Series(arr, copy=False), positions


def _prefilter_masks(col: pd.Series) -> dict[str, np.ndarray]:
    """One candidate mask per kind: a single RE2 pass over the whole column for the union of
    the prefilters, then one pass per kind over the (few) rows that hit the union."""
    union = "|".join(f"(?:{rule.prefilter})" for rule in _RULES)
    hit = np.flatnonzero(col.str.contains(union, regex=True).to_numpy(dtype=bool, na_value=False))
    sub = col.iloc[hit]
    masks = {}
    for rule in _RULES:
        mask = np.zeros(len(col), dtype=bool)
        mask[hit] = sub.str.contains(rule.prefilter, regex=True).to_numpy(
            dtype=bool, na_value=False
        )
        masks[rule.kind] = mask
    return masks


def _candidates(texts: pd.Series) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """Positions (in ``texts``) of rows that hit any prefilter, their text as Python strings,
    and per kind which of those rows hit that kind's prefilter."""
    col, positions = _string_cells(texts)
    if not len(col):
        return positions, np.empty(0, dtype=object), {kind: positions[:0] for kind in PII_KINDS}
    masks = _prefilter_masks(col)
    cand_rows = np.flatnonzero(np.logical_or.reduce(list(masks.values())))
    work = col.iloc[cand_rows].to_numpy(dtype=object)
    return positions[cand_rows], work, {kind: mask[cand_rows] for kind, mask in masks.items()}


def redact_series(texts: pd.Series) -> tuple[pd.Series, dict[str, int]]:
    """Vectorised :func:`redact_text` over a column of messages.

    Non-string cells (None/NaN) pass through. Returns the redacted series (same index, name
    and, for string/object columns, dtype) and the total replacements per kind.
    """
    counts: Counter[str] = Counter()
    keep_dtype = texts.dtype == object or isinstance(texts.dtype, pd.StringDtype)
    out = texts.copy() if keep_dtype else texts.astype(object)
    rows, work, masks = _candidates(texts)
    changed_ever = np.zeros(len(rows), dtype=bool)
    # Prefilters are evaluated once on the original text: every later match lies between
    # placeholders, i.e. inside original text, so it still satisfies its prefilter there.
    pending = np.arange(len(rows))
    for _ in range(_MAX_PASSES):
        changed = np.zeros(len(rows), dtype=bool)
        for rule in _RULES:
            idx = pending[masks[rule.kind][pending]]
            if not len(idx):
                continue
            old = work[idx]
            new = (
                pd.Series(old, dtype=object)
                .str.replace(rule.pattern, _counting(rule, counts), regex=True)
                .to_numpy(dtype=object)
            )
            work[idx] = new
            changed[idx[new != old]] = True
        changed_ever |= changed
        pending = np.flatnonzero(changed)
        if not len(pending):
            break
    done = np.flatnonzero(changed_ever)
    if len(done):
        out.iloc[rows[done]] = work[done]
    return out, {kind: counts[kind] for kind in PII_KINDS}


def find_pii_series(texts: pd.Series) -> pd.Series:
    """Vectorised :func:`find_pii`: a list of leftover kinds per row (``[]`` when clean).

    For a blocking check over a whole column this is ~50x faster than calling
    :func:`find_pii` per row, since only prefilter hits reach Python.
    """
    found: list[list[str]] = [[] for _ in range(len(texts))]
    rows, work, masks = _candidates(texts)
    for i, (row, text) in enumerate(zip(rows, work, strict=True)):
        found[row] = [
            rule.kind
            for rule in _RULES
            if masks[rule.kind][i]
            and any(rule.validate(m) is not None for m in rule.pattern.finditer(text))
        ]
    return pd.Series(found, index=texts.index, name=texts.name, dtype=object)


# ----------------------------------------------------------------------------- evaluation


def evaluate_redaction(records: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Score redaction on labelled records ``{"text", "kinds", "secrets"?}``.

    A labelled kind counts as found when its placeholder appears (at least once per listed
    secret) and none of that kind's raw ``secrets`` survive. Records with no kinds are
    negatives and must come back unchanged. Returns per-kind recall, overall recall, the
    false-positive rate on negatives and the failing examples.
    """
    per_kind = {kind: {"expected": 0, "found": 0} for kind in PII_KINDS}
    misses: list[dict[str, Any]] = []
    changed_negatives: list[dict[str, str]] = []
    extra_kinds: Counter[str] = Counter()
    n_neg = 0
    for rec in records:
        text, kinds = rec["text"], list(rec.get("kinds") or [])
        redacted, counts = redact_text(text)
        if not kinds:
            n_neg += 1
            if redacted != text:
                changed_negatives.append({"text": text, "redacted": redacted})
            continue
        secrets = rec.get("secrets") or {}
        for kind in kinds:
            raw = list(secrets.get(kind, []))
            per_kind[kind]["expected"] += 1
            enough = redacted.count(PLACEHOLDERS[kind]) >= max(1, len(raw))
            if enough and not any(s in redacted for s in raw):
                per_kind[kind]["found"] += 1
            else:
                misses.append({"text": text, "kind": kind, "redacted": redacted})
        for kind in counts:
            if kind not in kinds:
                extra_kinds[kind] += 1
    expected = sum(v["expected"] for v in per_kind.values())
    found = sum(v["found"] for v in per_kind.values())
    return {
        "per_kind": {
            kind: {**v, "recall": v["found"] / v["expected"] if v["expected"] else None}
            for kind, v in per_kind.items()
        },
        "positives": expected,
        "recall": found / expected if expected else None,
        "negatives": n_neg,
        "false_positive_rate": len(changed_negatives) / n_neg if n_neg else None,
        "unlabelled_kinds_on_positives": dict(extra_kinds),
        "misses": misses,
        "changed_negatives": changed_negatives,
    }


def _main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m echo_pipeline.pairs.redaction CORPUS.jsonl", file=sys.stderr)
        return 2
    lines = Path(argv[0]).read_text(encoding="utf-8").splitlines()
    report = evaluate_redaction(json.loads(line) for line in lines if line.strip())
    print(f"{'kind':<16}{'found':>7}{'expected':>10}{'recall':>9}")
    for kind, v in report["per_kind"].items():
        recall = "-" if v["recall"] is None else f"{v['recall']:.1%}"
        print(f"{kind:<16}{v['found']:>7}{v['expected']:>10}{recall:>9}")
    print(f"overall recall: {report['recall']:.2%} over {report['positives']} labelled kinds")
    print(
        f"false-positive rate: {report['false_positive_rate']:.2%} "
        f"({len(report['changed_negatives'])}/{report['negatives']} negatives changed)"
    )
    for miss in report["misses"]:
        print(f"MISS {miss['kind']}: {miss['text']!r} -> {miss['redacted']!r}")
    for fp in report["changed_negatives"]:
        print(f"FALSE POSITIVE: {fp['text']!r} -> {fp['redacted']!r}")
    return 0


if __name__ == "__main__":
    raise SystemExit(_main(sys.argv[1:]))
