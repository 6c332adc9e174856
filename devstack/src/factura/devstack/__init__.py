"""Factura's local development stack: real servers on 127.0.0.1 for tests, ``make up`` and the demo.

Kept free of imports: the capture servers run as ``python -m factura.devstack.<module>`` and
should not pay for the launcher's dependencies. Use :mod:`factura.devstack.stack` for the API.
"""
