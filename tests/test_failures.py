"""What survives what: killed workers, lost nodes, corrupt shards, storage outages."""

from __future__ import annotations

import io
import json
import os
import shutil
import tarfile
import threading
import time

import psutil
import pytest
from conftest import compose, free_port, tiny_run_overrides

from orchestrator.data.bad_samples import DataError, Skips
from orchestrator.data.plan import Reading
from orchestrator.data.shard_reader import load_manifest, samples
from orchestrator.launch.prepare import prepare
from orchestrator.launch.torchrun import fit
from orchestrator.train import run
from orchestrator.worker import checkpoint


def metrics(path) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f]


def damaged_copy(shards: str, folder) -> tuple[str, dict[str, int]]:
    """The tiny shards with train-000001 truncated, one image in train-000002 replaced by
    garbage, and train-000003 deleted (still listed in the manifest)."""
    out = folder / "damaged"
    shutil.copytree(shards, out)
    one = out / "train-000001.tar"
    one.write_bytes(one.read_bytes()[: one.stat().st_size // 3])
    two = out / "train-000002.tar"
    with tarfile.open(two) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar]
    with tarfile.open(two, "w") as tar:
        for i, (m, data) in enumerate(members):
            data = b"not a jpeg at all" if i == 1 else data  # members go .cls, .jpg, .json
            m.size = len(data)
            tar.addfile(m, io.BytesIO(data))
    os.remove(out / "train-000003.tar")
    return str(out), {"train-000001.tar": -1, "train-000002.tar": 1, "train-000003.tar": 40}


def test_corrupt_shards_are_skipped_counted_and_named(tiny_shards, tmp_path, capsys):
    root, damage = damaged_copy(tiny_shards, tmp_path)
    manifest = load_manifest(root, {})
    skips = Skips()
    got = list(samples(Reading.whole(manifest.splits["train"]), root, {}, skips))
    total = manifest.samples("train")
    assert len(got) + skips.count == total
    assert skips.count > 1 + 40  # the truncated shard lost some too
    err = capsys.readouterr().err
    for name in damage:
        assert name in err
    assert "train-000000.tar" not in err


@pytest.mark.timeout(300)
def test_training_goes_on_over_corrupt_data_until_too_much_is_lost(tiny_shards, tmp_path, monkeypatch):
    """The Trainer's rule, on plain torch.distributed (the Ray adapter adds nothing to it)."""
    monkeypatch.setenv("MASTER_PORT", str(free_port()))
    root, _ = damaged_copy(tiny_shards, tmp_path)
    runs = str(tmp_path / "runs")
    one = {"logger.mode": "disabled", "cluster.nodes": 1}
    fit(prepare(compose(*tiny_run_overrides(root, runs, run_name="ok", **one, **{"data.max_skipped_fraction": 0.9}))))
    lines = metrics(os.path.join(runs, "ok", "metrics.jsonl"))
    assert lines[-1]["event"] == "finished"
    assert max(line.get("data/skipped", 0) for line in lines) > 40
    with pytest.raises(DataError, match="max_skipped_fraction"):
        fit(prepare(compose(*tiny_run_overrides(root, runs, run_name="strict", **one))))


def ray_train_workers() -> list[psutil.Process]:
    """The Ray Train worker processes themselves, not their DataLoader processes (forked from
    them, so they carry the same command line)."""

    def is_worker(p: psutil.Process) -> bool:
        try:
            return "RayTrainWorker" in " ".join(p.cmdline() or [])
        except psutil.Error:
            return False

    found = []
    for p in psutil.process_iter():
        try:
            if is_worker(p) and not (p.parent() and is_worker(p.parent())):
                found.append(p)
        except psutil.Error:
            continue
    return found


def wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def past_a_registered_checkpoint(run_dir: str) -> bool:
    """True once Ray's controller holds a checkpoint and training has run two steps past it
    (it collects reports every few seconds: a crash before that restarts from scratch)."""
    try:
        with open(os.path.join(run_dir, "checkpoint_manager_snapshot.json")) as f:
            saved = json.load(f)["latest_checkpoint_result"]["metrics"]["step"]
        return max(losses(metrics(os.path.join(run_dir, "metrics.jsonl")))) > saved + 1
    except (OSError, KeyError, TypeError, ValueError):
        return False


def losses(lines: list[dict]) -> dict[int, float]:
    return {line["step"]: line["train/loss"] for line in lines if "train/loss" in line}


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_killed_worker_resumes_exactly_where_its_checkpoint_was(local_ray, tiny_shards, tmp_path):
    """kill -9 of a worker mid-epoch: Ray restarts the group, the loop resumes from the newest
    checkpoint, and every loss after that equals the uninterrupted run's (same seed, CPU)."""
    runs = str(tmp_path / "runs")
    common = {"epochs": 2, "log_every_steps": 1, "checkpoint.every_steps": 3, "data.workers": 2}
    run(compose(*tiny_run_overrides(tiny_shards, runs, run_name="clean", **common)))
    clean = losses(metrics(os.path.join(runs, "clean", "metrics.jsonl")))

    crashed = os.path.join(runs, "crashed")
    job = threading.Thread(
        target=run, args=(compose(*tiny_run_overrides(tiny_shards, runs, run_name="crashed", **common)),)
    )
    job.start()

    wait_for(lambda: past_a_registered_checkpoint(crashed), 120, "a registered checkpoint and two more steps")
    victims = ray_train_workers()
    assert victims
    victims[-1].kill()  # SIGKILL, no cleanup
    job.join(timeout=400)
    assert not job.is_alive()
    lines = metrics(os.path.join(crashed, "metrics.jsonl"))
    resumed = [line for line in lines if line.get("event") == "resumed"]
    assert len(resumed) == 1 and resumed[0]["step"] >= 3
    assert lines[-1]["event"] == "finished"
    after = [line for line in lines[lines.index(resumed[0]) :] if "train/loss" in line]
    assert after[0]["step"] == resumed[0]["step"] + 1  # continues from N, not 0
    assert losses(lines) == clean  # same seed: identical losses, before and after the crash
    assert not os.path.exists(checkpoint.staging_root("crashed"))  # nothing staged outlived the kill


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_storage_outage_during_checkpoint_uploads(local_ray, tiny_shards, tmp_path, capfd):
    """The S3 endpoint goes away for 10 s mid-run: uploads retry with backoff, training goes
    on, and the run ends with its checkpoints intact."""
    import s3fs
    from moto.server import ThreadedMotoServer

    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    options = {"client_kwargs": {"endpoint_url": endpoint}}
    fs = s3fs.S3FileSystem(**options, skip_instance_cache=True)
    fs.mkdir("outage")
    cfg = compose(
        *tiny_run_overrides(tiny_shards, "s3://outage/runs", run_name="o", epochs=4, **{"checkpoint.every_steps": 2})
    )
    cfg.storage.options = options
    outcome = {}
    job = threading.Thread(target=lambda: outcome.setdefault("top1", run(cfg)))
    job.start()
    try:

        def has_checkpoint() -> bool:
            fs.invalidate_cache()
            return any("checkpoint_" in p and not p.endswith(".json") for p in fs.ls("outage/runs/o"))

        wait_for(lambda: fs.exists("outage/runs/o") and has_checkpoint(), 120, "a first checkpoint")
        server.stop()
        time.sleep(10)  # past the first retries (1, 2, 4 s)
    finally:
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        server.start()
    job.join(timeout=400)
    assert not job.is_alive() and "top1" in outcome
    out, err = capfd.readouterr()
    assert "retry 1/7" in out + err  # the outage was seen, and waited out
    fs.invalidate_cache()
    lines = [json.loads(line) for line in fs.cat("outage/runs/o/metrics.jsonl").decode().splitlines()]
    assert lines[-1]["event"] == "finished" and "resumed" not in {line.get("event") for line in lines}
    assert len([line for line in lines if "val/top1" in line]) == 4
    ckpts = sorted(p for p in fs.ls("outage/runs/o") if "checkpoint_" in p and not p.endswith(".json"))
    for path in ckpts:  # every checkpoint Ray kept is whole and loads
        local = tmp_path / "state.pt"
        local.write_bytes(fs.cat(f"{path}/{checkpoint.STATE_FILE}"))
        assert checkpoint.load(str(local))["position"]["epoch"] >= 1
    server.stop()
