"""The compliance page served by the audit service under ``/ui/`` (see :mod:`.pages`).

``static/htmx.min.js`` is htmx 2.0.4, vendored unmodified from the npm package ``htmx.org@2.0.4``
(``dist/htmx.min.js``; Zero-Clause BSD, ``static/htmx.LICENSE.txt``): no build step, no CDN.
"""

from factura.audit.web.pages import router

__all__ = ["router"]
