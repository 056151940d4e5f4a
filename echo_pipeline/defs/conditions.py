"""When declarative automation re-makes an asset (once its sensor, echo_automation, is on)."""

import dagster as dg


# Declarative automation, off until its sensor is turned on. A new export (through the sensor
# above) or re-made pairs re-render every template's dataset; a re-rendered dataset re-trains
# the adapters made from it before (never a recipe nobody asked for); a re-trained adapter is
# re-evaluated. Code changes count as updates. Never from pairs whose blocking checks failed.
def _updated_or_new_code() -> dg.AutomationCondition:
    return (
        dg.AutomationCondition.any_deps_updated() | dg.AutomationCondition.code_version_changed()
    ).since_last_handled()


_settled = (
    ~dg.AutomationCondition.any_deps_missing()
    & ~dg.AutomationCondition.any_deps_in_progress()
    & ~dg.AutomationCondition.in_progress()
)
DATASET_AUTOMATION = (
    dg.AutomationCondition.eager() | (_updated_or_new_code() & _settled)
) & dg.AutomationCondition.all_deps_blocking_checks_passed()
ADAPTER_AUTOMATION = _updated_or_new_code() & _settled & ~dg.AutomationCondition.missing()
REPORT_AUTOMATION = _updated_or_new_code() & _settled
