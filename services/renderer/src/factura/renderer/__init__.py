"""Renderer: turns ``invoice.created`` into a PDF in S3 and announces it as ``invoice.rendered``."""
