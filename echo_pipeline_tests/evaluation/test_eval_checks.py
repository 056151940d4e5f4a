"""The evaluation's "beats the base" check (a WARN check): it fails where it should."""

from __future__ import annotations


def _verdict(label: str):
    from echo_pipeline.evaluation.echo_quality import Verdict

    return Verdict(label, (f"{label}: a reason",), ())


def test_beats_base_passes_an_adapter_that_sounds_like_me():
    from echo_pipeline.evaluation.checks import check_beats_base

    verdicts = {"adapter": _verdict("sounds like you"), "base": _verdict("babbling")}
    outcome = check_beats_base(verdicts, {"base_reply_loss": 3.0, "adapter_reply_loss": 3.5})
    assert outcome.passed and outcome.warn_only and outcome.description is None


def test_beats_base_needs_a_better_verdict_and_a_lower_loss():
    from echo_pipeline.evaluation.checks import check_beats_base

    better = {"adapter": _verdict("unlike you"), "base": _verdict("babbling")}
    lower = {"base_reply_loss": 5.0, "adapter_reply_loss": 4.0, "adapter_loop_share": 0.1}
    outcome = check_beats_base(better, lower, headline=("adapter_loop_share",))
    assert outcome.passed and outcome.metadata["adapter_ahead_on_reply_loss"] is True
    assert outcome.metadata["adapter_loop_share"] == 0.1

    higher = {"base_reply_loss": 4.0, "adapter_reply_loss": 5.0}
    failed = check_beats_base(better, higher)
    assert not failed.passed and failed.warn_only
    assert failed.description.startswith("The adapter's verdict is 'unlike you' (base: 'babbling')")
    same = {"adapter": _verdict("babbling"), "base": _verdict("babbling")}
    assert not check_beats_base(same, lower).passed  # a lower loss alone is not enough
