"""Realistic sample traffic for the demo and the end-to-end tests.

Five tenants in four languages, and one invoice for each path through the flow: plain email,
a bouncing mailbox, a customer without email, a customer SMS cannot reach either, a message
that breaks the ERP contract, a payment before the due date, and an invoice already overdue.
Dates are relative to "today" so the demo means the same thing on any day.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any, Literal

from factura.common.events import cents

Outcome = Literal["email", "sms", "rejected", "failed"]


@dataclass(frozen=True)
class Sample:
    tenant_id: str
    invoice_number: str
    payload: dict[str, Any]
    expected: Outcome
    expect_reminder: bool = False
    payment: dict[str, Any] | None = None
    note: str = ""
    raw: bytes = field(default=b"", repr=False)

    def message(self) -> bytes:
        return self.raw or json.dumps(self.payload, ensure_ascii=False).encode()


TENANTS: dict[str, dict[str, str]] = {
    "harinas-sur": {"seller": "Harinas del Sur S.A.", "country": "ES", "currency": "EUR", "erp": "sap-s4"},
    "lisboa-tech": {"seller": "Lisboa Tech, Lda.", "country": "PT", "currency": "EUR", "erp": "primavera"},
    "sampa-logistica": {"seller": "Sampa Logística Ltda.", "country": "BR", "currency": "BRL", "erp": "totvs"},
    "acme-us": {"seller": "ACME Supplies Inc.", "country": "US", "currency": "USD", "erp": "netsuite"},
    "carpati-energie": {"seller": "Carpați Energie S.R.L.", "country": "RO", "currency": "RON", "erp": "odoo"},
}

PHONES = {
    "ES": "612 345 678",
    "PT": "912 345 678",
    "BR": "(11) 91234-5678",
    "US": "(202) 555-0147",
    "RO": "0721 234 567",
}

ITEMS = [
    ("Harina de trigo T55, saco 25 kg", "12", "18.50", "10"),
    ("Consultoria técnica (horas)", "6", "75.00", "23"),
    ("Frete São Paulo → Campinas", "1", "480.00", "0"),
    ("Office chairs, ergonomic", "4", "189.99", "0"),
    ("Energie electrică, kWh", "1250", "0.92", "19"),
]


#: What each country's invoicing law wants on the page, as the ERP sends it (docs/documents.md,
#: "What each country requires"): buyer tax id and address, a second line that is exempt with its
#: legal basis where the country's VAT has one, and country mentions (Portugal's ATCUD and QR code,
#: Romania's trade register numbers).
BUYERS: dict[str, dict[str, Any]] = {
    "ES": {"tax_id": "B41111111", "address": {"lines": ["Calle Feria 12"], "city": "Sevilla", "postcode": "41003",
                                               "subdivision": "Sevilla"}},
    "PT": {"tax_id": "PT503504564", "address": {"lines": ["Rua Augusta 27"], "city": "Lisboa", "postcode": "1100-048"}},
    "BR": {"tax_id": "11.222.333/0001-81", "address": {"lines": ["Av. Paulista 1000"], "city": "São Paulo",
                                                        "postcode": "01310-100", "subdivision": "SP"}},
    "US": {"address": {"lines": ["200 E Randolph St"], "city": "Chicago", "postcode": "60601", "subdivision": "IL"}},
    "RO": {"tax_id": "RO11111111", "registration_id": "J40/5678/2015",
           "address": {"lines": ["Strada Lipscani 5"], "city": "Sector 3", "postcode": "030031",
                       "subdivision": "RO-B"}},
}  # fmt: skip
#: The 0 % line per country: exempt with its legal basis (E), or zero rated (Z) where VAT has no such notion.
EXEMPT_LINE: dict[str, dict[str, str]] = {
    "ES": {"description": "Curso de panificación (formación profesional)", "vat_category": "E",
           "exemption_reason": "Exenta art. 20.Uno.9.º LIVA", "exemption_code": "VATEX-EU-132-1I"},
    "PT": {"description": "Formação profissional certificada", "vat_category": "E",
           "exemption_reason": "Isento artigo 9.º, n.º 10 do CIVA", "exemption_code": "VATEX-EU-132-1I"},
    "RO": {"description": "Curs de formare profesională", "vat_category": "E",
           "exemption_reason": "Scutit fără drept de deducere, art. 292 alin. (2) lit. a) Cod fiscal",
           "exemption_code": "VATEX-EU-132-1I"},
}  # fmt: skip


def _country_fields(
    tenant_id: str, country: str, number: str, issued: date, lines: list[dict[str, Any]]
) -> dict[str, Any]:
    """Portugal: ATCUD and the QR code text (Portaria 195/2020) the certified ERP prints; Romania: the issuer's
    trade register number."""
    if country == "RO":
        return {"seller": {"registration_id": "J40/1234/2010"}}
    if country != "PT":
        return {}
    sequence = number.rsplit("-", 1)[-1].lstrip("0") or "0"
    atcud = f"JFJ7KL9M-{sequence}"
    amounts = [(cents(Decimal(x["quantity"]) * Decimal(x["unit_price"])), Decimal(x["tax_rate"])) for x in lines]
    exempt = sum((a for a, rate in amounts if rate == 0), Decimal(0))
    base = sum((a for a, rate in amounts if rate > 0), Decimal(0))
    vat = sum((cents(a * rate / 100) for a, rate in amounts if rate > 0), Decimal(0))
    qr = (
        f"A:509876543*B:503504564*C:PT*D:FT*E:N*F:{issued:%Y%m%d}*G:FT {tenant_id}/{sequence}*H:{atcud}"
        f"*I1:PT*I2:{exempt}*I7:{base}*I8:{vat}*N:{vat}*O:{base + exempt + vat}*Q:kq3T*R:1234"
    )
    return {
        "atcud": atcud,
        "fiscal_qr": qr,
        "legal_mentions": ["kq3T-Processado por programa certificado n.º 1234/AT"],
    }


def invoice_payload(
    tenant_id: str, n: int, today: date, *, email: str | None, phone: str | None = "", due_in: int = 30
) -> dict[str, Any]:
    t = TENANTS[tenant_id]
    item = ITEMS[n % len(ITEMS)]
    customer: dict[str, Any] = {"id": f"C-{n:04d}", "name": f"Cliente {n} {t['country']}", "country": t["country"]}
    customer |= copy.deepcopy(BUYERS[t["country"]])
    if email is not None:
        customer["email"] = email
    if phone == "":
        phone = PHONES[t["country"]]
    if phone is not None:
        customer["phone"] = phone
    issued = today + timedelta(days=due_in - 30)
    number = f"{tenant_id[:3].upper()}-{today:%Y%m%d}-{n:05d}"  # per day: its dates are content
    zero = {"description": "Servicio de entrega / delivery"} | EXEMPT_LINE.get(t["country"], {})
    lines = [
        {"description": item[0], "quantity": item[1], "unit_price": item[2], "tax_rate": item[3]},
        zero | {"quantity": "1", "unit_price": "15.00", "tax_rate": "0"},
    ]
    return {
        "tenant_id": tenant_id,
        "erp_source": t["erp"],
        "invoice_number": number,
        "issue_date": issued.isoformat(),
        "due_date": (issued + timedelta(days=30)).isoformat(),
        "currency": t["currency"],
        "seller_name": t["seller"],
        "customer": customer,
        "lines": lines,
    } | _country_fields(tenant_id, t["country"], number, issued, lines)


def _total(payload: dict[str, Any]) -> Decimal:
    total = Decimal("0")
    for line in payload["lines"]:
        amount = cents(Decimal(line["quantity"]) * Decimal(line["unit_price"]))
        total += amount + cents(amount * Decimal(line["tax_rate"]) / 100)
    return total


def _sample(payload: dict[str, Any], expected: Outcome, **kw: Any) -> Sample:
    return Sample(payload["tenant_id"], payload["invoice_number"], payload, expected, **kw)


def demo_samples(today: date | None = None) -> list[Sample]:
    today = today or datetime.now(UTC).date()
    tenants = list(TENANTS)
    samples: list[Sample] = []
    for n in range(1, 15):  # the plain path: email with the PDF attached
        tenant = tenants[n % len(tenants)]
        samples.append(_sample(invoice_payload(tenant, n, today, email=f"billing{n}@{tenant}.test"), "email"))

    bounce = invoice_payload("harinas-sur", 15, today, email="contabilidad@bounce.test")
    samples.append(_sample(bounce, "sms", note="mailbox answers 550 5.1.1 → SMS fallback"))
    no_email = invoice_payload("lisboa-tech", 16, today, email=None)
    samples.append(_sample(no_email, "sms", note="no email address → SMS"))
    unreachable = invoice_payload("acme-us", 17, today, email=None, phone="(312) 555-0199")
    samples.append(_sample(unreachable, "failed", note="no email, SMS provider refuses the number"))

    invalid = invoice_payload("carpati-energie", 18, today, email="facturi@client18.test")
    invalid["currency"] = "LEI!"
    invalid["lines"] = []
    samples.append(_sample(invalid, "rejected", note="breaks the ERP contract: currency, lines"))

    paid = invoice_payload("sampa-logistica", 19, today, email="financeiro@client19.test")
    payment = {
        "tenant_id": "sampa-logistica",
        "erp_source": "totvs",
        "payment_id": f"PIX-{today:%Y%m%d}-19",
        "invoice_number": paid["invoice_number"],
        "amount": str(_total(paid)),
        "currency": "BRL",
        "paid_at": datetime.now(UTC).isoformat(),
        "method": "pix",
    }
    samples.append(_sample(paid, "email", payment=payment, note="paid before the due date → no reminder"))

    overdue = invoice_payload("carpati-energie", 20, today, email="facturi@client20.test", due_in=-5)
    samples.append(_sample(overdue, "email", expect_reminder=True, note="due 5 days ago, unpaid → reminder.due"))
    return samples
