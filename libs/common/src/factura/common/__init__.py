"""Factura's shared foundations.

Everything that keeps six services one product lives here, once: the event envelope and
models (:mod:`.events`), the topic registry (:mod:`.topics`), the Kafka consumer loop and
publisher (:mod:`.kafka`), settings, logging, metrics, MongoDB access and the service runtime.
"""
