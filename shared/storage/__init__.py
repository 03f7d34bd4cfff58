"""The object store package: the interface, its errors, and make_store() choosing an implementation."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from shared.storage.base import (
    CHUNK,
    InvalidKey,
    ObjectNotFound,
    ObjectStore,
    ObjectWriter,
    StorageError,
    check_key,
    check_prefix,
)
from shared.storage.local import LocalStore

if TYPE_CHECKING:
    from shared.settings import Settings
    from shared.storage.s3 import S3Store

__all__ = [
    "CHUNK",
    "InvalidKey",
    "LocalStore",
    "ObjectNotFound",
    "ObjectStore",
    "ObjectWriter",
    "S3Store",
    "StorageError",
    "check_key",
    "check_prefix",
    "make_store",
]


def __getattr__(name: str) -> Any:
    # boto3 takes a while to import: load it only when S3 is used
    if name == "S3Store":
        from shared.storage.s3 import S3Store

        return S3Store
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def make_store(settings: Settings) -> ObjectStore:
    """The store the settings describe. It does not connect: call check() to find out if it works."""
    if settings.storage == "s3":
        from shared.storage.s3 import S3Store

        return S3Store(
            bucket=settings.s3_bucket,
            prefix=settings.s3_prefix,
            endpoint_url=settings.s3_endpoint or None,
            region=settings.s3_region,
            access_key=settings.s3_access_key or None,
            secret_key=settings.s3_secret_key or None,
            acl=settings.s3_acl,
            create_bucket=settings.s3_create_bucket,
        )
    return LocalStore(settings.local_storage_dir)
