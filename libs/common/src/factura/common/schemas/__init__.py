"""JSON Schemas exported from the pydantic models, for teams that do not use Python.

``python -m factura.common.schemas`` (``make schemas``) rewrites ``json/``; a test fails when the
checked-in files are stale, and every file in ``examples/`` is validated against its schema.
"""

from __future__ import annotations

import json
from importlib.resources import files
from pathlib import Path
from typing import Any

from factura.common.envelope import Envelope
from factura.common.erp import ERP_MODELS
from factura.common.events import EVENT_MODELS

SCHEMA_DIR = Path(str(files("factura.common.schemas").joinpath("json")))
EXAMPLES_DIR = Path(str(files("factura.common.schemas").joinpath("examples")))


def schemas() -> dict[str, dict[str, Any]]:
    """File stem → JSON Schema, for every event type/version and every ERP contract."""
    out: dict[str, dict[str, Any]] = {}
    for (event_type, version), model in EVENT_MODELS.items():
        schema = Envelope[model].model_json_schema()  # type: ignore[valid-type]
        schema["title"] = f"{event_type} v{version}"
        schema["properties"]["type"]["const"] = event_type
        schema["properties"]["schema_version"]["const"] = version
        out[f"{event_type}.v{version}"] = schema
    for name, erp_model in ERP_MODELS.items():
        schema = erp_model.model_json_schema()
        schema["title"] = name
        out[name] = schema
    return out


def render(schema: dict[str, Any]) -> str:
    return json.dumps(schema, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def write(directory: Path = SCHEMA_DIR) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for stem, schema in schemas().items():
        path = directory / f"{stem}.json"
        path.write_text(render(schema), encoding="utf-8")
        written.append(path)
    return written
