"""Checkpoints that travel: local paths, file://, memory:// (fsspec) and s3:// (moto)."""

from __future__ import annotations

import boto3
import pytest
from moto import mock_aws

from prefect_cloudsched.errors import MoveRequested
from prefect_cloudsched.prefect import checkpoint


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)


def test_s3_checkpoint_round_trip_and_clear(aws_env: None) -> None:
    with mock_aws():
        boto3.client("s3").create_bucket(Bucket="ckpt")
        location = "s3://ckpt/jobs/train"
        assert checkpoint.load(default="none", key="run-1", location=location) == "none"
        url = checkpoint.save({"epoch": 3}, key="run-1", location=location)
        assert url == "s3://ckpt/jobs/train/run-1.pkl"
        listed = boto3.client("s3").list_objects_v2(Bucket="ckpt")["Contents"]
        assert [o["Key"] for o in listed] == ["jobs/train/run-1.pkl"]
        # another "instance" (a fresh client, same URL) resumes from it
        assert checkpoint.load(key="run-1", location=location) == {"epoch": 3}
        checkpoint.save({"epoch": 4}, key="run-1", location=location)
        assert checkpoint.load(key="run-1", location=location) == {"epoch": 4}
        checkpoint.clear(key="run-1", location=location)
        assert checkpoint.load(default=None, key="run-1", location=location) is None


@pytest.mark.parametrize("scheme", ["file", "plain", "memory"])
def test_local_and_fsspec_locations(tmp_path, scheme: str) -> None:
    location = {
        "file": f"file://{tmp_path}/ck",
        "plain": str(tmp_path / "ck"),
        "memory": "memory://ckpt-test/ck",
    }[scheme]
    checkpoint.save([1, 2], key="a/b", location=location)
    assert checkpoint.load(key="a/b", location=location) == [1, 2]
    if scheme != "memory":
        assert (tmp_path / "ck" / "a_b.pkl").is_file()
        assert not list((tmp_path / "ck").glob("*.tmp"))
    checkpoint.clear(key="a/b", location=location)
    assert checkpoint.load(default="gone", key="a/b", location=location) == "gone"


def test_env_location_is_the_default(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(checkpoint.DIR_ENV, f"file://{tmp_path}/env")
    checkpoint.save("x", key="k")
    assert (tmp_path / "env" / "k.pkl").is_file()


def test_move_request_saves_then_yields(aws_env: None) -> None:
    with mock_aws():
        boto3.client("s3").create_bucket(Bucket="ckpt")
        location = "s3://ckpt/moving"
        checkpoint.save({"epoch": 1}, key="run-2", location=location)  # no request: no yield
        assert not checkpoint.move_requested(key="run-2")
        checkpoint.request_move("run-2", "spot in us-west-2a")
        assert checkpoint.move_requested(key="run-2")
        with pytest.raises(MoveRequested) as raised:
            checkpoint.save({"epoch": 2}, key="run-2", location=location)
        assert raised.value.reason == "spot in us-west-2a"
        # the state was saved before the yield, and the request is consumed
        assert checkpoint.load(key="run-2", location=location) == {"epoch": 2}
        assert not checkpoint.move_requested(key="run-2")
        checkpoint.save({"epoch": 3}, key="run-2", location=location)
