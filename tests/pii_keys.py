"""The tenant KEKs tests encrypt customers' contact data with: derived from the devstack's own
secret (``StackConfig.pii_secret``), because keys live in collections shared per tenant and
customer (``customer_keys``, ``tenant_lookup_keys``): what the end-to-end stack's services sealed
earlier in a session must unwrap in a later test, and the other way round."""

from __future__ import annotations

from pydantic import SecretStr
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase

from factura.common.delivery.suppression import SuppressionStore
from factura.common.mongo import Document
from factura.common.pii import COLLECTION, FieldCipher, field_cipher, pii_keystore
from factura.common.pii.lookup import COLLECTION as LOOKUP_KEYS
from factura.common.pii.lookup import LookupKeys
from factura.common.settings import PiiSettings
from factura.devstack.config import StackConfig

TEST_PII = PiiSettings(secret=SecretStr(StackConfig.pii_secret))


def pii_cipher(db: AsyncDatabase[Document]) -> FieldCipher:
    """The cipher over ``db``'s ``customer_keys`` with :data:`TEST_PII`'s KEKs."""
    return field_cipher(db[COLLECTION], TEST_PII)


def suppression_store(collection: AsyncCollection[Document]) -> SuppressionStore:
    """A suppression list on ``collection``, keyed and encrypted with :data:`TEST_PII`'s KEKs."""
    db = collection.database
    lookup = LookupKeys(db[LOOKUP_KEYS], pii_keystore(TEST_PII))
    return SuppressionStore(collection, lookup=lookup, cipher=pii_cipher(db))
