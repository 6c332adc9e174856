"""The chaos suite's table: every scenario's report, printed once at the end of the run."""

from __future__ import annotations

import pytest

from tests.chaos.checker import Report, table

REPORTS = pytest.StashKey[list[Report]]()


@pytest.fixture
def chaos_reports(request: pytest.FixtureRequest) -> list[Report]:
    """Where each scenario leaves its report for the summary table."""
    return request.config.stash.setdefault(REPORTS, [])


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    if reports := config.stash.get(REPORTS, []):
        terminalreporter.section("chaos")
        terminalreporter.write_line(table(reports))
