"""schemathesis against the running ingest service's published schema (its CLI, run as a user
would): generated requests, valid and not, never get a server error, and every answer is one
the schema documents."""

from __future__ import annotations

import asyncio
import re
import sys
from pathlib import Path

import pytest

from factura.devstack.stack import Stack

pytestmark = pytest.mark.e2e
SCHEMATHESIS = Path(sys.executable).parent / "schemathesis"


async def test_ingest_api_answers_as_documented(services: Stack, tmp_path: Path) -> None:
    base = services.cfg.service_url("ingest")
    run = await asyncio.create_subprocess_exec(
        str(SCHEMATHESIS),
        "run",
        f"{base}/openapi.json",
        "--max-examples",
        "20",
        "--seed",
        "1",
        # A schema cannot say "this invoice must be valid by the contract's cross-field rules", so
        # valid-looking bodies may be refused with 422: positive_data_acceptance does not apply.
        "--exclude-checks",
        "positive_data_acceptance",
        "--header",
        f"Authorization: Bearer {services.cfg.audit_api_key()}",
        "--no-color",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        cwd=tmp_path,
    )
    out, _ = await asyncio.wait_for(run.communicate(), 300)
    report = out.decode(errors="replace")
    assert run.returncode == 0, report[-6000:]
    # It did test something: every operation, and some hundreds of generated requests.
    selected = re.search(r"Selected: (\d+)/(\d+)", report)
    cases = re.search(r"(\d+) generated, (\d+) passed", report)
    assert selected and cases, report[-3000:]
    assert selected[1] == selected[2] and int(selected[1]) >= 5 and "Tested: " + selected[1] in report
    assert int(cases[1]) == int(cases[2]) >= 100
