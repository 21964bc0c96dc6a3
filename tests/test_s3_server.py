"""The test S3 server is real S3, exercised through the project's own storage layer."""

from __future__ import annotations

import os

import pytest

from clipforge.storage import Storage, StorageError


@pytest.fixture
def storage(s3_server, monkeypatch) -> Storage:
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    return Storage(endpoint=s3_server.endpoint, region=s3_server.region)


def test_write_read_exists(storage: Storage, s3_bucket: str):
    uri = f"s3://{s3_bucket}/a/b.bin"
    data = bytes(range(256)) * 64

    assert not storage.exists(uri)
    storage.write_bytes(uri, data)
    assert storage.exists(uri)
    assert not storage.exists(f"s3://{s3_bucket}/a/missing.bin")

    assert storage.read_bytes(uri) == data
    with storage.open_read(uri) as f:
        assert f.read(10) == data[:10]
        f.seek(1000)
        assert f.tell() == 1000
        assert f.read(100) == data[1000:1100]
        f.seek(-6, os.SEEK_END)
        assert f.read() == data[-6:]
        f.seek(3)
        assert f.read() == data[3:]

    storage.delete(uri)
    assert not storage.exists(uri)


def test_visible_to_a_plain_s3_client(storage: Storage, s3_server, s3_bucket: str):
    storage.write_bytes(f"s3://{s3_bucket}/x.txt", b"hello")
    body = s3_server.client().get_object(Bucket=s3_bucket, Key="x.txt")["Body"].read()
    assert body == b"hello"


def test_list_files(storage: Storage, s3_server, s3_bucket: str):
    files = {
        "prefix/one.bin": b"1",
        "prefix/sub/two.bin": b"22",
        "prefix/sub/deeper/three.bin": b"333",
        "prefix/skip.txt": b"no",
        "other/four.bin": b"4444",
    }
    for key, data in files.items():
        storage.write_bytes(f"s3://{s3_bucket}/{key}", data)

    listed = storage.list_files(f"s3://{s3_bucket}/prefix", ["*.bin"])
    assert [entry[:3] for entry in listed] == [
        (f"s3://{s3_bucket}/prefix/one.bin", "one.bin", 1),
        (f"s3://{s3_bucket}/prefix/sub/deeper/three.bin", "sub/deeper/three.bin", 3),
        (f"s3://{s3_bucket}/prefix/sub/two.bin", "sub/two.bin", 2),
    ]
    head = s3_server.client().head_object(Bucket=s3_bucket, Key="prefix/one.bin")
    assert listed[0].mtime == head["LastModified"].isoformat()  # which version of the object this is
    # a trailing slash and a single object work too
    assert storage.list_files(f"s3://{s3_bucket}/prefix/", ["*.bin"]) == listed
    assert storage.list_files(f"s3://{s3_bucket}/prefix/sub/two.bin", ["*.bin"]) == [
        (f"s3://{s3_bucket}/prefix/sub/two.bin", "two.bin", 2, listed[2].mtime)
    ]
    with pytest.raises(StorageError, match="does not exist"):
        storage.list_files(f"s3://{s3_bucket}/nothing-here", ["*.bin"])


def test_list_pages_hands_out_a_large_prefix_a_page_of_1000_keys_at_a_time(storage: Storage, s3_server, s3_bucket: str):
    client = s3_server.client()
    for n in range(1050):
        client.put_object(Bucket=s3_bucket, Key=f"big/k{n:04d}.bin", Body=b"x")
    client.put_object(Bucket=s3_bucket, Key="big/notes.txt", Body=b"no")
    pages = list(storage.list_pages(f"s3://{s3_bucket}/big", ["*.BIN"]))
    assert [(len(page.files), page.unmatched) for page in pages] == [(1000, 0), (50, 1)]
    relatives = [f.relative for page in pages for f in page.files]
    assert relatives == [f"k{n:04d}.bin" for n in range(1050)]


def test_write_errors_name_the_object_and_are_not_retried(storage: Storage, s3_bucket: str, monkeypatch, caplog):
    missing = f"s3://no-such-bucket-{s3_bucket}/out/progress.json"
    with pytest.raises(StorageError) as info:
        storage.write_bytes(missing, b"{}")
    assert missing in str(info.value)

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong")
    uri = f"s3://{s3_bucket}/out/progress.json"
    with pytest.raises(StorageError) as info:
        storage.write_bytes(uri, b"{}")
    assert uri in str(info.value) and "wrong" not in str(info.value)
    # A missing bucket and a wrong key are final: no retry can fix them.
    assert not [r for r in caplog.records if "retrying" in r.getMessage()]


def test_a_refused_connection_is_transient_and_retried_with_backoff(monkeypatch, caplog):
    from clipforge.storage import transient

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-a-real-secret-value")
    storage = Storage(endpoint="http://127.0.0.1:9", retry_seconds=0)  # one attempt (pyarrow's own retries inside)
    with pytest.raises(StorageError, match="cannot write s3://bucket/x.json") as info:
        storage.write_bytes("s3://bucket/x.json", b"{}")
    refused = info.value.__cause__  # the first failure stays attached: the run's log shows both
    assert isinstance(refused, OSError) and transient(refused)
    assert "not-a-real-secret-value" not in str(info.value)
    assert not [r for r in caplog.records if "retrying" in r.getMessage()]

    # The same failure twice, then success: two retries, logged, each after a growing wait.
    outcomes = [refused, refused, "written"]

    def call() -> str:
        outcome = outcomes.pop(0)
        if isinstance(outcome, OSError):
            raise outcome
        return outcome

    assert storage.retrying_for(30).retry(call, "cannot write s3://bucket/x.json") == "written"
    waits = [float(r.getMessage().split("retrying in ")[1].split(" s")[0])
             for r in caplog.records if "retrying" in r.getMessage()]
    assert len(waits) == 2 and 0.2 <= waits[0] <= 0.5 <= waits[1] <= 1.0  # (logged to 0.1 s)


def test_large_object_multipart(storage: Storage, s3_server, s3_bucket: str):
    data = os.urandom(20 << 20)
    uri = f"s3://{s3_bucket}/big/video.bin"
    storage.write_bytes(uri, data)

    head = s3_server.client().head_object(Bucket=s3_bucket, Key="big/video.bin")
    assert head["ContentLength"] == len(data)
    assert "-" in head["ETag"], "expected a multipart upload (its ETag is '<md5>-<parts>')"

    assert storage.read_bytes(uri) == data
    with storage.open_read(uri) as f:
        f.seek(15 << 20)
        assert f.read(1 << 20) == data[15 << 20:16 << 20]
