"""python -m orchestrator.tools.bench [--gpu]: speed, as ratios against baselines measured in the same
run (the machine may be shared and noisy: absolute numbers drift, ratios hold).

CPU (`make bench`): the train step of the paper net vs torchvision's AlexNet (fp32, bf16) and as
a fraction of a plain matrix product; the shard loader vs ImageFolder + DataLoader and vs a bare
decode loop; a Ray job vs the same loop in one process; a checkpoint upload vs a raw put; the
gradient traffic of each `ddp.comm_hook` at 2 and 4 gloo workers, vs no hook (tools/gradient_traffic).
GPU (`make bench-gpu`): the model alone on cuda:0 (and split over two GPUs when there are two).
Results go to bench.json in the repository root and to a table on the screen."""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from multiprocessing import get_context
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from PIL import Image
from rich.console import Console
from rich.table import Table
from torch.utils.flop_counter import FlopCounterMode
from torchvision.transforms import v2

from model import AlexNet
from model.summary import train_flops_per_image
from orchestrator.config import COMM_HOOKS, REPO_ROOT
from orchestrator.tools import gradient_traffic
from orchestrator.worker import host_memory
from orchestrator.worker.devices import tower_devices

BATCH = 64


def timed(step: Callable[[], Any], repeats: int, warmup: int = 1, sync: Callable[[], None] = lambda: None) -> float:
    """Median seconds of `step` after warm-up."""
    for _ in range(warmup):
        step()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def train_flops(model: torch.nn.Module, x: torch.Tensor) -> int:
    """FLOPs of one forward + backward, counted by torch (matmuls and convolutions)."""
    with FlopCounterMode(display=False) as counter:
        model(x).sum().backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def image_flops() -> dict[str, float]:
    """Training FLOPs per 224 px image. Ours from the layer table: torch's flop counter counts a
    grouped convolution's backward as if it were not grouped (4.96e9 for this net instead of
    4.14e9), and C2, C4 and C5 are grouped. torchvision's net has no grouped layer: counted."""
    return {
        "ours": float(train_flops_per_image(AlexNet())),
        "torchvision": train_flops(torchvision.models.alexnet(), torch.randn(2, 3, 224, 224)) / 2,
    }


