"""The real channel exports in fixtures/real/ and who "me" is in each (its README.md)."""

from __future__ import annotations

from pathlib import Path

REAL = Path(__file__).parent / "fixtures" / "real"
REAL_ME = {  # the README's suggested "me" per export, by a word of the file name
    "ece722": "277113830809534464",
    "Amulius": "296272996442570753",
    "SDRplusplus": "274976585650536449",
    "Rinkhals": "207668238182514688",
}
REAL_EXPORTS = sorted(REAL.glob("*.json"))


def me_for(export: Path) -> str:
    return next(me for word, me in REAL_ME.items() if word in export.name)
