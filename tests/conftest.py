"""Shared fixtures: a real S3-protocol server on loopback (moto's server mode), offline W&B."""

from __future__ import annotations

import hashlib
import os
import re
import socket

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# Credentials come from the environment, as in production (the config refuses them): moto
# accepts any. Set for the whole session, before any Ray starts, so workers inherit them.
TEST_ENV = {
    "AWS_ACCESS_KEY_ID": "testing-access-key",
    "AWS_SECRET_ACCESS_KEY": "testing-secret-key",
    "AWS_DEFAULT_REGION": "us-east-1",
    "WANDB_MODE": "offline",
}
HOST_ONLY = ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_ENDPOINT_URL", "AWS_SESSION_TOKEN", "WANDB_API_KEY")


@pytest.fixture(scope="session", autouse=True)
def _test_environment():
    """Tests never reach real clouds: no credentials or endpoints leak in from the machine."""
    from orchestrator.logs import setup

    setup()  # our warnings reach the (captured) stderr with their prefix, as in a real run
    saved = dict(os.environ)
    for var in HOST_ONLY:
        os.environ.pop(var, None)
    os.environ.update(TEST_ENV)
    yield
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture(scope="session")
def s3_server():
    """moto in server mode on 127.0.0.1, as s3fs's own tests use; yields its endpoint URL."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def s3_bucket(s3_server, request):
    """A fresh bucket for one test; returns (bucket name, fsspec storage options)."""
    import s3fs

    options = {"client_kwargs": {"endpoint_url": s3_server}}
    fs = s3fs.S3FileSystem(**options, skip_instance_cache=True)
    slug = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower())[:40].strip("-")
    name = f"b-{slug}-{hashlib.sha1(request.node.name.encode()).hexdigest()[:8]}"  # parametrized: one each
    fs.mkdir(name)
    return name, options


@pytest.fixture(scope="session")
def tiny_shards(tmp_path_factory):
    """The demo set, small: 10 classes x 16 train / 4 val photos at 80 px, 4 train shards."""
    from shards.__main__ import main

    out = tmp_path_factory.mktemp("tiny") / "shards"
    argv = [
        "demo",
        "--out",
        str(out),
        "--train-per-class",
        "16",
        "--val-per-class",
        "4",
        "--resize",
        "80",
        "--shard-size",
        "40",
        "--workers",
        "1",
    ]
    assert main(argv) == 0
    return str(out)


def compose(*overrides: str):
    """conf/train.yaml composed as `python -m orchestrator.train` would, in this process."""
    import os

    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    import orchestrator.train  # noqa: F401  registers the schema and the ${repo:} resolver

    conf = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "conf")
    with initialize_config_dir(config_dir=conf, version_base="1.3"):
        return hydra_compose("train", overrides=list(overrides))


def tiny_run_overrides(shards: str, runs: str, **extra) -> list[str]:
    """alexnet_mini at 67 px, batch 8, one epoch: a whole Ray job in well under a minute."""
    base = {
        "data.url": shards,
        "storage.url": runs,
        "model.input_size": 67,
        "batch_size": 8,
        "epochs": 1,
        "cluster.nodes": 2,
        "data.workers": 0,
        "data.shuffle_buffer": 50,
        "logger.mode": "offline",
        "checkpoint.every_steps": 4,
        "log_every_steps": 2,
    }
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


@pytest.fixture(scope="module")
def local_ray():
    """One embedded Ray for a module's end-to-end jobs (~10 s to start); always shut down."""
    import ray

    ray.init(num_cpus=4, include_dashboard=False, logging_level="WARNING")
    yield
    ray.shutdown()
