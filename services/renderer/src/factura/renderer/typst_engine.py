"""The Typst engine: the invoice view model → one Typst compile → PDF (PDF/A-3b + PDF/UA-1, tagged).

Why Typst: it lays out and writes a one-page Factur-X invoice in about a sixth of WeasyPrint's
time, three pages in a ninth (docs/documents.md, "Choosing an engine"), and tags it (PDF/UA-1).
It renders from the same view model as the HTML template (:func:`factura.renderer.document.context`),
so a tenant switches engine without touching data.

Safety, the same ideas as the WeasyPrint fetcher:

* ERP text reaches Typst only as data: the view model is JSON in ``sys.inputs.data``, which the
  template reads with ``json(bytes(...))``. Strings are printed as text, never parsed as markup.
* Files: each compile's project root is a private folder holding the template and copies of the
  tenant's allow-listed assets (images, fonts: :data:`~factura.renderer.fetcher.TENANT_TYPES`),
  never its config or secrets. Typst refuses paths outside the root; copies, not symlinks,
  because Typst follows symlinks.
* Network: Typst's only network access is downloading ``@preview`` packages. The package folders
  point at an empty private directory, and each compile runs with the HTTPS proxy set to a
  closed loopback port, so an import of a package fails instead of fetching it.

PDF/A: Typst writes PDF/A-3b (with ``factur-x.xml`` attached as the ``/Alternative``
representation and the catalog ``/AF``) but no custom XMP, so a post-pass adds the Factur-X
extension schema and properties to Typst's own XMP, appended as an incremental update.
"""

from __future__ import annotations

import io
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING, Final

import pikepdf
import typst
from lxml import etree
from pydantic_core import to_json

from factura.common.events import InvoiceCreatedV1
from factura.common.tenants import TenantConfig
from factura.renderer.document import context
from factura.renderer.einvoice import FACTURX_FILENAME, facturx_xmp
from factura.renderer.fetcher import NAME, TENANT_TYPES

if TYPE_CHECKING:
    from typst import PDFStandard  # declared in the binding's stubs only

__all__ = ["TEMPLATE", "TypstTemplateError", "render_typst", "view_model"]

#: The template a tenant overrides by putting a file of this name in its ``templates/`` folder.
TEMPLATE: Final = "invoice.typ"
#: The standards of a Factur-X document, and of any other: accessible (tagged, PDF/UA-1) either way.
EINVOICE_STANDARDS: Final[list[PDFStandard]] = ["a-3b", "ua-1"]
PLAIN_STANDARDS: Final[list[PDFStandard]] = ["ua-1"]
#: The engine's own main file: document metadata and the e-invoice attachment, so no template
#: (built-in or a tenant's) can forget them; then the template itself.
MAIN: Final = f"""#let d = json(bytes(sys.inputs.data))
#set document(title: d.t.invoice + " " + d.invoice.invoice_number, author: d.seller_name)
#set text(lang: d.locale)
#include "{TEMPLATE}"
#if "xml" in sys.inputs {{
  pdf.attach("{FACTURX_FILENAME}", bytes(sys.inputs.xml), relationship: "alternative",
    mime-type: "text/xml", description: "Factur-X EN 16931 invoice")
}}
""".encode()
#: Where a package download would go: nowhere (a closed port on loopback).
NO_PROXY_TARGET: Final = "http://127.0.0.1:9"
_PROXY_VARS: Final = ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")
_NO_PROXY_VARS: Final = ("NO_PROXY", "no_proxy")
_RDF: Final = "http://www.w3.org/1999/02/22-rdf-syntax-ns#"
_PDFA_EXTENSION: Final = "http://www.aiim.org/pdfa/ns/extension/"
_PDFA_SCHEMA: Final = "http://www.aiim.org/pdfa/ns/schema#"
_FX: Final = "urn:factur-x:pdfa:CrossIndustryDocument:invoice:1p0#"


class TypstTemplateError(ValueError):
    """The Typst template did not compile (a template bug, or a forbidden package or file).

    Not the invoice's fault, so not a rejection: like a broken HTML template, the consumer loop
    retries, then dead-letters the invoice, to be replayed once the tenant's template is fixed.
    """


def view_model(invoice: InvoiceCreatedV1, tenant: TenantConfig) -> bytes:
    """The template's data: the Jinja context (the same view model as WeasyPrint's) as JSON.

    Models become objects, Decimals and dates strings, the fiscal QR code its SVG text (which
    the template draws with ``image(bytes(d.qr), format: "svg")``).
    """
    return to_json(context(invoice, tenant))


def render_typst(invoice: InvoiceCreatedV1, tenant: TenantConfig, xml: bytes | None) -> tuple[bytes, int]:
    """PDF bytes and page count. ``xml`` not None: PDF/A-3b (and PDF/UA-1) with ``factur-x.xml``
    embedded as the ``/AFRelationship /Alternative`` attachment and the Factur-X XMP; ``xml`` None:
    a tagged PDF/UA-1. The caller checks the page count against its limit.

    Raises :class:`TypstTemplateError` when the template does not compile.
    """
    inputs = {"data": view_model(invoice, tenant).decode()}
    if xml is not None:
        inputs["xml"] = xml.decode()
    try:
        with _offline():
            pdf = _compiler().compile(
                input=MAIN,
                root=_project(tenant.directory, tenant.version).name,
                sys_inputs=inputs,
                pdf_standards=EINVOICE_STANDARDS if xml is not None else PLAIN_STANDARDS,
            )
    except typst.TypstError as e:
        raise TypstTemplateError(f"the Typst template failed: {e.message}") from e
    assert isinstance(pdf, bytes)  # one output, no ``output`` path: bytes
    with pikepdf.open(io.BytesIO(pdf)) as document:
        pages = len(document.pages)
        if xml is None:
            return pdf, pages
        return _with_metadata(pdf, document, _facturx_xmp(document, xml)), pages


