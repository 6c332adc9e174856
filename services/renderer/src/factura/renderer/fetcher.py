"""WeasyPrint URL fetcher that serves only allow-listed assets.

Invoice text comes from ERPs and is untrusted: even though templates autoescape it, the
document must never make WeasyPrint read a local file or reach the network (SSRF). So every
URL is refused except two schemes the templates use:

* ``factura-asset:<name>``: a file shipped in this package's ``templates/`` folder;
* ``tenant-asset:<name>``: a file in the tenant's config folder (its logo).
"""

from __future__ import annotations

import mimetypes
import re
from importlib.resources import files
from pathlib import Path

from weasyprint.urls import URLFetcher, URLFetcherResponse

PACKAGE = "factura-asset:"
TENANT = "tenant-asset:"
NAME = re.compile(r"^[A-Za-z0-9_-]+\.[A-Za-z0-9]{1,5}$")
#: What a tenant folder may serve to a document: images, styles and fonts, never its config.
TENANT_TYPES = (".png", ".svg", ".jpg", ".jpeg", ".css", ".woff", ".woff2", ".ttf", ".otf")


class FetchRefused(ValueError):
    pass


class AssetFetcher(URLFetcher):  # type: ignore[misc]
    def __init__(self, tenant_dir: Path | None = None) -> None:
        super().__init__(allowed_protocols=())
        self._tenant_dir = tenant_dir

    def fetch(self, url: str, headers: dict[str, str] | None = None) -> URLFetcherResponse:
        if url.startswith(PACKAGE):
            name = self._name(url.removeprefix(PACKAGE))
            body = files("factura.renderer").joinpath("templates", name).read_bytes()
        elif url.startswith(TENANT) and self._tenant_dir is not None:
            name = self._name(url.removeprefix(TENANT))
            if not name.lower().endswith(TENANT_TYPES):
                raise FetchRefused(f"fetch refused (not an asset type): {name[:100]}")
            body = (self._tenant_dir / name).read_bytes()
        else:
            raise FetchRefused(f"fetch refused (not an allow-listed asset): {url[:100]}")
        content_type = mimetypes.guess_type(name)[0] or "application/octet-stream"
        return URLFetcherResponse(url, body, {"Content-Type": content_type}, 200)

    @staticmethod
    def _name(name: str) -> str:
        if not NAME.match(name):
            raise FetchRefused(f"fetch refused (bad asset name): {name[:100]}")
        return name
