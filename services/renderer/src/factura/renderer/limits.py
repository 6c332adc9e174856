"""Input limits checked before any layout work (cheap), and the page limit checked after layout."""

from __future__ import annotations

from factura.common.events import FieldError, InvoiceCreatedV1
from factura.renderer.settings import RenderLimits


class DocumentRejected(Exception):
    """The invoice cannot become a document; the reasons go into ``invoice.rejected``."""

    def __init__(self, reasons: list[FieldError]) -> None:
        super().__init__(reasons)  # the only arg, so the exception pickles across the worker pool
        self.reasons = reasons

    def __str__(self) -> str:
        return "; ".join(f"{r.field}: {r.message}" for r in self.reasons)


def check_input(invoice: InvoiceCreatedV1, limits: RenderLimits) -> None:
    reasons = []
    if len(invoice.lines) > limits.max_lines:
        reasons.append(
            FieldError(field="lines", message=f"{len(invoice.lines)} lines; the limit is {limits.max_lines}")
        )
    sizes = {f"lines.{i}.description": len(line.description.encode()) for i, line in enumerate(invoice.lines)}
    sizes |= {"customer.name": len(invoice.customer.name.encode()), "seller_name": len(invoice.seller_name.encode())}
    text = sum(sizes.values())
    if text > limits.max_text_bytes:
        largest = max(sizes, key=lambda name: sizes[name])
        message = f"{text} bytes of text, the largest {sizes[largest]} here; the limit is {limits.max_text_bytes}"
        reasons.append(FieldError(field=largest, message=message))
    if reasons:
        raise DocumentRejected(reasons)


def check_pages(pages: int, limits: RenderLimits) -> None:
    if pages > limits.max_pages:
        raise DocumentRejected(
            [
                FieldError(
                    field="lines", message=f"the document would have {pages} pages; the limit is {limits.max_pages}"
                )
            ]
        )
