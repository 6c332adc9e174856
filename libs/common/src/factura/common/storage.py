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


def document_key(tenant_id: str, issued: date, invoice_number: str, suffix: str = "pdf") -> str:
    """``<tenant>/<yyyy>/<mm>/<invoice>.pdf``: lists and lifecycle rules work per tenant and month."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", invoice_number)
    return f"{tenant_id}/{issued:%Y}/{issued:%m}/{safe}.{suffix}"


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
                if e.response.get("Error", {}).get("Code") not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                    raise

    async def ping(self) -> None:
        await self._s3.head_bucket(Bucket=self.bucket)

    async def put_pdf(self, key: str, body: bytes, sha256: str, metadata: dict[str, str]) -> None:
        await self._s3.put_object(
            Bucket=self.bucket,
            Key=key,
            Body=body,
            ContentType="application/pdf",
            Metadata={"sha256": sha256, **metadata},
        )

    async def get(self, key: str) -> bytes:
        response = await self._s3.get_object(Bucket=self.bucket, Key=key)
        async with response["Body"] as stream:
            data: bytes = await stream.read()
            return data

    async def presigned_url(self, key: str, expires_s: int) -> str:
        url: str = await self._s3.generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": key}, ExpiresIn=expires_s
        )
        return url
