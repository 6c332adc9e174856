"""Invoice documents in S3 (aioboto3): one key layout, sha256 in the object metadata.

One client is opened per process in the bootstrap and reused: building a botocore client per
call costs more than the upload of a small PDF.

Stored documents are immutable. Every rendered version of an invoice has its own folder, named
by a hash of its files (:func:`version_id`), so a key always names the same bytes; and
:meth:`DocumentStore.put` refuses to replace an existing object (``If-None-Match: *``). A link
signed for one version therefore keeps serving exactly those bytes after the invoice is re-sent.

S3 errors that mean "the store is down, slow or throttling" (connection and timeout errors, 5xx,
``SlowDown``) are raised as :class:`~factura.common.errors.DependencyDown` so the consumer loop
pauses and retries; errors about the request itself (4xx) stay botocore ``ClientError``.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from collections.abc import Iterable, Iterator
from contextlib import AsyncExitStack, contextmanager
from datetime import date
from typing import Any

import aioboto3
import botocore.exceptions
from aiobotocore.config import AioConfig
from botocore.exceptions import ClientError

from factura.common.errors import DependencyDown
from factura.common.settings import S3Settings

RETENTION_TAG = "retention-days"
#: What S3 (and compatible stores) answer for an absent object, by API: GET says NoSuchKey, HEAD 404.
MISSING_CODES = frozenset({"NoSuchKey", "404"})
#: What S3 answers a conditional write (``If-None-Match: *``) when the key already exists.
EXISTS_CODES = frozenset({"PreconditionFailed", "412"})
#: Error codes that say "try again later" although some come with a 4xx status: throttling,
#: a socket S3 gave up on (``RequestTimeout``), a conditional write racing another one.
TRANSIENT_CODES = frozenset(
    {
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "RequestThrottled",
        "TooManyRequests",
        "RequestLimitExceeded",
        "RequestTimeout",
        "ServiceUnavailable",
        "InternalError",
        "ConditionalRequestConflict",
    }
)
#: Characters of the sha256 that name a version: 64 bits, enough to keep one invoice's versions apart.
VERSION_CHARS = 16
#: Bounded waits, so a hung store becomes a retried outage, not a handler stuck past its deadline.
CLIENT_CONFIG = AioConfig(connect_timeout=5, read_timeout=20, retries={"mode": "standard", "total_max_attempts": 3})


def s3_session(settings: S3Settings) -> aioboto3.Session:
    """A session with the configured keys, or, without keys, AWS's default credential chain.

    The chain (environment, web identity / IRSA, ECS or instance profile) is what production
    uses; ``None`` keys make the session fall back to it (S3Settings sets both keys or neither).
    """
    secret = settings.secret_access_key
    return aioboto3.Session(
        aws_access_key_id=settings.access_key_id,
        aws_secret_access_key=secret.get_secret_value() if secret is not None else None,
        region_name=settings.region,
    )


def error_code(error: ClientError) -> str:
    """The S3 error code of a botocore error ("NoSuchKey", "404", "SlowDown", ...)."""
    return str(error.response.get("Error", {}).get("Code", ""))


def is_outage(error: ClientError) -> bool:
    """True for an S3 answer that means "unavailable now" (5xx, 429, throttling), not "bad request"."""
    status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    code = error_code(error)
    return (
        code in TRANSIENT_CODES
        or (code.isdigit() and int(code) >= 500)
        or (isinstance(status, int) and (status >= 500 or status == 429))
    )


@contextmanager
def outages(operation: str) -> Iterator[None]:
    """Turn "S3 is down/slow/throttling" into :class:`DependencyDown`; leave client errors as they are."""
    try:
        yield
    except ClientError as e:
        if is_outage(e):
            raise DependencyDown("s3", f"{operation}: {error_code(e) or 'server error'}") from e
        raise
    except (botocore.exceptions.HTTPClientError, botocore.exceptions.ConnectionError, OSError) as e:
        # connection refused or reset, timeouts (TimeoutError is an OSError), a body cut short
        raise DependencyDown("s3", f"{operation}: {type(e).__name__}") from e


def safe_name(invoice_number: str) -> str:
    """An invoice number as a file name (S3 key segment, attachment name)."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", invoice_number)


def invoice_prefix(tenant_id: str, issued: date, invoice_number: str) -> str:
    """``<tenant>/<yyyy>/<mm>/<invoice>/``: lists and lifecycle rules work per tenant, month and invoice."""
    return f"{tenant_id}/{issued:%Y}/{issued:%m}/{safe_name(invoice_number)}/"


def version_id(files: Iterable[tuple[str, str]]) -> str:
    """The name of one rendered version: a hash over its files' ``(suffix, sha256)`` pairs.

    Two renders with any byte of difference get different versions; the same files always get
    the same one, so a key under a version folder can only ever hold one content.
    """
    listing = "\n".join(f"{suffix} {sha256}" for suffix, sha256 in sorted(files))
    return hashlib.sha256(listing.encode()).hexdigest()[:VERSION_CHARS]


def document_key(tenant_id: str, issued: date, invoice_number: str, suffix: str = "pdf", *, version: str) -> str:
    """``<tenant>/<yyyy>/<mm>/<invoice>/<version>/<invoice>.<suffix>``.

    The file keeps the invoice's name, so a signed link needs no separate file name (shorter SMS).
    """
    return f"{invoice_prefix(tenant_id, issued, invoice_number)}{version}/{safe_name(invoice_number)}.{suffix}"


