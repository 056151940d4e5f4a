"""Core check outcomes as Dagster asset check results: the one place the two meet."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import dagster as dg

from echo_pipeline.infra.checks import CheckOutcome


def asset_check_results(outcomes: Iterable[CheckOutcome]) -> Iterator[dg.AssetCheckResult]:
    """One ``AssetCheckResult`` per outcome, in order, with its name, metadata and description."""
    for outcome in outcomes:
        yield dg.AssetCheckResult(
            check_name=outcome.name,
            passed=outcome.passed,
            metadata=dict(outcome.metadata),
            description=outcome.description,
            severity=dg.AssetCheckSeverity.WARN
            if outcome.warn_only
            else dg.AssetCheckSeverity.ERROR,
        )
