"""WeasyPrint URL fetcher that serves only the renderer's own packaged assets.

Invoice text comes from ERPs and is untrusted: even though templates autoescape it, the
document must never make WeasyPrint read a local file or reach the network (SSRF). So every
URL is refused except ``factura-asset:<name>``, read from this package's ``templates/`` folder.
"""

from __future__ import annotations

import mimetypes
from importlib.resources import files

from weasyprint.urls import URLFetcher, URLFetcherResponse

SCHEME = "factura-asset:"


class AssetFetcher(URLFetcher):  # type: ignore[misc]
    def __init__(self) -> None:
        super().__init__(allowed_protocols=())

    def fetch(self, url: str, headers: dict[str, str] | None = None) -> URLFetcherResponse:
        if not url.startswith(SCHEME):
            raise ValueError(f"fetch refused (not an allow-listed asset): {url[:100]}")
        name = url.removeprefix(SCHEME)
        if "/" in name or name.startswith("."):
            raise ValueError(f"fetch refused (bad asset name): {name[:100]}")
        body = files("factura.renderer").joinpath("templates", name).read_bytes()
        content_type = mimetypes.guess_type(name)[0] or "application/octet-stream"
        return URLFetcherResponse(url, body, {"Content-Type": content_type}, 200)