def train_step(model: torch.nn.Module, device: str, dtype: torch.dtype | None, batch: int) -> Callable[[], None]:
    """Forward, backward and an SGD step, channels_last, optional bf16 autocast."""
    model = model.to(device).to(memory_format=torch.channels_last).train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    x = torch.randn(batch, 3, 224, 224, device=device).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 1000, (batch,), device=device)
    autocast = torch.autocast(device.split(":")[0], dtype=dtype) if dtype else contextlib.nullcontext()

    def step() -> None:
        with autocast:
            loss = F.cross_entropy(model(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def train_step_rate(model: torch.nn.Module, device: str, dtype: torch.dtype | None, batch: int, repeats: int,
                    sync: Callable[[], None]) -> float:  # fmt: skip
    """Images/s of `train_step`."""
    return batch / timed(train_step(model, device, dtype, batch), repeats, sync=sync)


def interleaved_seconds(
    steps: dict[str, Callable[[], Any]], repeats: int, sync: Callable[[], None] = lambda: None, warmup: int = 2
) -> dict[str, float]:
    """Median seconds of each step, timed in turns (A B C A B C ...) after all are warm: on a
    shared machine whose speed drifts, a drift then weighs on every step alike (timed one after
    the other, the last one measured ran up to 20% faster or slower than in the next run)."""
    for step in steps.values():
        for _ in range(warmup):
            step()
    sync()
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            sync()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def interleaved_rates(
    steps: dict[str, Callable[[], None]], batch: int, repeats: int, sync: Callable[[], None], warmup: int = 2
) -> dict[str, float]:
    """Images/s of each train step, timed in turns (interleaved_seconds)."""
    return {name: batch / seconds for name, seconds in interleaved_seconds(steps, repeats, sync, warmup).items()}


def matmul_flops_per_s(device: str, dtype: torch.dtype, sync: Callable[[], None], n: int = 2048) -> float:
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    return 2 * n**3 / timed(lambda: a @ b, 5, warmup=2, sync=sync)


class ReluInsteadOfLRN(torch.nn.Module):
    """The paper net's LRN taken out (its ReLU kept): what the other layers cost, the ceiling of
    the per-FLOP ratio while the net keeps the paper's LRN."""

    def forward(self, x: torch.Tensor, groups: int = 1, relu: bool = False) -> torch.Tensor:
        return F.relu(x) if relu else x


def bench_train_step(device: str = "cpu", batch: int = BATCH, repeats: int = 5) -> dict[str, float]:
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    torch.manual_seed(0)
    # as training runs it: model.lrn=compiled, the towers placed as model.placement=auto places them
    placement = tower_devices([torch.device(device)], "auto")
    ours = AlexNet(lrn="compiled").place(*placement)
    eager = AlexNet(lrn="eager").place(*placement)
    no_lrn = AlexNet().place(*placement)
    no_lrn.lrn = ReluInsteadOfLRN()
    theirs = torchvision.models.alexnet()
    flops = image_flops()
    out: dict[str, float] = {
        "train_flops_per_image": flops["ours"],
        "torchvision_flops_per_image": flops["torchvision"],
    }
    precisions = (("fp32", None), ("bf16", torch.bfloat16))
    # First with glibc's default allocator, which unmaps large blocks on free (so each step
    # faults them in afresh): once glibc keeps them it cannot go back, so this is timed before,
    # not in turns with the rest.
    fresh = {f"train_{p}_fresh_pages": train_step(ours, device, dtype, batch) for p, dtype in precisions}
    out.update({f"{name}_images_per_s": rate for name, rate in interleaved_rates(fresh, batch, repeats, sync).items()})
    # as training runs (perf.reuse_host_memory): freed large blocks serve the next step
    host_memory.keep_freed_blocks()
    for precision, dtype in precisions:
        steps = {
            f"train_{precision}": train_step(ours, device, dtype, batch),
            f"train_{precision}_eager_lrn": train_step(eager, device, dtype, batch),
            f"train_{precision}_no_lrn": train_step(no_lrn, device, dtype, batch),
            f"torchvision_{precision}": train_step(theirs, device, dtype, batch),
        }
        rates = interleaved_rates(steps, batch, repeats, sync)
        out.update({f"{name}_images_per_s": rate for name, rate in rates.items()})
        out[f"matmul_{precision}_flops_per_s"] = matmul_flops_per_s(device, dtype or torch.float32, sync)
    return out


# --- the loader ------------------------------------------------------------------------------


def _decode_files(paths: list[str]) -> int:
    for path in paths:
        with Image.open(path) as img:
            np.asarray(img.convert("RGB"))
    return len(paths)


def bench_loader(workers: int, images: int = 1500) -> dict[str, float]:
    """Shards of ~500x375 photographs resized to 256, read three ways with `workers` processes."""
    from orchestrator.data.augment import Augment
    from orchestrator.data.shard_reader import load_manifest
    from orchestrator.data.streams import TrainStream
    from shards.__main__ import main as shards_main
    from shards.demo import PHOTOS, load_photo

    with tempfile.TemporaryDirectory(prefix="alexnet-bench-") as tmp:
        tree = os.path.join(tmp, "photos")
        for n, (wnid, (name, _)) in enumerate(PHOTOS.items()):
            os.makedirs(os.path.join(tree, wnid))
            photo = load_photo(name).convert("RGB")
            for i in range(images // len(PHOTOS)):
                w, h = photo.size
                box = ((i * 37 + n) % max(1, w // 3), (i * 23) % max(1, h // 3))
                crop = photo.crop((*box, box[0] + 2 * w // 3, box[1] + 2 * h // 3)).resize((500, 375))
                crop.save(os.path.join(tree, wnid, f"{i}.jpg"), quality=90)
        shards = os.path.join(tmp, "shards")
        with contextlib.redirect_stdout(io.StringIO()):
            shards_main(["folder", "--train", tree, "--out", shards, "--shard-size", "100", "--workers",
                         str(workers)])  # fmt: skip
        manifest = load_manifest(shards, {})
        # The same resized JPEGs as an ImageFolder tree, for the torchvision baseline.
        folder = os.path.join(tmp, "folder")
        for shard in manifest.splits["train"]:
            with tarfile.open(os.path.join(shards, shard.name)) as tar:
                members = {m.name: tar.extractfile(m).read() for m in tar}
            for name, data in members.items():
                key, ext = name.split(".", 1)
                if ext == "jpg":
                    wnid = json.loads(members[f"{key}.json"])["wnid"]
                    os.makedirs(os.path.join(folder, wnid), exist_ok=True)
                    with open(os.path.join(folder, wnid, f"{key}.jpg"), "wb") as f:
                        f.write(data)
        total = manifest.samples("train")

        def ours() -> int:
            stream = TrainStream(manifest, shards, {}, seed=0, epoch=0, rank=0, world=1, batch_size=BATCH,
                                 augment=Augment("paper", 224, 256), shuffle_buffer=1000)  # fmt: skip
            return sum(len(labels) for _, labels, _ in stream.batches(workers, False))

        def imagefolder() -> int:
            # torchvision's classic recipe: PIL crop and flip, then float and normalise on the host
            transform = v2.Compose([
                v2.CenterCrop(256), v2.RandomCrop(224), v2.RandomHorizontalFlip(), v2.PILToTensor(),
                v2.ToDtype(torch.float32, scale=True), v2.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
            ])  # fmt: skip
            data = torchvision.datasets.ImageFolder(folder, transform=transform)
            batches = torch.utils.data.DataLoader(data, batch_size=BATCH, shuffle=True, num_workers=workers)
            return sum(len(labels) for _, labels in batches)

        files = [os.path.join(d, f) for d, _, fs in os.walk(folder) for f in fs]

        def bare() -> int:
            chunks = [files[i::workers] for i in range(workers)]
            with get_context("fork").Pool(workers) as pool:
                return sum(pool.map(_decode_files, chunks))

        out = {"loader_images": total, "loader_workers": workers}
        for name, fn in (("loader", ours), ("imagefolder", imagefolder), ("bare_decode", bare)):
            fn()  # warm the page cache and the worker start-up paths
            start = time.perf_counter()
            n = fn()
            out[f"{name}_images_per_s"] = n / (time.perf_counter() - start)
        return out


# --- orchestration ---------------------------------------------------------------------------


def bench_orchestration(shards: str, epochs: int = 3) -> dict[str, float]:
    """Steady-state images/s of the mini net through Ray (1 and 2 workers) vs the same loop in
    this process, one thread per worker; and seconds from launch to the first training step."""
    import ray
    from hydra import compose, initialize_config_dir

    from orchestrator.config import register
    from orchestrator.launch.prepare import prepare
    from orchestrator.launch.ray_job import connect, execute
    from orchestrator.runs.record import RunRecord

    register()
    out: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="alexnet-bench-runs-") as runs:
        overrides = [f"data.url={shards}", f"storage.url={runs}", f"epochs={epochs}", "logger=none",
                     "log_every_steps=5", "data.workers=0", "cluster.cpus_per_worker=1"]  # fmt: skip
        out["plain_images_per_s"] = plain_loop(shards, epochs)
        for nodes in (1, 2):
            with initialize_config_dir(config_dir=os.path.join(REPO_ROOT, "conf"), version_base="1.3"):
                cfg = compose("train", overrides=[*overrides, f"cluster.nodes={nodes}", f"run_name=n{nodes}"])
            start = time.time()
            with contextlib.redirect_stdout(io.StringIO()):
                config = prepare(cfg)
                connect(config)
                execute(config)
            record = RunRecord.read(os.path.join(runs, f"n{nodes}"))
            out[f"ray_{nodes}_images_per_s"] = record.images_per_s() or 0.0
            out[f"first_step_seconds_{nodes}"] = record.events("first_step")[0]["time"] - start
            ray.shutdown()
    return out


def plain_loop(shards: str, epochs: int) -> float:
    """The training loop's work (stream, device transform, model, SGD) without Ray, one thread."""
    from orchestrator.data.augment import Augment
    from orchestrator.data.device_transform import DeviceTransform
    from orchestrator.data.shard_reader import load_manifest
    from orchestrator.data.streams import TrainStream

    torch.set_num_threads(1)
    manifest = load_manifest(shards, {})
    model = AlexNet(len(manifest.classes), width=0.25, input_size=112, init="kaiming")
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    transform = DeviceTransform(manifest, torch.device("cpu"), 0.1, channels_last=False, normalize="paper")
    augment = Augment("paper", 112, manifest.settings["resize"])
    rates = []  # per window of 5 steps, as the training loop logs them
    for epoch in range(epochs):
        stream = TrainStream(manifest, shards, {}, seed=0, epoch=epoch, rank=0, world=1, batch_size=64,
                             augment=augment, shuffle_buffer=1000)  # fmt: skip
        start, seen = time.perf_counter(), 0
        for step, (images, labels, _) in enumerate(stream.batches(0, False), 1):
            loss = F.cross_entropy(model(transform(images, train=True)), labels)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            seen += len(labels)
            if step % 5 == 0 and epoch == epochs - 1:
                rates.append(seen / (time.perf_counter() - start))
            if step % 5 == 0:
                start, seen = time.perf_counter(), 0
    torch.set_num_threads(os.cpu_count() or 1)
    return statistics.median(rates)


# --- checkpoints -----------------------------------------------------------------------------


def _wait_for_port(port: int, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        if time.monotonic() > deadline:
            raise RuntimeError(f"moto's server did not start on port {port} within {timeout_s:.0f} s")
        time.sleep(0.2)


def bench_checkpoint() -> dict[str, float]:
    """Save + upload of the paper model's checkpoint (model + SGD momentum) to an S3 server on
    127.0.0.1 vs a raw fsspec put of the same bytes."""
    import s3fs

    from orchestrator import storage
    from orchestrator.worker import checkpoint

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # In its own process, as a storage server is: in this one it shared the allocator (kept
    # blocks, see host_memory) and the interpreter with the client it serves.
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
    options = {"client_kwargs": {"endpoint_url": f"http://127.0.0.1:{port}"}}
    try:
        _wait_for_port(port)
        fs = s3fs.S3FileSystem(**options, skip_instance_cache=True)
        fs.mkdir("bench")
        model = AlexNet()
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        model(torch.randn(2, 3, 224, 224)).sum().backward()
        opt.step()  # momentum buffers exist, as in a real checkpoint
        with tempfile.TemporaryDirectory() as tmp:

            def ours() -> None:
                folder = tempfile.mkdtemp(dir=tmp)
                checkpoint.save(folder, model=model.state_dict(), optimizer=opt.state_dict())
                storage.put_dir(folder, "s3://bench/ours", options)
                shutil.rmtree(folder)  # as the trainer clears its staged copy once uploaded

            raw_file = checkpoint.save(tmp, model=model.state_dict(), optimizer=opt.state_dict())
            size = os.path.getsize(raw_file)

            def raw() -> None:
                fs.put_file(raw_file, "bench/raw/state.pt")

            # in turns, as the train steps are: timed one after the other (the raw put, then
            # ours), this ratio read 0.57 in one run and 0.71-0.80 in turns
            seconds = interleaved_seconds({"ours": ours, "raw": raw}, 3, warmup=1)
        return {"checkpoint_bytes": size, "checkpoint_seconds": seconds["ours"], "raw_put_seconds": seconds["raw"]}
    finally:
        server.terminate()
        server.wait()


# --- GPU -------------------------------------------------------------------------------------


def bench_gpu(batch: int = 256) -> dict[str, float]:
    """The model alone on the GPU: both towers on cuda:0 (grouped and through the split path),
    split over cuda:0/cuda:1 when two exist, vs torchvision's AlexNet; fp32 and bf16."""
    sync = torch.cuda.synchronize
    out: dict[str, Any] = {"gpu": torch.cuda.get_device_name(0), "gpus": torch.cuda.device_count(), "batch": batch}
    placements = {"fused": ("cuda:0", "cuda:0", True), "split_one_gpu": ("cuda:0", "cuda:0", False)}
    if torch.cuda.device_count() > 1:
        placements["split_two_gpus"] = ("cuda:0", "cuda:1", False)
    for precision, dtype in (("fp32", None), ("bf16", torch.bfloat16)):
        for name, (a, b, fused) in placements.items():
            model = AlexNet().place(a, b, fused)
            out[f"{name}_{precision}_images_per_s"] = train_step_rate(model, "cuda:0", dtype, batch, 10, sync)
        out[f"torchvision_{precision}_images_per_s"] = train_step_rate(
            torchvision.models.alexnet(), "cuda:0", dtype, batch, 10, sync
        )
    return out


def ratios(r: dict[str, float]) -> dict[str, float]:
    out = {
        "train_fp32_vs_torchvision": r["train_fp32_images_per_s"] / r["torchvision_fp32_images_per_s"],
        "train_bf16_vs_torchvision_bf16": r["train_bf16_images_per_s"] / r["torchvision_bf16_images_per_s"],
        "train_bf16_vs_torchvision_fp32": r["train_bf16_images_per_s"] / r["torchvision_fp32_images_per_s"],
        # Speed per FLOP: images/s x FLOPs per image, ours over torchvision's (equal work rate: 1.0)
        "train_fp32_per_flop_vs_torchvision": r["train_fp32_images_per_s"]
        * r["train_flops_per_image"]
        / (r["torchvision_fp32_images_per_s"] * r["torchvision_flops_per_image"]),
        "train_bf16_per_flop_vs_torchvision": r["train_bf16_images_per_s"]
        * r["train_flops_per_image"]
        / (r["torchvision_bf16_images_per_s"] * r["torchvision_flops_per_image"]),
        # the same without the LRN (its ReLU kept): the ceiling of the two ratios above
        "train_fp32_no_lrn_vs_torchvision": r["train_fp32_no_lrn_images_per_s"] / r["torchvision_fp32_images_per_s"],
        "train_bf16_no_lrn_vs_torchvision": r["train_bf16_no_lrn_images_per_s"] / r["torchvision_bf16_images_per_s"],
        "train_fp32_gemm_fraction": r["train_fp32_images_per_s"]
        * r["train_flops_per_image"]
        / r["matmul_fp32_flops_per_s"],
        "train_bf16_gemm_fraction": r["train_bf16_images_per_s"]
        * r["train_flops_per_image"]
        / r["matmul_bf16_flops_per_s"],
        # perf.reuse_host_memory: the same step, its large blocks kept vs glibc's default
        "train_fp32_reused_vs_fresh_pages": r["train_fp32_images_per_s"] / r["train_fp32_fresh_pages_images_per_s"],
        "train_bf16_reused_vs_fresh_pages": r["train_bf16_images_per_s"] / r["train_bf16_fresh_pages_images_per_s"],
        "loader_vs_imagefolder": r["loader_images_per_s"] / r["imagefolder_images_per_s"],
        "loader_vs_bare_decode": r["loader_images_per_s"] / r["bare_decode_images_per_s"],
        "ray_vs_plain": r["ray_1_images_per_s"] / r["plain_images_per_s"],
        "ray_2_workers_vs_plain_per_core": r["ray_2_images_per_s"] / 2 / r["plain_images_per_s"],
        "checkpoint_vs_raw_put": r["raw_put_seconds"] / r["checkpoint_seconds"],
        "first_step_seconds": r["first_step_seconds_2"],
    }
    return {k: round(v, 3) for k, v in out.items()}


GOALS = {
    "train_fp32_vs_torchvision": 1.0,
    "train_bf16_vs_torchvision_bf16": 1.3,
    "train_fp32_per_flop_vs_torchvision": 1.0,
    "train_bf16_per_flop_vs_torchvision": 1.0,
    "train_bf16_gemm_fraction": 0.3,
    "loader_vs_imagefolder": 1.5,
    "loader_vs_bare_decode": 0.8,
    "ray_vs_plain": 0.95,
    "checkpoint_vs_raw_put": 0.8,
}


def traffic_figures(found: dict[int, dict[str, Any]]) -> dict[str, float]:
    """gradient_traffic's measurement as flat figures: MB and exposed ms per step, per hook."""
    out = {}
    for world, figures in found.items():
        for hook in COMM_HOOKS:
            out[f"comm_{hook}_mb_per_step_{world}w"] = figures[hook]["bytes_per_step"] / 1e6
            out[f"comm_{hook}_exposed_ms_{world}w"] = 1000 * figures[hook]["exposed_comm_s"]
        for dtype, value in figures["bus_bytes_per_s"].items():
            out[f"comm_bus_{dtype}_gb_per_s_{world}w"] = value / 1e9
    return out


def cpu_info() -> dict[str, Any]:
    """The CPU's model name and its bf16 units (/proc/cpuinfo on Linux): the figures differ
    more between two machines of one kind (a Xeon with AMX, an EPYC with AVX512-BF16 only) than
    between runs."""
    info: dict[str, Any] = {"cpu": platform.processor() or platform.machine(), "cpu_bf16_units": []}
    try:
        with open("/proc/cpuinfo") as f:
            first_cpu = f.read().split("\n\n")[0]
    except OSError:
        return info
    fields = {key.strip(): value.strip() for key, _, value in (line.partition(":") for line in first_cpu.splitlines())}
    flags = fields.get("flags", "").split()
    info["cpu"] = fields.get("model name", info["cpu"])
    info["cpu_bf16_units"] = [f for f in ("amx_bf16", "avx512_bf16") if f in flags]
    return info


def machine() -> dict[str, Any]:
    return {
        **cpu_info(),
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def show(title: str, values: dict[str, float]) -> None:
    table = Table(title=title)
    table.add_column("figure")
    table.add_column("value", justify="right")
    table.add_column("goal", justify="right")
    for key, value in values.items():
        goal = GOALS.get(key)
        mark = "" if goal is None else (f">= {goal}" + (" ok" if value >= goal else " MISSED"))
        if key == "first_step_seconds":
            mark = "<= 20" + (" ok" if value <= 20 else " MISSED")
        table.add_row(key, f"{value:,.3f}" if isinstance(value, float) else str(value), mark)
    Console().print(table)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m orchestrator.tools.bench", description=__doc__)
    parser.add_argument("--gpu", action="store_true", help="the model-only GPU benchmark")
    parser.add_argument("--out", default=os.path.join(REPO_ROOT, "bench.json"))
    parser.add_argument("--shards", default=os.path.join(REPO_ROOT, "data", "shards", "demo"))
    args = parser.parse_args(argv)
    if args.gpu:
        if not torch.cuda.is_available():
            print("error: no CUDA device here; run make bench for the CPU figures")
            return 2
        raw: dict[str, Any] = bench_gpu()
        out = {"machine": machine(), "raw": raw}
        path = args.out.replace(".json", "-gpu.json")
    else:
        raw = {}
        for name, part in (("train step", bench_train_step), ("loader", lambda: bench_loader(os.cpu_count() or 1)),
                           ("orchestration", lambda: bench_orchestration(args.shards)),
                           ("checkpoint", bench_checkpoint)):  # fmt: skip
            print(f"measuring {name} ...", flush=True)
            raw.update(part())
        print("measuring gradient traffic (the paper net, 2 and 4 gloo workers, each ddp.comm_hook) ...", flush=True)
        traffic = gradient_traffic.traffic([2, 4], list(COMM_HOOKS))
        raw.update(traffic_figures(traffic))
        out = {"machine": machine(), "raw": raw, "ratios": {**ratios(raw), **gradient_traffic.ratios(traffic)},
               "goals": GOALS}  # fmt: skip
        path = args.out
    with open(path, "w") as f:
        json.dump(out, f, indent=1)
    show("raw figures", {k: v for k, v in raw.items() if isinstance(v, int | float)})
    if "ratios" in out:
        show("ratios (same run)", out["ratios"])
    print(f"written to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
