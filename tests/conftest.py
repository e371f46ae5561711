"""Shared fixtures: a real S3-protocol server on loopback (moto's server mode), offline W&B."""

from __future__ import annotations

import socket

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def s3_server():
    """moto in server mode on 127.0.0.1, as s3fs's own tests use; yields its storage options."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield {
        "endpoint_url": f"http://127.0.0.1:{port}",
        "key": "testing-access-key",
        "secret": "testing-secret-key",
    }
    server.stop()


@pytest.fixture
def s3_bucket(s3_server, request):
    """A fresh bucket for one test; returns (bucket name, storage options)."""
    import s3fs

    fs = s3fs.S3FileSystem(
        client_kwargs={"endpoint_url": s3_server["endpoint_url"]},
        key=s3_server["key"],
        secret=s3_server["secret"],
        skip_instance_cache=True,
    )
    name = "b-" + request.node.name.lower().replace("_", "-")[:40].strip("-")
    fs.mkdir(name)
    options = {
        "client_kwargs": {"endpoint_url": s3_server["endpoint_url"]},
        "key": s3_server["key"],
        "secret": s3_server["secret"],
    }
    return name, options


@pytest.fixture(autouse=True)
def _no_aws_from_the_host(monkeypatch):
    """Tests never reach real clouds: no credentials or endpoints leak in from the machine."""
    for var in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
