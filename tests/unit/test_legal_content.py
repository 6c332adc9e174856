"""What each country's invoicing law asks for on the page, from the ERP contract to the HTML.

VAT categories and exemption reasons are checked where they enter (ingest names the field at
fault) and shown per rate and per reason; buyer address and ids, Portugal's ATCUD and QR code,
Romania's trade register numbers and Brazil's CNPJ/CPF label reach the document.
"""

from __future__ import annotations

import io
import json
import re
from datetime import date
from pathlib import Path
from typing import Any

import pytest
from pypdf import PdfReader

from factura.common.errors import InvalidMessage
from factura.common.events import InvoiceCreatedV1
from factura.common.schemas import EXAMPLES_DIR
from factura.common.tenants import Seller, TenantConfig
from factura.devstack.samples import invoice_payload
from factura.ingest.bulk.load import load
from factura.ingest.bulk.mapping import Mapping
from factura.ingest.normalise import invoice_from_erp
from factura.renderer.document import render_html, render_pdf

TODAY = date(2026, 11, 24)
BASE: dict[str, Any] = json.loads((EXAMPLES_DIR / "erp.invoice.v1.json").read_text(encoding="utf-8"))
DEFAULT = TenantConfig.default("acme")


def accepted(payload: dict[str, Any]) -> InvoiceCreatedV1:
    return invoice_from_erp(payload, today=TODAY, allow_test_domains=True)[1]


def refused(payload: dict[str, Any]) -> dict[str, str]:
    with pytest.raises(InvalidMessage) as info:
        invoice_from_erp(payload, today=TODAY)
    return {r.field: r.message for r in info.value.reasons}


def with_lines(*lines: dict[str, Any]) -> dict[str, Any]:
    return BASE | {"lines": list(lines), "total": None}


def item(rate: str, **vat: str) -> dict[str, Any]:
    return {"description": "Item", "quantity": "1", "unit_price": "100", "tax_rate": rate} | vat


def test_categories_are_implied_or_given_and_reasons_defaulted() -> None:
    invoice = accepted(
        with_lines(
            item("21"),
            item("0"),
            item("0", exemption_reason="Exenta art. 20.Uno.9.º LIVA"),
            item("0", vat_category="AE"),
            item("0", vat_category="K", exemption_code="vatex-eu-ic"),
        )
    )
    got = [(line.vat_category, line.exemption_reason, line.exemption_code) for line in invoice.lines]
    assert got == [
        ("S", None, None),
        ("Z", None, None),
        ("E", "Exenta art. 20.Uno.9.º LIVA", None),
        ("AE", None, "VATEX-EU-AE"),
        ("K", None, "VATEX-EU-IC"),
    ]


@pytest.mark.parametrize(
    ("line", "field", "words"),
    [
        (item("0", vat_category="E"), "lines.0.exemption_reason", "required for vat_category E"),
        (item("0", vat_category="S"), "lines.0.tax_rate", "above 0 for vat_category S"),
        (item("21", vat_category="AE"), "lines.0.tax_rate", "must be 0 for vat_category AE"),
        (item("0", vat_category="Z", exemption_reason="x"), "lines.0.exemption_reason", "only exempt categories"),
        (item("21", exemption_code="VATEX-EU-O"), "lines.0.exemption_code", "not vat_category S"),
        (item("0", vat_category="X"), "lines.0.vat_category", "'S', 'Z', 'E'"),
        (item("0", exemption_code="EU-132"), "lines.0.exemption_code", "pattern"),
    ],
)
def test_inconsistent_vat_is_refused_naming_the_field(line: dict[str, Any], field: str, words: str) -> None:
    reasons = refused(with_lines(line))
    assert field in reasons and words in reasons[field], reasons


def test_address_ids_and_country_fields_travel_and_bad_ones_are_named() -> None:
    payload = BASE | {
        "customer": BASE["customer"] | {"registration_id": "J40/5678/2015", "address": {"city": "  ", "lines": []}},
        "atcud": "jfj7kl9m-35",
        "delivery_date": "2026-10-30",
    }
    invoice = accepted(payload)
    assert invoice.customer.address is None  # an empty address is no address
    assert invoice.customer.registration_id == "J40/5678/2015"
    assert (invoice.atcud, invoice.delivery_date) == ("JFJ7KL9M-35", date(2026, 10, 30))
    assert set(refused(payload | {"atcud": "35"})) == {"atcud"}
    assert set(refused(payload | {"legal_mentions": ["ok", "bad\u202e"]})) == {"legal_mentions.1"}


