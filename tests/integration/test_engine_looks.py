"""Both engines render every sample tenant's invoice: key fields present, nothing off the page.

Each sample tenant (devstack/tenants) renders a ten-line invoice of its country (ATCUD and fiscal
QR code for Portugal, an exempt line, a long unbreakable reference) with WeasyPrint and with
Typst; poppler's ``pdftotext`` checks the key fields and every word's box, ``pdftoppm`` rasterises
the pages and the strip outside the side margins must stay blank.

The pictures in docs/documents/ are these renders; regenerate them after changing a template:

    .venv/bin/python -m tests.integration.test_engine_looks
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
from datetime import date
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from factura.common.events import InvoiceCreatedV1
from factura.common.tenants import TenantConfig, TenantDirectory
from factura.devstack.samples import invoice_payload
from factura.ingest.normalise import invoice_from_erp
from factura.renderer.document import context, layout, render_html
from factura.renderer.typst_engine import render_typst

REPO = Path(__file__).resolve().parents[2]
TENANTS = TenantDirectory(REPO / "devstack" / "tenants")
SAMPLES = sorted(t.tenant_id for t in TENANTS)
ENGINES = ("weasyprint", "typst")
PICTURES = REPO / "docs" / "documents"
TODAY = date(2026, 11, 24)
#: Side strip (points) that must stay blank: 10 mm of each 16 mm margin.
STRIP = 28.0
ITEMS = ["Consultoria técnica, hora", "Mantenimiento preventivo", "Suport tehnic lunar", "Licença anual"]


def sample(tenant_id: str) -> InvoiceCreatedV1:
    """The tenant's devstack invoice, padded to ten lines, one of them a 60-character reference."""
    payload: dict[str, Any] = invoice_payload(tenant_id, 4, TODAY, email=f"billing@{tenant_id}.test")
    rate = payload["lines"][0]["tax_rate"]
    extra = [
        {"description": f"{ITEMS[i % len(ITEMS)]} {i}", "quantity": str(i), "unit_price": "12.50", "tax_rate": rate}
        for i in range(1, 8)
    ]
    reference = {"description": "REF-" + "X7" * 28, "quantity": "1", "unit_price": "1.00", "tax_rate": rate}
    payload["lines"] = [*payload["lines"], *extra, reference]
    payload.pop("total", None)
    return invoice_from_erp(payload, allow_test_domains=True, today=TODAY)[1]


def render(invoice: InvoiceCreatedV1, tenant: TenantConfig, engine: str) -> bytes:
    if engine == "typst":
        return render_typst(invoice, tenant, None)[0]
    pdf: bytes = layout(render_html(invoice, tenant), tenant, pdf_a=False).write_pdf()
    return pdf


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is missing: install Debian's poppler-utils (scripts/system-deps.sh)")
    return path


def pdftotext(pdf: bytes, *args: str) -> str:
    return subprocess.run(
        [tool("pdftotext"), *args, "-", "-"], input=pdf, capture_output=True, check=True
    ).stdout.decode()


def pngs(pdf: bytes, dpi: int, folder: Path, *args: str) -> list[Path]:
    """The pages as PNG files in ``folder`` (pdftoppm writes files, not stdout)."""
    subprocess.run([tool("pdftoppm"), "-r", str(dpi), "-png", *args, "-", str(folder / "page")], input=pdf, check=True)
    return sorted(folder.glob("page*.png"))


def words(pdf: bytes) -> tuple[float, float, list[tuple[float, float, float, float]]]:
    """Page width, height and every word's box (pdftotext -bbox, in points)."""
    html = pdftotext(pdf, "-bbox")
    width, height = (float(v) for v in re.findall(r'<page width="([\d.]+)" height="([\d.]+)"', html)[0])
    boxes = re.findall(r'<word xMin="([\d.]+)" yMin="([\d.]+)" xMax="([\d.]+)" yMax="([\d.]+)"', html)
    return width, height, [(float(a), float(b), float(c), float(d)) for a, b, c, d in boxes]


def flat(text: str) -> str:
    return " ".join(text.split())


@pytest.fixture(scope="module", params=[(t, e) for t in SAMPLES for e in ENGINES], ids=lambda p: f"{p[0]}-{p[1]}")
def rendered(request: pytest.FixtureRequest) -> tuple[InvoiceCreatedV1, TenantConfig, bytes]:
    tenant_id, engine = request.param
    invoice = sample(tenant_id)
    tenant = TENANTS.get(tenant_id)
    return invoice, tenant, render(invoice, tenant, engine)


def test_every_sample_tenant_is_rendered_by_its_engine_and_the_other() -> None:
    assert len(SAMPLES) >= 4 and {TENANTS.get(t).engine for t in SAMPLES} == set(ENGINES)


def test_key_fields_are_on_the_page(rendered: tuple[InvoiceCreatedV1, TenantConfig, bytes]) -> None:
    invoice, tenant, pdf = rendered
    view = context(invoice, tenant)
    text = flat(pdftotext(pdf, "-enc", "UTF-8"))
    expected = [
        f"{view['t']['invoice']} {invoice.invoice_number}",
        view["issuer"]["name"],
        invoice.customer.name,
        view["total"],
        view["due_date"],
        view["lines"][0]["description"],
        *([f"ATCUD: {invoice.atcud}"] if invoice.atcud else []),
        *([view["t"]["pay"]] if view["payment_url"] else []),
        *([tenant.seller.iban] if tenant.seller and tenant.seller.iban else []),
    ]
    missing = [item for item in expected if flat(item) not in text]
    assert not missing, f"missing {missing} in {text}"


def test_nothing_runs_off_the_page(rendered: tuple[InvoiceCreatedV1, TenantConfig, bytes], tmp_path: Path) -> None:
    pdf = rendered[2]
    width, height, boxes = words(pdf)
    outside = [box for box in boxes if box[0] < STRIP or box[2] > width - STRIP or box[1] < 0 or box[3] > height]
    assert not outside, f"words outside the page's text area: {outside}"
    dpi = 30
    strip = round(STRIP / 72 * dpi)
    pages = pngs(pdf, dpi, tmp_path, "-gray")
    assert len(pages) == 1
    with Image.open(pages[0]) as page:
        image = page.convert("L")
    sides = [image.crop((0, 0, strip, image.height)), image.crop((image.width - strip, 0, image.width, image.height))]
    assert all(side.getextrema()[0] == 255 for side in sides), "ink in the side margins"


def pictures() -> None:
    """docs/documents/<tenant>-<engine>.png: the first page of each sample tenant's invoice, per engine."""
    PICTURES.mkdir(parents=True, exist_ok=True)
    for tenant_id in SAMPLES:
        invoice, tenant = sample(tenant_id), TENANTS.get(tenant_id)
        for engine in ENGINES:
            with tempfile.TemporaryDirectory() as folder:
                [png] = pngs(render(invoice, tenant, engine), 60, Path(folder), "-singlefile")
                shutil.move(png, PICTURES / f"{tenant_id}-{engine}.png")
            print(PICTURES / f"{tenant_id}-{engine}.png", file=sys.stderr)


if __name__ == "__main__":
    pictures()
