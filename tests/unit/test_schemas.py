"""Checked-in JSON Schemas match the models, and every example validates against both."""

from __future__ import annotations

import json

import jsonschema
import pytest

from factura.common.erp import ERP_MODELS
from factura.common.events import parse_event
from factura.common.schemas import EXAMPLES_DIR, SCHEMA_DIR, render, schemas

EXPORTED = schemas()


@pytest.mark.parametrize("stem", sorted(EXPORTED))
def test_checked_in_schema_is_current(stem: str) -> None:
    path = SCHEMA_DIR / f"{stem}.json"
    assert path.exists(), f"{path} missing: run `make schemas`"
    assert path.read_text(encoding="utf-8") == render(EXPORTED[stem]), f"{path} is stale: run `make schemas`"


def test_no_orphan_schema_files() -> None:
    assert {p.stem for p in SCHEMA_DIR.glob("*.json")} == set(EXPORTED)


@pytest.mark.parametrize("stem", sorted(EXPORTED))
def test_example_validates(stem: str) -> None:
    path = EXAMPLES_DIR / f"{stem}.json"
    assert path.exists(), f"every schema needs an example: {path}"
    instance = json.loads(path.read_text(encoding="utf-8"))
    jsonschema.Draft202012Validator(EXPORTED[stem], format_checker=jsonschema.FormatChecker()).validate(instance)
    if stem in ERP_MODELS:
        ERP_MODELS[stem].model_validate(instance)
    else:
        assert parse_event(path.read_bytes()).type == instance["type"]


def test_schema_rejects_what_the_model_rejects() -> None:
    instance = json.loads((EXAMPLES_DIR / "invoice.created.v1.json").read_text(encoding="utf-8"))
    instance["data"]["lines"] = []
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft202012Validator(EXPORTED["invoice.created.v1"]).validate(instance)
