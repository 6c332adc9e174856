"""Per-tenant column mapping: which column of an export holds which field of the ERP contract.

A mapping is a small TOML file the tenant's integrator writes once per export format::

    tenant_id = "harinas-sur"          # optional: refuses the mapping for any other tenant
    decimal_mark = ","                 # "." (default) or ","
    date_order = "dd/mm/yyyy"          # "yyyy-mm-dd" (default), "dd/mm/yyyy" or "mm/dd/yyyy"
    group_by_invoice = false           # true: adjacent rows with one invoice_number are one invoice
    encoding = "cp1252"                # optional; detected otherwise (UTF-8 with/without BOM, else cp1252)
    delimiter = ";"                    # optional; sniffed otherwise (";", "," or tab)
    sheet = "Facturas"                 # optional, XLSX only; the first sheet otherwise

    [columns]                          # column header -> ERP field path
    "Nº Factura" = "invoice_number"
    "Cliente" = "customer.id"
    "Concepto" = "line.description"    # line.* fields make each row one line of its invoice

    [defaults]                         # ERP field path -> value for fields no column holds
    currency = "EUR"

Without a mapping, columns are named by the field paths themselves (``invoice_number``,
``customer.email``, ``line.quantity``...), dates are ISO and the decimal mark is ``.``.
"""

from __future__ import annotations

import codecs
import tomllib
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from factura.ingest.bulk.parse import DATE_ORDERS, DateOrder


class Kind(Enum):
    TEXT = "text"
    DATE = "date"
    DECIMAL = "decimal"
    PERCENT = "percent"


#: Every field a column may fill, with how its cells are read. ``line.*`` fields belong to the
#: row's line; the rest to the invoice (shared by the rows of one invoice when grouping).
FIELDS: dict[str, Kind] = {
    "erp_source": Kind.TEXT,
    "invoice_number": Kind.TEXT,
    "issue_date": Kind.DATE,
    "due_date": Kind.DATE,
    "currency": Kind.TEXT,
    "seller_name": Kind.TEXT,
    "total": Kind.DECIMAL,
    "amendment": Kind.TEXT,
    "delivery_date": Kind.DATE,
    "atcud": Kind.TEXT,
    "fiscal_qr": Kind.TEXT,
    "customer.id": Kind.TEXT,
    "customer.name": Kind.TEXT,
    "customer.country": Kind.TEXT,
    "customer.email": Kind.TEXT,
    "customer.phone": Kind.TEXT,
    "customer.locale": Kind.TEXT,
    "customer.tax_id": Kind.TEXT,
    "customer.preferred_channel": Kind.TEXT,
    "customer.registration_id": Kind.TEXT,
    "document.s3_key": Kind.TEXT,
    "document.xml_s3_key": Kind.TEXT,
    "line.description": Kind.TEXT,
    "line.quantity": Kind.DECIMAL,
    "line.unit_price": Kind.DECIMAL,
    "line.tax_rate": Kind.PERCENT,
    "line.vat_category": Kind.TEXT,
    "line.exemption_reason": Kind.TEXT,
    "line.exemption_code": Kind.TEXT,
}
LINE_PREFIX = "line."


class MappingError(ValueError):
    """The mapping file itself is wrong (or does not fit the file): nothing of the file is loaded."""


@dataclass(frozen=True)
class Mapping:
    columns: dict[str, str]
    defaults: dict[str, str] = field(default_factory=dict)
    tenant_id: str | None = None
    decimal_mark: str = "."
    date_order: DateOrder = "yyyy-mm-dd"
    group_by_invoice: bool = False
    encoding: str | None = None
    delimiter: str | None = None
    sheet: str | None = None
    #: Use the mapped columns the file has, instead of refusing a file that lacks one.
    partial: bool = False

    def __post_init__(self) -> None:
        unknown = sorted({*self.columns.values(), *self.defaults} - FIELDS.keys())
        if unknown:
            raise MappingError(f"unknown field(s) {', '.join(unknown)}; known: {', '.join(FIELDS)}")
        targets = list(self.columns.values())
        doubled = sorted({t for t in targets if targets.count(t) > 1})
        if doubled:
            raise MappingError(f"field(s) {', '.join(doubled)} mapped from more than one column")
        if "invoice_number" not in targets:
            raise MappingError("no column holds invoice_number")
        if self.decimal_mark not in {".", ","}:
            raise MappingError(f"decimal_mark must be '.' or ',', not {self.decimal_mark!r}")
        if self.date_order not in DATE_ORDERS:
            raise MappingError(f"date_order must be one of {', '.join(DATE_ORDERS)}, not {self.date_order!r}")
        if self.encoding is not None:
            try:
                codecs.lookup(self.encoding)
            except LookupError as e:
                raise MappingError(f"unknown encoding {self.encoding!r}") from e
        if self.delimiter is not None and self.delimiter not in {";", ",", "\t"}:
            raise MappingError(f"delimiter must be ';', ',' or a tab, not {self.delimiter!r}")

    def column_for(self, field_path: str) -> str | None:
        """The column a field comes from (for the report), if any."""
        return next((column for column, target in self.columns.items() if target == field_path), None)


#: Columns named by the contract's own field paths: an export written for us needs no mapping.
DEFAULT_MAPPING = Mapping(columns={name: name for name in FIELDS}, partial=True)


def load_mapping(path: Path) -> Mapping:
    try:
        data: dict[str, Any] = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise MappingError(f"{path}: {e}") from e
    columns, defaults = data.pop("columns", {}), data.pop("defaults", {})
    if not isinstance(columns, dict) or not isinstance(defaults, dict):
        raise MappingError(f"{path}: [columns] and [defaults] must be tables")
    known = set(Mapping.__dataclass_fields__) - {"columns", "defaults", "partial"}
    if extra := sorted(data.keys() - known):
        raise MappingError(f"{path}: unknown setting(s) {', '.join(extra)}")
    try:
        return Mapping(
            columns={str(k): str(v) for k, v in columns.items()},
            defaults={str(k): str(v) for k, v in defaults.items()},
            **data,
        )
    except TypeError as e:
        raise MappingError(f"{path}: {e}") from e
    except MappingError as e:
        raise MappingError(f"{path}: {e}") from e
