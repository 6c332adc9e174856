"""The invoice document: localised, escaped, and unable to fetch anything not allow-listed."""

from __future__ import annotations

import pytest
from weasyprint.urls import URLFetcher

from factura.common.events import InvoiceCreatedV1, parse_event
from factura.common.schemas import EXAMPLES_DIR
from factura.common.tenants import TenantConfig
from factura.renderer.document import render_html, render_pdf
from factura.renderer.fetcher import AssetFetcher

DEFAULT = TenantConfig.default("acme")


def invoice() -> InvoiceCreatedV1:
    data = parse_event((EXAMPLES_DIR / "invoice.created.v1.json").read_bytes()).data
    assert isinstance(data, InvoiceCreatedV1)
    return data


def test_html_is_localised() -> None:
    html = render_html(invoice(), DEFAULT)
    assert "Factura F-2026-000123" in html and "286,55" in html and 'lang="es"' in html


def test_untrusted_text_is_rendered_literally() -> None:
    base = invoice()
    line = base.lines[0].model_copy(update={"description": '{{ 7*7 }} <img src="file:///etc/passwd">'})
    html = render_html(base.model_copy(update={"lines": [line]}), DEFAULT)
    assert "{{ 7*7 }}" in html and "49" not in html
    assert "<img" not in html and "&lt;img" in html


@pytest.mark.parametrize("url", ["file:///etc/passwd", "http://169.254.169.254/latest/meta-data", "factura-asset:../x"])
def test_fetcher_refuses_everything_but_assets(url: str) -> None:
    fetcher: URLFetcher = AssetFetcher()
    with pytest.raises(ValueError, match="refused"):
        fetcher.fetch(url)


def test_pdf_renders() -> None:
    pdf = render_pdf(invoice())
    assert pdf.startswith(b"%PDF-") and len(pdf) > 2000


def test_fonts_are_subset_by_harfbuzz_never_the_fonttools_fallback(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Without Debian's libharfbuzz-subset0 WeasyPrint silently takes a ~5x slower path."""
    from weasyprint.pdf.fonts import Font
    from weasyprint.text import ffi

    assert ffi.harfbuzz_subset is not None, "libharfbuzz-subset0 is not installed (scripts/system-deps.sh)"

    def fallback(*args: object, **kwargs: object) -> None:
        raise AssertionError("WeasyPrint fell back to fontTools for font subsetting")

    monkeypatch.setattr(Font, "_fonttools_subset", fallback)
    with caplog.at_level("WARNING", logger="weasyprint"):
        assert render_pdf(invoice()).startswith(b"%PDF-")
    assert not [r for r in caplog.records if "fontTools" in r.getMessage()]
