"""The evaluation's check: does the adapter earn a better verdict than its base?"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    pass

from echo_pipeline.infra.checks import CheckOutcome


def check_beats_base(
    verdicts: Mapping[str, Any], metrics: Mapping[str, float], headline: Sequence[str] = ()
) -> CheckOutcome:
    """Passes when the adapter sounds like me, or at least earns a better verdict than the base
    with a lower held-out reply loss. ``verdicts``: the report's ``{"adapter": .., "base": ..}``
    (``ok``, ``rank()``, ``label``, ``reasons``); ``headline``: metrics copied into the result."""
    from echo_pipeline.evaluation.evaluate import adapter_vs_base

    ahead = adapter_vs_base(dict(metrics))
    adapter, base = verdicts["adapter"], verdicts["base"]
    passed = bool(adapter.ok or (adapter.rank() < base.rank() and ahead.get("reply_loss")))
    return CheckOutcome(
        "beats_base",
        passed,
        {
            "verdict": adapter.label,
            "base_verdict": base.label,
            **{f"adapter_ahead_on_{name}": won for name, won in ahead.items()},
            **{n: float(metrics[n]) for n in headline if n in metrics},
        },
        None
        if passed
        else f"The adapter's verdict is {adapter.label!r} (base: {base.label!r}): "
        + "; ".join(adapter.reasons[:3]),
        warn_only=True,
    )
