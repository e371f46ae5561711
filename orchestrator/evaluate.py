"""Top-1/top-5 on the val split: during training (every rank its share, summed) and as
`python -m orchestrator.evaluate checkpoint=URL data.url=URL [eval.ten_crop=true]`."""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from typing import Any

import hydra
import torch
import torch.distributed as dist
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf

from model import AlexNet
from orchestrator import checkpoint, storage
from orchestrator.config import ConfigError, absolute, register
from orchestrator.data import DeviceTransform, EvalStream, load_manifest, loader

register()


def all_reduce(values: torch.Tensor) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized():
        values = values.cpu() if dist.get_backend() == "gloo" else values
        dist.all_reduce(values)
    return values


@torch.no_grad()
def evaluate(model: AlexNet, batches, transform: DeviceTransform, autocast) -> dict[str, float]:
    """val loss, top-1 and top-5 over this rank's share, summed over all ranks. Ten-crop batches
    (N, 10, H, W, 3) average the softmax of the ten crops, as in the paper."""
    model.eval()
    device = transform.device
    totals = torch.zeros(4, dtype=torch.float64, device=device)
    for images, labels in batches:
        labels = labels.to(device)
        crops = images.shape[1] if images.dim() == 5 else 1
        x = transform(images.flatten(0, 1) if crops > 1 else images, train=False)
        with autocast():
            probs = model(x).float().softmax(1)
        probs = probs.view(len(labels), crops, -1).mean(1)
        top5 = probs.topk(min(5, probs.shape[1]), 1).indices
        totals += torch.stack(
            [
                F.nll_loss(probs.clamp_min(1e-12).log(), labels, reduction="sum"),
                (top5[:, 0] == labels).sum(),
                (top5 == labels[:, None]).any(1).sum(),
                torch.tensor(len(labels), device=device),
            ]
        ).double()
    loss, top1, top5, count = all_reduce(totals).tolist()
    count = max(count, 1)
    return {"val/loss": loss / count, "val/top1": top1 / count, "val/top5": top5 / count, "val/images": count}


def fetch_checkpoint(url: str, options: dict[str, Any]) -> dict[str, Any]:
    """A Ray checkpoint folder, a best/ folder, or a state.pt file; local or any fsspec URL."""
    missing = ConfigError(
        f"checkpoint={url} is not a checkpoint; pass a run's checkpoint_* or best folder, or a state.pt"
    )
    if not url:
        raise missing
    fs, path = storage.filesystem(absolute(url), options)
    if fs.isdir(path):
        path = f"{path.rstrip('/')}/{checkpoint.STATE_FILE}"
    if not fs.isfile(path):
        raise missing
    with tempfile.TemporaryDirectory() as folder:
        local = os.path.join(folder, checkpoint.STATE_FILE)
        fs.get_file(path, local)
        return checkpoint.load(local)


def devices() -> tuple[torch.device, torch.device]:
    count = torch.cuda.device_count()
    if count == 0:
        return torch.device("cpu"), torch.device("cpu")
    return torch.device("cuda:0"), torch.device(f"cuda:{min(1, count - 1)}")


def run(cfg: DictConfig) -> dict[str, dict[str, float]]:
    state = fetch_checkpoint(cfg.checkpoint, OmegaConf.to_container(cfg.storage_options))
    data_options = OmegaConf.to_container(cfg.data.storage_options)
    data_url = absolute(cfg.data.url)
    try:
        manifest = load_manifest(data_url, data_options)
    except FileNotFoundError:
        raise ConfigError(f"data.url={cfg.data.url} holds no manifest.json; point it at the shards") from None
    m = state["config"]["model"]
    model = AlexNet(len(manifest.classes), m["dropout"], m["width"], m["input_size"], m["init"])
    try:
        model.load_state_dict(state["model"])
    except RuntimeError:
        raise ConfigError(
            f"the checkpoint was trained on another class count than the {len(manifest.classes)} classes "
            f"in {cfg.data.url}; evaluate it on the dataset it was trained on"
        ) from None
    model.place(*devices())
    dev = model.placement.tower_a
    transform = DeviceTransform(manifest, dev, 0.0, channels_last=False)

    def autocast():
        bf16 = cfg.precision == "bf16"
        return torch.autocast(dev.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()

    results = {}
    for name, ten in (("centre crop", False), ("10-crop", True)):
        if ten and not cfg.eval.ten_crop:
            continue
        val = EvalStream(
            manifest,
            data_url,
            data_options,
            rank=0,
            world=1,
            batch_size=cfg.batch_size,
            size=m["input_size"],
            ten_crop=ten,
        )
        results[name] = evaluate(model, loader(val, cfg.data.workers, dev.type == "cuda"), transform, autocast)
        r = results[name]
        print(
            f"{name:12s} top-1 {r['val/top1']:.2%}  top-5 {r['val/top5']:.2%}  "
            f"loss {r['val/loss']:.4f}  ({int(r['val/images'])} images)",
            flush=True,
        )
    return results


@hydra.main(version_base="1.3", config_path="../conf", config_name="evaluate")
def main(cfg: DictConfig) -> None:
    try:
        run(cfg)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