def test_vat_breakdown_per_rate_and_per_exemption_reason() -> None:
    lines = [
        item("10"),
        item("21"),
        item("0"),
        item("0", exemption_reason="Exenta art. 20.Uno.9.º LIVA", exemption_code="VATEX-EU-132-1I"),
        item("0", exemption_reason="Exenta art. 20.Uno.3.º LIVA"),
    ]
    html = render_html(accepted(with_lines(*lines)), DEFAULT)
    vat = re.search(r'<table class="vat">.*?</table>', html, re.S)
    assert vat is not None
    rows = [re.sub(r"<[^>]+>", "|", row) for row in re.findall(r"<tr>(.*?)</tr>", vat.group(), re.S)[1:]]
    assert len(rows) == 5, rows
    assert any("100,00" in r and "10" in r and "10,00" in r for r in rows)  # base, rate, VAT at 10 %
    assert any("21,00" in r for r in rows)
    assert any("Tipo cero" in r for r in rows)
    assert any("Operación exenta: Exenta art. 20.Uno.9.º LIVA VATEX-EU-132-1I" in r for r in rows)
    assert any("Operación exenta: Exenta art. 20.Uno.3.º LIVA" in r for r in rows)


def test_buyer_address_and_tax_id_are_on_the_page() -> None:
    address = {"lines": ["Calle Feria 12, local 3"], "city": "Sevilla", "postcode": "41003"}
    html = render_html(accepted(BASE | {"customer": BASE["customer"] | {"address": address}}), DEFAULT)
    assert "Calle Feria 12, local 3" in html and "41003 Sevilla" in html and "NIF: B12345678" in html


def test_portugal_atcud_on_every_page_and_the_qr_code() -> None:
    invoice = accepted(invoice_payload("lisboa-tech", 4, TODAY, email="faturas@cliente.test"))
    assert invoice.atcud and invoice.fiscal_qr
    html = render_html(invoice, DEFAULT)
    assert f"ATCUD: {invoice.atcud}" in html and "<svg" in html and "Processado por programa certificado" in html
    assert invoice.fiscal_qr not in html  # the QR text is modules of the code, not page text
    long = invoice.model_copy(update={"lines": invoice.lines * 30})  # figures do not matter to the page
    pages = PdfReader(io.BytesIO(render_pdf(long))).pages
    assert len(pages) > 1 and all(f"ATCUD: {invoice.atcud}" in page.extract_text() for page in pages)


def test_romania_trade_register_and_brazil_tax_id_label() -> None:
    ro = accepted(invoice_payload("carpati-energie", 4, TODAY, email="facturi@client.test"))
    seller = Seller(
        legal_name="Carpați Energie S.R.L.", vat_id="RO12345678", street="Bd. Unirii 10", city="București",
        postcode="030167", country="RO",
    )  # fmt: skip
    html = render_html(ro, TenantConfig(tenant_id="carpati-energie", seller=seller))
    assert "CIF: RO12345678" in html and "Nr. Reg. Com.: J40/1234/2010" in html
    assert "Nr. Reg. Com.: J40/5678/2015" in html and "RO-B" in html
    assert "Scutit: Scutit fără drept de deducere" in html
    br = accepted(invoice_payload("sampa-logistica", 4, TODAY, email="financeiro@cliente.test"))
    assert "CNPJ/CPF: 11.222.333/0001-81" in render_html(br, DEFAULT)


def test_old_invoices_without_categories_still_render() -> None:
    data = json.loads((EXAMPLES_DIR / "invoice.created.v1.json").read_text(encoding="utf-8"))["data"]
    for line in data["lines"]:
        line.pop("vat_category")
    data["customer"].pop("address")
    html = render_html(InvoiceCreatedV1.model_validate(data), DEFAULT)
    assert "286,55" in html and "Desglose del IVA" in html


async def test_bulk_columns_carry_vat_categories_and_exemption_reasons(tmp_path: Path) -> None:
    columns = "invoice_number;customer.id;customer.name;customer.registration_id;line.description;line.quantity;"
    columns += "line.unit_price;line.tax_rate;line.vat_category;line.exemption_reason;line.exemption_code"
    rows = [columns, "F-1;C-1;Client;J40/1/2020;Curs;1;100;0;E;Scutit art. 292;VATEX-EU-132-1I"]
    mapping = Mapping(
        columns={name: name for name in columns.split(";")},
        defaults={"erp_source": "odoo", "seller_name": "S", "currency": "RON", "customer.country": "RO",
                  "issue_date": "2026-11-20", "due_date": "2026-12-20"},
    )  # fmt: skip
    (tmp_path / "f.csv").write_text("\n".join(rows), encoding="utf-8")
    sent: list[bytes] = []

    class Sender:
        async def send(self, topic: str, value: bytes, *, key: bytes | None, headers: Any) -> None:
            sent.append(value)

    await load(tmp_path / "f.csv", tenant_id="carpati-energie", mapping=mapping, sender=Sender(), topic="t",
               report=lambda row: None)  # fmt: skip
    invoice = accepted(json.loads(sent[0]))
    assert invoice.customer.registration_id == "J40/1/2020"
    assert (invoice.lines[0].vat_category, invoice.lines[0].exemption_code) == ("E", "VATEX-EU-132-1I")
