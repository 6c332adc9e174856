"""Personal data protection: customer fields encrypted under per-customer data keys, erasable by
destroying the key (crypto-shredding). See :mod:`factura.common.pii.fields` and
:mod:`factura.common.pii.keystore`; docs/audit.md, "Personal data and erasure"."""

from factura.common.pii.fields import (
    COLLECTION,
    CONTACT_FIELDS,
    ERASED,
    PREFIX,
    Erased,
    FieldCipher,
    Undecryptable,
    is_token,
)
from factura.common.pii.keystore import (
    FileKeyStore,
    KeyStore,
    KeyStoreError,
    KmsClient,
    KmsKeyStore,
    NoKeyStore,
    SecretKeyStore,
    Wrapped,
    new_kek_line,
)
from factura.common.pii.wiring import field_cipher, pii_keystore

__all__ = [
    "COLLECTION",
    "CONTACT_FIELDS",
    "ERASED",
    "PREFIX",
    "Erased",
    "FieldCipher",
    "FileKeyStore",
    "KeyStore",
    "KeyStoreError",
    "KmsClient",
    "KmsKeyStore",
    "NoKeyStore",
    "SecretKeyStore",
    "Undecryptable",
    "Wrapped",
    "field_cipher",
    "is_token",
    "new_kek_line",
    "pii_keystore",
]
