"""A training job before it runs, whatever runs it (Ray Train or plain torch.distributed):
the config checked against the shards and the run folder, and the run named."""

from __future__ import annotations

import time

from omegaconf import DictConfig

from orchestrator.config import ConfigError, TrainConfig, validate
from orchestrator.data.shard_reader import load_manifest
from orchestrator.launch.naming import job_names
from orchestrator.runs.folder import RunFolder


def default_run_name(experiment: str) -> str:
    return f"{experiment}-{time.strftime('%Y%m%d-%H%M%S')}"


def prepare(cfg: DictConfig) -> TrainConfig:
    """Everything that can be checked before Ray starts; returns the typed config workers get."""
    config = validate(cfg)
    data = config.data
    manifest = load_manifest(data.url, data.storage_options)
    if "train" not in manifest.splits or "val" not in manifest.splits:
        raise ConfigError(f"data.url={data.url} lacks a train or val split; convert both splits into it")
    short = manifest.settings.get("resize", 0)
    if short < config.model.input_size:
        raise ConfigError(
            f"the shards are {short} px but model.input_size={config.model.input_size}; "
            "pick a smaller model.input_size (e.g. model=alexnet_mini) or reshard with a larger --resize"
        )
    config.run_name, config.logger.group = job_names(config.run_name, config.logger.group)
    if config.run_name is None:
        config.run_name = default_run_name(config.experiment)
    if not config.resume and RunFolder.of(config).exists():
        raise ConfigError(
            f"run {config.run_name} already exists in {config.storage.url}; "
            "pass resume=true to continue it, or choose another run_name"
        )
    return config
