"""The chaos suite (issue 14): the whole stack keeps its promises while things break.

Each scenario is a separate run on the running stack (the session's ``services``): an ERP load
of ``FACTURA_CHAOS_INVOICES`` invoices while one kind of chaos happens, then the checker's
verdict (docs/chaos.md). ``FACTURA_CHAOS_SCENARIOS`` names the scenarios collected (comma
separated, or ``all``). ``make test`` runs the two that only this suite covers, crashes
(``sigkill-bursts``) and graceful stops of every service (``sigterm-each``), at CI size; each
dependency's outage is also covered there, by tests/e2e/test_outages.py. ``make test-chaos``
runs all eight at full size.
"""

from __future__ import annotations

import os

import pytest

from factura.devstack.stack import Stack
from tests.chaos.checker import Report, table
from tests.chaos.driver import SCENARIOS, Sizes, run

#: The scenarios ``make test`` runs (CI size): the crash and graceful-stop runs.
IN_CI = "sigkill-bursts,sigterm-each"
_CHOSEN = os.environ.get("FACTURA_CHAOS_SCENARIOS", IN_CI)
CHOSEN = list(SCENARIOS) if _CHOSEN == "all" else [name.strip() for name in _CHOSEN.split(",") if name.strip()]
pytestmark = pytest.mark.e2e


def test_the_chosen_scenarios_exist() -> None:
    assert set(CHOSEN) <= set(SCENARIOS), f"unknown scenarios {sorted(set(CHOSEN) - set(SCENARIOS))}"


@pytest.mark.parametrize("name", CHOSEN)
async def test_nothing_lost_nor_doubled(services: Stack, name: str, chaos_reports: list[Report]) -> None:
    scenario = SCENARIOS[name]
    report = await run(services, scenario, Sizes.from_env())
    chaos_reports.append(report)
    print("\n" + table([report]))
    assert not report.failures(scenario.max_duplicates_per_10k), table([report])
