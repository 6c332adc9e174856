"""pipeline.produce renders with the tenant's engine, and both engines give the same Factur-X output."""

from __future__ import annotations

import io
from pathlib import Path

import facturx
import pytest
from pypdf import PdfReader

from factura.common.tenants import HTML_TEMPLATE, TenantDirectory
from factura.renderer.pipeline import ENGINE, ENGINES, produce, warm_up_job


def test_engines_are_the_tenant_config_choices() -> None:
    assert ENGINES == ("weasyprint", "typst")
    assert ENGINE == "typst"


def test_a_tenant_with_its_own_html_template_keeps_weasyprint_unless_it_names_an_engine(tmp_path: Path) -> None:
    for name, toml, html in [("plain", "", False), ("own-html", "", True), ("chosen", 'engine = "typst"\n', True)]:
        (tmp_path / name / "templates").mkdir(parents=True)
        (tmp_path / name / "tenant.toml").write_text(toml)
        if html:
            (tmp_path / name / "templates" / HTML_TEMPLATE).write_text("<p>{{ invoice.invoice_number }}</p>")
    tenants = TenantDirectory(tmp_path)
    engines = {name: tenants.get(name).engine for name in ("plain", "own-html", "chosen", "no-folder")}
    assert engines == {"plain": "typst", "own-html": "weasyprint", "chosen": "typst", "no-folder": "typst"}


@pytest.mark.parametrize("engine", ["weasyprint", "typst"])
def test_produce_uses_the_tenants_engine_and_embeds_the_xml(engine: str) -> None:
    invoice, tenant, limits = warm_up_job()
    produced = produce(invoice, tenant.model_copy(update={"engine": engine}), limits)

    assert produced.engine == engine and produced.pages == 1 and produced.xml is not None
    assert produced.pdf.startswith(b"%PDF-")
    name, xml = facturx.get_facturx_xml_from_pdf(produced.pdf, check_xsd=True)
    assert (name, xml) == ("factur-x.xml", produced.xml)
    reader = PdfReader(io.BytesIO(produced.pdf))
    assert "/StructTreeRoot" in reader.root_object  # tagged, both engines
    info = reader.metadata
    assert info is not None  # Typst signs as /Creator, WeasyPrint as /Producer (/Creator is factur-x's)
    drawn_by = info.creator if engine == "typst" else info.producer
    assert drawn_by is not None and drawn_by.lower().startswith(engine)
