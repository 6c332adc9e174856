"""How every service builds its key store and field cipher from :class:`PiiSettings`, the same way:
audit, which encrypts contact data in its records, and the senders, in their delivery ledger. All
of them share the ``customer_keys`` collection, so they need the same KEKs (one erasure then
destroys a customer's contact data everywhere)."""

from __future__ import annotations

import logging

from pymongo.asynchronous.collection import AsyncCollection

from factura.common.mongo import Document
from factura.common.pii.fields import FieldCipher
from factura.common.pii.keystore import FileKeyStore, KeyStore, NoKeyStore, SecretKeyStore
from factura.common.settings import PiiSettings

log = logging.getLogger(__name__)


def pii_keystore(settings: PiiSettings, fallback_secret: bytes | None = None) -> KeyStore:
    """Tenant KEKs from ``keys_dir``; else derived from ``secret``, else from ``fallback_secret``
    (audit's: a key derived from its signing key), both for development only.

    With none of them, every encryption fails as an outage (:class:`~factura.common.pii.KeyStoreError`):
    deliveries pause rather than store contact data in the clear, while what needs no KEK (the
    index job, an erasure) still works.
    """
    if settings.keys_dir is not None:
        return FileKeyStore(settings.keys_dir)
    if settings.secret is not None:
        log.warning("pii.keys_dir unset: tenant KEKs are derived from pii.secret (development only)")
        return SecretKeyStore(settings.secret.get_secret_value().encode())
    if fallback_secret is not None:
        log.warning("pii.keys_dir unset: tenant KEKs are derived from a service key (development only)")
        return SecretKeyStore(fallback_secret)
    log.warning("pii.keys_dir unset: contact data cannot be encrypted, so nothing that holds it is stored")
    return NoKeyStore("pii.keys_dir is not set: no tenant KEK to encrypt contact data with")


def field_cipher(
    collection: AsyncCollection[Document], settings: PiiSettings, fallback_secret: bytes | None = None
) -> FieldCipher:
    """The cipher over ``collection`` (``customer_keys``) with :func:`pii_keystore`'s KEKs."""
    return FieldCipher(collection, pii_keystore(settings, fallback_secret), cache_ttl_s=settings.cache_ttl_s)
