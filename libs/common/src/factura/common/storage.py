"""Invoice documents in S3 (aioboto3): one key layout, sha256 in the object metadata.

One client is opened per process in the bootstrap and reused: building a botocore client per
call costs more than the upload of a small PDF.
"""

from __future__ import annotations

import re
from contextlib import AsyncExitStack
from datetime import date
from typing import Any

import aioboto3
from botocore.exceptions import ClientError

from factura.common.settings import S3Settings

RETENTION_TAG = "retention-days"
#: What S3 (and compatible stores) answer for an absent object, by API: GET says NoSuchKey, HEAD 404.
MISSING_CODES = frozenset({"NoSuchKey", "404"})


def error_code(error: ClientError) -> str:
    """The S3 error code of a botocore error ("NoSuchKey", "404", "SlowDown", ...)."""
    return str(error.response.get("Error", {}).get("Code", ""))


def safe_name(invoice_number: str) -> str:
    """An invoice number as a file name (S3 key segment, attachment name)."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", invoice_number)


def document_key(tenant_id: str, issued: date, invoice_number: str, suffix: str = "pdf") -> str:
    """``<tenant>/<yyyy>/<mm>/<invoice>.<suffix>``: lists and lifecycle rules work per tenant and month."""
    return f"{tenant_id}/{issued:%Y}/{issued:%m}/{safe_name(invoice_number)}.{suffix}"


class DocumentStore:
    def __init__(self, client: Any, bucket: str) -> None:
        self._s3 = client
        self.bucket = bucket

    @classmethod
    async def connect(cls, settings: S3Settings, stack: AsyncExitStack) -> DocumentStore:
        session = aioboto3.Session(
            aws_access_key_id=settings.access_key_id,
            aws_secret_access_key=settings.secret_access_key.get_secret_value(),
            region_name=settings.region,
        )
        client = await stack.enter_async_context(session.client("s3", endpoint_url=settings.endpoint_url))
        return cls(client, settings.bucket)

    async def ensure_bucket(self) -> None:
        try:
            await self._s3.head_bucket(Bucket=self.bucket)
        except ClientError:
            try:
                await self._s3.create_bucket(Bucket=self.bucket)
            except ClientError as e:  # another service created it first
                if error_code(e) not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                    raise

    async def ping(self) -> None:
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
    ) -> None:
        """Store a document; ``retention_days`` tags it for the matching lifecycle (expiry) rule."""
        extra = {"Tagging": f"{RETENTION_TAG}={retention_days}"} if retention_days else {}
        await self._s3.put_object(
            Bucket=self.bucket,
            Key=key,
            Body=body,
            ContentType=content_type,
            Metadata={"sha256": sha256, **metadata},
            **extra,
        )

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
        await self._s3.put_bucket_lifecycle_configuration(Bucket=self.bucket, LifecycleConfiguration={"Rules": rules})

    async def lifecycle_rules(self) -> list[dict[str, Any]]:
        response = await self._s3.get_bucket_lifecycle_configuration(Bucket=self.bucket)
        rules: list[dict[str, Any]] = response["Rules"]
        return rules

    async def tags(self, key: str) -> dict[str, str]:
        response = await self._s3.get_object_tagging(Bucket=self.bucket, Key=key)
        return {t["Key"]: t["Value"] for t in response["TagSet"]}

    async def size(self, key: str) -> int:
        response = await self._s3.head_object(Bucket=self.bucket, Key=key)
        length: int = response["ContentLength"]
        return length

    async def get_if_exists(self, key: str) -> bytes | None:
        try:
            return await self.get(key)
        except ClientError as e:
            if error_code(e) in MISSING_CODES:
                return None
            raise

    async def get(self, key: str, bucket: str | None = None) -> bytes:
        response = await self._s3.get_object(Bucket=bucket or self.bucket, Key=key)
        async with response["Body"] as stream:
            data: bytes = await stream.read()
            return data
