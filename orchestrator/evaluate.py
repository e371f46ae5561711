"""python -m orchestrator.evaluate checkpoint=URL data.url=URL [eval.ten_crop=true]: a
checkpoint's top-1/top-5 on the val split, centre crop (and the paper's 10-crop)."""

from __future__ import annotations

import logging
import os
import sys
import tempfile
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from orchestrator import storage
from orchestrator.config import ConfigError, ModelConfig, absolute, register
from orchestrator.data.device_transform import DeviceTransform
from orchestrator.data.shard_reader import load_manifest
from orchestrator.data.streams import EvalStream, loader
from orchestrator.logs import setup as setup_logging
from orchestrator.worker import checkpoint, host_memory
from orchestrator.worker.evaluation import evaluate
from orchestrator.worker.network import autocast, build_model
from orchestrator.worker.torch_cluster import local_devices

register()
log = logging.getLogger("orchestrator.evaluate")


def fetch_checkpoint(url: str, options: dict[str, Any]) -> dict[str, Any]:
    """A run's checkpoint_* or best folder, or a state.pt file; local or any fsspec URL."""
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


def run(cfg: DictConfig) -> dict[str, dict[str, float]]:
    # every batch allocates the same activations: served from the pages the last one freed
    host_memory.keep_freed_blocks()
    state = fetch_checkpoint(cfg.checkpoint, OmegaConf.to_container(cfg.storage_options))
    data_options = OmegaConf.to_container(cfg.data.storage_options)
    data_url = absolute(cfg.data.url)
    manifest = load_manifest(data_url, data_options)
    trained = state["config"]
    model_config = ModelConfig(**trained["model"])
    model = build_model(model_config, len(manifest.classes))
    try:
        model.load_state_dict(state["model"])
    except RuntimeError:
        raise ConfigError(
            f"the checkpoint was trained on another class count than the {len(manifest.classes)} classes "
            f"in {cfg.data.url}; evaluate it on the dataset it was trained on"
        ) from None
    devices = local_devices(2)
    model.place(devices[0], devices[-1])
    device = model.placement.tower_a
    # Pixels are prepared the way the checkpoint was trained (checkpoints from before
    # data.normalize existed were trained on standardised pixels).
    normalize = trained["data"].get("normalize", "standard")
    transform = DeviceTransform(manifest, device, 0.0, channels_last=False, normalize=normalize)
    results = {}
    for name, ten in (("centre crop", False), ("10-crop", True)):
        if ten and not cfg.eval.ten_crop:
            continue
        val = EvalStream(
            manifest, data_url, data_options, rank=0, world=1, batch_size=cfg.batch_size,
            size=model_config.input_size, ten_crop=ten,
        )  # fmt: skip
        batches = loader(val, cfg.data.workers, device.type == "cuda")
        results[name] = evaluate(model, batches, transform, lambda: autocast(device, cfg.precision), lambda t: t)
        r = results[name]
        log.info(
            "%-12s top-1 %.2f%%  top-5 %.2f%%  loss %.4f  (%d images)",
            name, 100 * r["val/top1"], 100 * r["val/top5"], r["val/loss"], int(r["val/images"]),
        )  # fmt: skip
    return results


@hydra.main(version_base="1.3", config_path="../conf", config_name="evaluate")
def main(cfg: DictConfig) -> None:
    setup_logging()
    try:
        run(cfg)
    except ConfigError as err:
        log.error("%s", err)
        sys.exit(2)


if __name__ == "__main__":
    main()