def manifest_key(tenant_id: str, issued: date, invoice_number: str, event_id: uuid.UUID) -> str:
    """``<tenant>/<yyyy>/<mm>/<invoice>/<event id>.rendered.json``: the record of one ``invoice.created``."""
    return f"{invoice_prefix(tenant_id, issued, invoice_number)}{event_id}.rendered.json"


class ObjectExists(Exception):
    """A write without ``replace`` found an object at its key, and left that object as it was."""

    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


class DocumentStore:
    def __init__(self, client: Any, bucket: str) -> None:
        self._s3 = client
        self.bucket = bucket

    @classmethod
    async def connect(cls, settings: S3Settings, stack: AsyncExitStack) -> DocumentStore:
        client = await stack.enter_async_context(
            s3_session(settings).client("s3", endpoint_url=settings.endpoint_url, config=CLIENT_CONFIG)
        )
        return cls(client, settings.bucket)

    async def ensure_bucket(self) -> None:
        with outages("head_bucket"):
            try:
                await self._s3.head_bucket(Bucket=self.bucket)
                return
            except ClientError as e:
                if is_outage(e):
                    raise
        with outages("create_bucket"):
            try:
                await self._s3.create_bucket(Bucket=self.bucket)
            except ClientError as e:  # another service created it first
                if error_code(e) not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                    raise

    async def ping(self) -> None:
        with outages("head_bucket"):
            await self._s3.head_bucket(Bucket=self.bucket)

    async def put(
        self,
        key: str,
        body: bytes,
        *,
        content_type: str,
        sha256: str,
        metadata: dict[str, str],
        retention_days: int | None = None,
        replace: bool = False,
    ) -> None:
        """Store an object; :class:`ObjectExists` if one is already at ``key``.

        Without ``replace`` the write is conditional (``If-None-Match: *``), so S3 itself refuses
        to overwrite a document. ``retention_days`` tags the object for the matching lifecycle
        (expiry) rule.
        """
        extra: dict[str, str] = {"Tagging": f"{RETENTION_TAG}={retention_days}"} if retention_days else {}
        if not replace:
            extra["IfNoneMatch"] = "*"
        with outages("put_object"):
            try:
                await self._s3.put_object(
                    Bucket=self.bucket,
                    Key=key,
                    Body=body,
                    ContentType=content_type,
                    Metadata={"sha256": sha256, **metadata},
                    **extra,
                )
            except ClientError as e:
                if not replace and error_code(e) in EXISTS_CODES:
                    raise ObjectExists(key) from e
                raise

    async def ensure_retention_rules(self, retention_days: set[int]) -> None:
        """One expiry rule per retention period in use, matching objects by their retention tag.

        Tag-based rules let each tenant keep its own period in one bucket, and a tenant that
        changes its period only affects documents stored after the change. Existing rules are kept
        (others' rules, and periods another renderer still uses): the result is the union.
        """
        try:
            existing = await self.lifecycle_rules()
        except ClientError as e:
            if error_code(e) != "NoSuchLifecycleConfiguration":
                raise
            existing = []
        ids = {rule.get("ID") for rule in existing}
        rules = existing + [
            {
                "ID": f"expire-after-{days}-days",
                "Filter": {"Tag": {"Key": RETENTION_TAG, "Value": str(days)}},
                "Status": "Enabled",
                "Expiration": {"Days": days},
            }
            for days in sorted(retention_days)
            if f"expire-after-{days}-days" not in ids
        ]
        if len(rules) == len(existing):
            return
        with outages("put_bucket_lifecycle_configuration"):
            await self._s3.put_bucket_lifecycle_configuration(
                Bucket=self.bucket, LifecycleConfiguration={"Rules": rules}
            )

    async def lifecycle_rules(self) -> list[dict[str, Any]]:
        with outages("get_bucket_lifecycle_configuration"):
            response = await self._s3.get_bucket_lifecycle_configuration(Bucket=self.bucket)
        rules: list[dict[str, Any]] = response["Rules"]
        return rules

    async def tags(self, key: str) -> dict[str, str]:
        with outages("get_object_tagging"):
            response = await self._s3.get_object_tagging(Bucket=self.bucket, Key=key)
        return {t["Key"]: t["Value"] for t in response["TagSet"]}

    async def size(self, key: str) -> int:
        with outages("head_object"):
            response = await self._s3.head_object(Bucket=self.bucket, Key=key)
        length: int = response["ContentLength"]
        return length

    async def stored_sha256(self, key: str) -> str | None:
        """The sha256 recorded in an object's metadata when it was stored (``None`` if absent)."""
        with outages("head_object"):
            response = await self._s3.head_object(Bucket=self.bucket, Key=key)
        sha: str | None = response.get("Metadata", {}).get("sha256")
        return sha

    async def get_if_exists(self, key: str) -> bytes | None:
        try:
            return await self.get(key)
        except ClientError as e:
            if error_code(e) in MISSING_CODES:
                return None
            raise

    async def get(self, key: str, bucket: str | None = None) -> bytes:
        with outages("get_object"):
            response = await self._s3.get_object(Bucket=bucket or self.bucket, Key=key)
            async with response["Body"] as stream:
                data: bytes = await stream.read()
                return data