def _facturx_xmp(document: pikepdf.Pdf, xml: bytes) -> bytes:
    """Typst's XMP plus factur-x's ``fx:`` extension schema and properties (from ``facturx_xmp``).

    Typst's packet stays (``pdfaid``, ``pdfuaid``, title and dates that agree with the info
    dictionary, as PDF/A wants); only what Factur-X adds is taken from factur-x's packet.
    """
    ours = etree.fromstring(bytes(document.Root.Metadata.read_bytes()))
    theirs = etree.fromstring(facturx_xmp(xml))
    ns = {"rdf": _RDF, "pdfaExtension": _PDFA_EXTENSION, "pdfaSchema": _PDFA_SCHEMA, "fx": _FX}
    schema = theirs.xpath("//rdf:li[pdfaSchema:namespaceURI = $fx]", namespaces=ns, fx=_FX)[0]
    properties = theirs.xpath("//rdf:Description[fx:*]", namespaces=ns)[0]
    properties.set(f"{{{_RDF}}}about", "")
    ours.xpath("//pdfaExtension:schemas/rdf:Bag", namespaces=ns)[0].append(schema)
    ours.xpath("/*/rdf:RDF", namespaces=ns)[0].append(properties)
    body = etree.tostring(ours, encoding="utf-8").decode()
    return f'<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>{body}<?xpacket end="w"?>'.encode()


def _with_metadata(pdf: bytes, document: pikepdf.Pdf, packet: bytes) -> bytes:
    """``pdf`` with its XMP stream replaced by ``packet``, as an incremental update (ISO 32000-1 7.5.6).

    Why not ``pikepdf.save``: rewriting every object of a tagged PDF costs 4 ms for one page and
    14 ms for three, more than Typst's whole compile; appending one object and its cross-reference
    section costs microseconds. The new stream keeps the old object number, so the catalog is
    unchanged; PDF/A-3 allows incremental updates (a PAdES signature is one too). Unfiltered,
    as PDF/A asks of metadata streams. The caller's tests open the result with qpdf and check it.
    """
    number, generation = document.Root.Metadata.objgen
    previous = int(pdf[pdf.rindex(b"startxref") + len(b"startxref") :].split()[0])
    body = pdf if pdf.endswith(b"\n") else pdf + b"\n"
    stream = b"%d %d obj\n<</Type/Metadata/Subtype/XML/Length %d>>\nstream\n%s\nendstream\nendobj\n" % (
        number, generation, len(packet), packet,
    )  # fmt: skip
    trailer = pikepdf.Dictionary(dict(document.trailer.items()))
    trailer.Prev = previous
    xref = b"xref\n0 1\n0000000000 65535 f \n%d 1\n%010d %05d n \n" % (number, len(body), generation)
    end = b"trailer\n%s\nstartxref\n%d\n%%%%EOF\n" % (trailer.unparse(resolved=False), len(body) + len(stream))
    return body + stream + xref + end


@cache
def _compiler() -> typst.Compiler:
    """One compiler per worker process: the font search (and Typst's caches) are paid once.

    The fonts are the system's, found through fontconfig's folders as WeasyPrint finds them
    (DejaVu here), so a tenant's ``font_family`` names the same font in both engines.
    """
    packages = _empty()
    return typst.Compiler(
        font_paths=typst.Fonts(include_system_fonts=True), package_path=packages.name, package_cache_path=packages.name
    )


@cache
def _empty() -> tempfile.TemporaryDirectory[str]:
    """An empty folder for Typst's packages: none installed, none cached, none downloaded."""
    return tempfile.TemporaryDirectory(prefix="factura-typst-packages-")


@cache
def _project(directory: Path | None, version: str) -> tempfile.TemporaryDirectory[str]:
    """The project root for a tenant's config ``version``: the template and the allow-listed assets.

    Built once per worker and version (a changed folder is a new version) and removed when the
    worker exits. The tenant's
    ``templates/*.typ`` win over the built-in ``invoice.typ``, as the Jinja loader lets its
    ``templates/*.j2`` win.
    """
    folder = tempfile.TemporaryDirectory(prefix="factura-typst-")
    root = Path(folder.name)
    (root / TEMPLATE).write_bytes(files("factura.renderer").joinpath("templates", TEMPLATE).read_bytes())
    if directory is None:
        return folder
    for path in directory.iterdir():
        if path.is_file() and NAME.match(path.name) and path.name.lower().endswith(TENANT_TYPES):
            shutil.copyfile(path, root / path.name)
    for path in (directory / "templates").glob("*.typ"):
        if NAME.match(path.name):
            shutil.copyfile(path, root / path.name)
    return folder


@contextmanager
def _offline() -> Iterator[None]:
    """Point Typst's package downloader at a closed port for the duration of a compile.

    The binding offers no switch to turn downloads off and reads the proxy from the environment
    when it downloads; the render workers run one compile at a time, so the change is confined
    to that call and restored after it.
    """
    saved = {name: os.environ.get(name) for name in (*_PROXY_VARS, *_NO_PROXY_VARS)}
    os.environ.update(dict.fromkeys(_PROXY_VARS, NO_PROXY_TARGET))
    for name in _NO_PROXY_VARS:
        os.environ.pop(name, None)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
