"""python -m orchestrator.tools.gpu_check [--dry-run]: one prepared run that proves the CUDA/NCCL
training path on a GPU machine and measures it (`make gpu-check`, `make gpu-check DRY=1`).

  tests   pytest -m gpu: split vs fused on CUDA (fp32, bf16), a CUDA checkpoint loads on the CPU
  train   the Trainer under torch.distributed with NCCL (world 1), bf16, the paper net through
          the split path on one GPU, one epoch of the demo shards at 256 px; then resumed from
          its checkpoint for a second epoch
  bench   the paper net vs torchvision's AlexNet, batch 256, fp32 / bf16 autocast,
          channels_last, torch.compile off / on: images/s, TFLOP/s, fraction of a bf16 matrix
          product timed in the same run, peak memory
  data    images/s one GPU consumes vs what one host core decodes and crops, and batched GPU
          JPEG decoding (torchvision.io.decode_jpeg on cuda) vs simplejpeg per core

Every step runs even when an earlier one failed; gpu-check.json is rewritten after each step, so
a run cut short still says how far it got. --dry-run does all of it on the CPU at toy sizes and
skips what needs CUDA (NCCL, GPU decoding, compile), so CI keeps this script working."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from typing import Any

import torch
import torchvision
from rich.console import Console
from rich.table import Table

from model import AlexNet
from orchestrator.config import REPO_ROOT
from orchestrator.tools.bench import image_flops, machine, matmul_flops_per_s, timed, train_step_rate
from orchestrator.worker.devices import tower_devices

SKIPPED = "skipped: needs CUDA"


class Check:
    """The results so far, written out after every step."""

    def __init__(self, out: str, dry: bool) -> None:
        self.out, self.dry = out, dry
        self.results: dict[str, Any] = {"machine": machine(), "dry_run": dry, "steps": {}}
        self.cuda = torch.cuda.is_available() and not dry
        self.device = "cuda:0" if self.cuda else "cpu"

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def step(self, name: str, work: Callable[[], dict[str, Any]]) -> None:
        print(f"== {name}", flush=True)
        start = time.perf_counter()
        try:
            result = {"status": "ok", **work()}
        except Exception as err:
            traceback.print_exc()
            result = {"status": f"failed: {type(err).__name__}: {str(err)[:300]}"}
        result["seconds"] = round(time.perf_counter() - start, 1)
        self.results["steps"][name] = result
        with open(self.out, "w") as f:
            json.dump(self.results, f, indent=1)


def run_tests(check: Check) -> dict[str, Any]:
    files = [os.path.join(REPO_ROOT, "tests", name) for name in ("test_gpu.py", "test_model.py")]
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider", *files],
        capture_output=True, text=True, cwd=REPO_ROOT, timeout=600,
    )  # fmt: skip
    print(proc.stdout[-2000:], proc.stderr[-2000:], flush=True)
    summary = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
    if proc.returncode not in (0, 5) or ("skipped" in summary and check.cuda):
        raise RuntimeError(f"pytest -m gpu: {summary}")
    return {"pytest": summary}


def demo_shards(check: Check, root: str) -> str:
    """The demo photos at the paper's 256 px (toy size for a dry run), built once."""
    out = os.path.join(root, "demo-256" if not check.dry else "demo-dry")
    if not os.path.exists(os.path.join(out, "manifest.json")):
        from shards.__main__ import main as shards_main

        size = ["--resize", "256"]
        if check.dry:
            size = ["--resize", "80", "--train-per-class", "16", "--val-per-class", "4"]
        workers = str(max(1, min(8, (os.cpu_count() or 2) // 2)))
        if shards_main(["demo", "--out", out, "--workers", workers, *size]) != 0:
            raise RuntimeError("building the demo shards failed")
    return out


def train(check: Check, shards: str, runs: str) -> dict[str, Any]:
    """The Trainer as Ray Train runs it, through TorchCluster (NCCL on a GPU): one epoch, then
    a resume from its checkpoint for a second, with the all-reduced metrics read back."""
    from hydra import compose, initialize_config_dir

    from orchestrator.config import register
    from orchestrator.launch.prepare import prepare
    from orchestrator.launch.torchrun import fit
    from orchestrator.runs.record import RunRecord

    register()
    workers = max(1, (os.cpu_count() or 2) // 2)  # one loader process per 2 cores
    overrides = [
        f"data.url={shards}", f"storage.url={runs}", "run_name=gpu-check", "logger.mode=disabled",
        f"data.workers={workers}", "cluster.gpus_per_worker=1", "model.placement=split", "log_every_steps=5",
    ]  # fmt: skip
    if check.dry:
        overrides += ["model.input_size=67", "model.width=0.25", "batch_size=8", "data.workers=1"]
    else:
        overrides += ["experiment=paper", "precision=bf16", "channels_last=true"]
    os.environ.setdefault("MASTER_PORT", "29533")
    config_dir = os.path.join(REPO_ROOT, "conf")
    times = {}
    for epochs, resume in ((1, "false"), (2, "true")):
        with initialize_config_dir(config_dir=config_dir, version_base="1.3"):
            config = prepare(compose("train", overrides=[*overrides, f"epochs={epochs}", f"resume={resume}"]))
        start = time.perf_counter()
        fit(config)
        times[epochs] = time.perf_counter() - start
    record = RunRecord.read(os.path.join(runs, "gpu-check"))
    resumed = record.events("resumed")
    vals = record.metric_lines("val/top1")
    if len(resumed) != 1 or len(vals) != 2:
        raise RuntimeError(f"expected one resume and two validations, got {len(resumed)} and {len(vals)}")
    backend = "nccl" if check.cuda else "gloo"
    return {
        "backend": backend,
        "precision": config.precision,
        "placement": "split path, both towers on one device",
        "loader_processes": config.data.workers,
        "first_epoch_seconds": round(times[1], 1),
        "resumed_at_step": resumed[0]["step"],
        "train_images_per_s": round(record.images_per_s() or 0, 1),
        "val_top1_epoch_1": vals[0]["val/top1"],
        "val_top1_epoch_2": vals[1]["val/top1"],
        "train_loss_last": record.last("train/loss"),
    }


def ours(device: str) -> AlexNet:
    return AlexNet(lrn="compiled").place(*tower_devices([torch.device(device)], "auto"))


def bench(check: Check) -> dict[str, Any]:
    """The model alone: ours vs torchvision's, fp32 / bf16, compile off / on."""
    batch, repeats = (256, 10) if check.cuda else (4, 1)
    flops = image_flops()
    peak = matmul_flops_per_s(check.device, torch.bfloat16, check.sync, n=8192 if check.cuda else 256)
    out: dict[str, Any] = {"batch": batch, "gflop_per_image": {k: round(v / 1e9, 3) for k, v in flops.items()},
                           "matmul_bf16_tflops": round(peak / 1e12, 1)}  # fmt: skip
    compiles = (False, True) if check.cuda else (False,)
    for compiled in compiles:
        for precision, dtype in (("fp32", None), ("bf16", torch.bfloat16)):
            if compiled and precision == "fp32":
                continue  # compile costs minutes; bf16 is the mode that matters on a GPU
            for name in ("ours", "torchvision"):
                torch.manual_seed(0)
                # ours as training runs it on one device (placed there: its forward follows its
                # placement, not where .to() moved the weights), with the compiled LRN
                model = ours(check.device) if name == "ours" else torchvision.models.alexnet()
                if compiled:
                    model = torch.compile(model)
                if check.cuda:
                    torch.cuda.reset_peak_memory_stats()
                rate = train_step_rate(model, check.device, dtype, batch, repeats, check.sync)
                key = f"{name}_{precision}{'_compiled' if compiled else ''}"
                out[f"{key}_images_per_s"] = round(rate, 1)
                out[f"{key}_tflops"] = round(rate * flops[name] / 1e12, 2)
                out[f"{key}_fraction_of_bf16_matmul"] = round(rate * flops[name] / peak, 3)
                if check.cuda:
                    out[f"{key}_peak_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
                del model
    return out


def data_path(check: Check, shards: str, gpu_images_per_s: float | None) -> dict[str, Any]:
    """What feeding one GPU takes: host decode + crop per core, and GPU JPEG decoding."""
    import itertools

    import simplejpeg

    from orchestrator.data.augment import Augment
    from orchestrator.data.bad_samples import Skips
    from orchestrator.data.plan import Reading
    from orchestrator.data.shard_reader import load_manifest, samples
    from orchestrator.data.streams import TrainStream

    manifest = load_manifest(shards, {})
    size = 224 if not check.dry else 67
    stream = TrainStream(manifest, shards, {}, seed=0, epoch=0, rank=0, world=1, batch_size=64,
                         augment=Augment("paper", size, manifest.settings["resize"]), shuffle_buffer=256)  # fmt: skip
    limit = 20 if not check.dry else 2
    start, images = time.perf_counter(), 0
    for x, _, _ in itertools.islice(stream.batches(0, pin_memory=False), limit):  # in this process: one core
        images += len(x)
    host = images / (time.perf_counter() - start)
    val = samples(Reading.whole(manifest.splits["val"]), shards, {}, Skips())
    jpegs = [sample["jpg"] for sample in itertools.islice(val, 256)]
    simple = len(jpegs) / timed(lambda: [simplejpeg.decode_jpeg(j) for j in jpegs], 3)
    out: dict[str, Any] = {
        "host_decode_crop_images_per_s_per_core": round(host, 1),
        "simplejpeg_decode_images_per_s_per_core": round(simple, 1),
    }
    if gpu_images_per_s:
        out["gpu_train_images_per_s"] = gpu_images_per_s
        out["host_cores_to_feed_one_gpu"] = round(gpu_images_per_s / host, 1)
    if not check.cuda:
        out["gpu_decode"] = SKIPPED
        return out
    from torchvision.io import decode_jpeg

    data = [torch.frombuffer(bytearray(j), dtype=torch.uint8) for j in jpegs]
    rate = len(data) / timed(lambda: decode_jpeg(data, device="cuda"), 5, warmup=2, sync=check.sync)
    out["gpu_decode_images_per_s"] = round(rate, 1)
    out["gpu_decode_vs_simplejpeg_core"] = round(rate / simple, 1)
    return out


def show(results: dict[str, Any]) -> None:
    table = Table(title=f"GPU check{' (dry run)' if results['dry_run'] else ''}: {results['machine'].get('cuda')}")
    table.add_column("step")
    table.add_column("figure")
    table.add_column("value", justify="right")
    for step, values in results["steps"].items():
        for key, value in values.items():
            table.add_row(step, key, f"{value:,}" if isinstance(value, int | float) else str(value))
    Console(width=140).print(table)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m orchestrator.tools.gpu_check", description=__doc__)
    parser.add_argument("--dry-run", action="store_true", help="on the CPU at toy sizes; skip what needs CUDA")
    parser.add_argument("--out", default=os.path.join(REPO_ROOT, "gpu-check.json"))
    parser.add_argument("--work", default=None, help="folder for shards and runs, kept (default: a temporary one)")
    args = parser.parse_args(argv)
    check = Check(args.out, args.dry_run)
    if not check.cuda and not args.dry_run:
        print("error: no CUDA device here; run make gpu-check DRY=1 to check the script itself", file=sys.stderr)
        return 2
    work = args.work or tempfile.mkdtemp(prefix="gpu-check-")
    shards: dict[str, str] = {}
    check.step("tests", lambda: run_tests(check))
    check.step("shards", lambda: {"url": shards.setdefault("url", demo_shards(check, work))})
    check.step("train", lambda: train(check, shards["url"], os.path.join(work, "runs")))
    check.step("bench", lambda: bench(check))
    gpu_rate = check.results["steps"]["bench"].get("ours_bf16_images_per_s")
    check.step("data", lambda: data_path(check, shards["url"], gpu_rate))
    show(check.results)
    if args.work is None:  # the demo shards and runs were only for this check
        shutil.rmtree(work, ignore_errors=True)
    failed = [name for name, step in check.results["steps"].items() if step["status"] != "ok"]
    print(f"written to {args.out}" + (f"; FAILED: {', '.join(failed)}" if failed else ""), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
