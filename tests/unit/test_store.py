"""The local S3 stand-in: URI mapping, prefix semantics, atomic writes, links and the lock."""

from __future__ import annotations

import pytest

from pipeline.local.store import Store, StoreError, parse_s3_uri


def test_uri_maps_to_bucket_and_key_and_back(tmp_path):
    store = Store(tmp_path)
    path = store.path("s3://my-bucket/a/b/model.tar.gz")
    assert path == tmp_path.resolve() / "my-bucket" / "a" / "b" / "model.tar.gz"
    assert store.uri(path) == "s3://my-bucket/a/b/model.tar.gz"
    assert store.path("s3://my-bucket") == tmp_path.resolve() / "my-bucket"
    assert parse_s3_uri("s3://b//x///y/") == ("b", "x/y")


@pytest.mark.parametrize("uri", ["/local/path", "s3://", "s3:///key", "s3://b/../escape", "s3://_registry/x", 42])
def test_bad_uris_are_refused(tmp_path, uri):
    with pytest.raises(StoreError):
        Store(tmp_path).path(uri)


def test_prefix_listing_follows_s3(tmp_path):
    store = Store(tmp_path)
    store.put_bytes("s3://b/models/job-1/output/model.tar.gz", b"m1")
    store.put_bytes("s3://b/models/job-12/output/model.tar.gz", b"m12")
    store.put_bytes("s3://b/models/other/x", b"x")
    assert [k for k, _ in store.objects("s3://b/models/job-1")] == ["output/model.tar.gz"]
    assert [k for k, _ in store.objects("s3://b/models/job-1/output/model.tar.gz")] == ["model.tar.gz"]
    # a prefix ending mid-name matches every key that starts with it, as in S3
    assert [k for k, _ in store.objects("s3://b/models/job")] == [
        "job-1/output/model.tar.gz",
        "job-12/output/model.tar.gz",
    ]
    assert store.objects("s3://b/nothing") == []
    assert not store.exists("s3://b/nothing")


def test_download_copies_every_object_and_refuses_missing(tmp_path):
    store = Store(tmp_path / "store")
    store.put_bytes("s3://b/data/cat/1.png", b"one")
    store.put_bytes("s3://b/data/dog/2.png", b"two")
    assert store.download("s3://b/data", tmp_path / "in") == 2
    assert (tmp_path / "in" / "dog" / "2.png").read_bytes() == b"two"
    with pytest.raises(StoreError, match="nothing in the store"):
        store.download("s3://b/missing", tmp_path / "in2")


def test_upload_adds_and_overwrites_but_never_deletes_other_keys(tmp_path):
    """S3 semantics: a second upload under the same prefix leaves the first one's other objects in place."""
    store = Store(tmp_path / "store")
    store.put_bytes("s3://b/split/train/cls/old.png", b"old")
    store.put_bytes("s3://b/split/train/cls/same.png", b"v1")
    source = tmp_path / "out"
    (source / "cls").mkdir(parents=True)
    (source / "cls" / "new.png").write_bytes(b"new")
    (source / "cls" / "same.png").write_bytes(b"v2")
    assert store.upload_folder(source, "s3://b/split/train") == 2
    assert [k for k, _ in store.objects("s3://b/split/train")] == ["cls/new.png", "cls/old.png", "cls/same.png"]
    assert store.read_bytes("s3://b/split/train/cls/same.png") == b"v2"
    leftovers = [p.name for p in (tmp_path / "store").rglob("*") if p.name.endswith(".tmp")]
    assert leftovers == []


def test_link_places_a_local_folder_without_copying(tmp_path):
    data = tmp_path / "digits"
    (data / "0").mkdir(parents=True)
    (data / "0" / "a.png").write_bytes(b"png")
    store = Store(tmp_path / "store")
    link = store.link(data, "s3://b/data/digits")
    assert link.is_symlink()
    assert [k for k, _ in store.objects("s3://b/data/digits")] == ["0/a.png"]
    store.link(data, "s3://b/data/digits")  # linking again replaces the link
    with pytest.raises(StoreError, match="not a folder"):
        store.link(tmp_path / "missing", "s3://b/data/x")


def test_json_round_trip_and_missing_object(tmp_path):
    store = Store(tmp_path)
    store.put_json("s3://b/r/evaluation.json", {"a": {"value": 0.5}})
    assert store.read_json("s3://b/r/evaluation.json") == {"a": {"value": 0.5}}
    with pytest.raises(StoreError, match="no such object"):
        store.read_json("s3://b/r/missing.json")


def test_lock_refuses_a_second_holder(tmp_path):
    store = Store(tmp_path)
    with store.lock("run one"), pytest.raises(StoreError, match="in use by run one"), Store(tmp_path).lock("run two"):
        pass
    with store.lock("run three"):  # released when the first holder left
        pass
