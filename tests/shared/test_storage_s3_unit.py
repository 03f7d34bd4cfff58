"""S3Store details the real-server contract cannot show (canned ACLs, AWS regions), on moto; and make_store."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from moto import mock_aws

from shared.settings import Settings
from shared.storage import LocalStore, StorageError, make_store
from shared.storage.s3 import S3Store, content_disposition

ALL_USERS = "http://acs.amazonaws.com/groups/global/AllUsers"


@pytest.fixture
def aws() -> Iterator[None]:
    with mock_aws():
        yield


def public_read(store: S3Store, key: str) -> bool:
    grants = store.client.get_object_acl(Bucket=store.bucket, Key=f"{store.prefix}/{key}")["Grants"]
    return any(g["Grantee"].get("URI") == ALL_USERS and g["Permission"] == "READ" for g in grants)


def test_acl_is_set_on_every_kind_of_upload(aws: None, tmp_path: Path) -> None:
    store = S3Store(
        "farm", prefix="tasks", region="eu-west-1", access_key="k", secret_key="s", acl="public-read"
    )
    store_without_acl = S3Store("farm", prefix="tasks", region="eu-west-1", access_key="k", secret_key="s")
    store.create_bucket = True
    store.check()  # creates the bucket, in its region

    store.put_bytes("u/small", b"x")
    with store.writer("u/multipart") as writer:
        writer.write(os.urandom(9 * 1024 * 1024))
    source = tmp_path / "file"
    source.write_bytes(os.urandom(9 * 1024 * 1024))
    store.put_file("u/file", source)
    store_without_acl.put_bytes("u/private", b"x")

    assert all(public_read(store, key) for key in ("u/small", "u/multipart", "u/file"))
    assert not public_read(store, "u/private")
    location = store.client.get_bucket_location(Bucket="farm")["LocationConstraint"]
    assert location == "eu-west-1"


def test_credentials_come_from_the_environment_when_not_given(aws: None) -> None:
    store = S3Store("farm", create_bucket=True)  # mock_aws puts fake AWS_* credentials in the environment
    store.check()
    store.put_bytes("a", b"x")
    assert store.get_bytes("a") == b"x"


def test_half_given_credentials_are_refused() -> None:
    with pytest.raises(StorageError, match="together"):
        S3Store("farm", access_key="only-the-key")


def test_content_disposition() -> None:
    assert content_disposition("all.zip") == 'attachment; filename="all.zip"'
    assert content_disposition('a "b".zip') == (
        "attachment; filename=\"a _b_.zip\"; filename*=UTF-8''a%20%22b%22.zip"
    )
    assert (
        content_disposition("été.tif")
        == "attachment; filename=\"_t_.tif\"; filename*=UTF-8''%C3%A9t%C3%A9.tif"
    )


def test_make_store_local(tmp_path: Path) -> None:
    store = make_store(Settings(data_dir=tmp_path))
    assert isinstance(store, LocalStore)
    assert store.root == (tmp_path / "storage").resolve()
    assert not store.root.exists()  # nothing happens before check()
    store.check()
    assert store.root.is_dir()


def test_make_store_s3_does_not_connect() -> None:
    settings = Settings.from_env(
        {
            "ODM_FARM_STORAGE": "s3",
            "ODM_FARM_S3_ENDPOINT": "http://127.0.0.1:9",  # nothing listens there
            "ODM_FARM_S3_BUCKET": "results",
            "ODM_FARM_S3_PREFIX": "farm1",
            "ODM_FARM_S3_ACCESS_KEY": "key",
            "ODM_FARM_S3_SECRET_KEY": "secret-value",
            "ODM_FARM_S3_ACL": "private",
            "ODM_FARM_S3_CREATE_BUCKET": "true",
        }
    )
    store = make_store(settings)
    assert isinstance(store, S3Store)
    assert (store.bucket, store.prefix, store.endpoint_url, store.acl, store.create_bucket) == (
        "results",
        "farm1",
        "http://127.0.0.1:9",
        "private",
        True,
    )
    assert "secret-value" not in repr(store)
