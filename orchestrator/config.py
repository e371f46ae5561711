"""The typed schema of conf/train.yaml. Hydra composes YAML onto these dataclasses (so a wrong
type or an unknown key fails at composition); `validate` checks values before Ray starts."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from model import pooled_size

RUN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.,=+-]*")
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class ConfigError(ValueError):
    """A bad configuration value: one sentence naming the key and what to do."""


@dataclass
class ModelConfig:
    name: str = "alexnet"
    width: float = 1.0
    input_size: int = 224
    dropout: float = 0.5
    init: str = "paper"  # paper | kaiming
    placement: str = "auto"  # auto | split | single


@dataclass
class DataConfig:
    url: str = MISSING  # shards root holding manifest.json
    workers: int = 2  # loader processes per Ray worker
    augment: str = "paper"  # paper | inception
    storage_options: dict[str, Any] = field(default_factory=dict)
    shuffle_buffer: int = 2000
    lighting: float = 0.1  # std of the paper's PCA colour noise; 0 turns it off
    max_skipped_fraction: float = 0.01  # more unreadable samples than this stops the run
    allow_pipe: bool = False  # let data.url be a webdataset pipe: command (runs a shell)


@dataclass
class OptimConfig:
    name: str = "sgd"
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4


@dataclass
class ScheduleConfig:
    name: str = "plateau"  # plateau | step | cosine
    factor: float = 0.1  # plateau and step: multiply lr by this
    patience: int = 1  # plateau: epochs without val improvement before dividing
    max_reductions: int = 3  # plateau: the paper divided by 10 three times
    step_epochs: int = 30  # step: every this many epochs
    warmup_epochs: float = 0.0  # cosine: linear warm-up


@dataclass
class ClusterConfig:
    nodes: int = 2  # Ray Train workers
    gpus_per_worker: int = 2
    cpus_per_worker: float = 1.0
    address: str | None = None  # Ray cluster to join; RAY_ADDRESS when unset
    max_failures: int = 3
    placement_timeout_s: float = 120.0


@dataclass
class StorageConfig:
    url: str = "runs"  # root of all runs: a path, file://, s3://, gs://
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class LoggerConfig:
    project: str = "alexnet"
    group: str | None = None
    mode: str | None = None  # online | offline | disabled; unset: online iff WANDB_API_KEY is set
    tags: list[str] = field(default_factory=list)


@dataclass
class CheckpointConfig:
    every_steps: int = 500
    keep: int = 2


@dataclass
class EvalConfig:
    ten_crop: bool = False


@dataclass
class SweepConfig:
    parallel: int = 1  # multirun jobs at once; each needs nodes x gpus_per_worker GPUs


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)
    experiment: str = "demo"
    batch_size: int = 128  # per worker
    epochs: int = 90
    seed: int = 0
    precision: str = "fp32"  # fp32 | bf16
    channels_last: bool = False
    compile: bool = False
    log_every_steps: int = 20
    run_name: str | None = None
    resume: bool = False


def register() -> None:
    """The schema as `train_schema` for conf/train.yaml, and ${repo:path} for paths in this repo."""
    ConfigStore.instance().store(name="train_schema", node=TrainConfig)
    OmegaConf.register_new_resolver("repo", lambda path: os.path.join(REPO_ROOT, path), replace=True)


def _choice(key: str, value: str, options: tuple[str, ...]) -> None:
    if value not in options:
        raise ConfigError(f"{key}={value!r} is not one of {', '.join(options)}; pick one of those")


def _at_least(key: str, value: float, low: float) -> None:
    if value < low:
        raise ConfigError(f"{key}={value} must be at least {low}")


def _positive(key: str, value: float) -> None:
    if not value > 0:
        raise ConfigError(f"{key}={value} must be greater than 0")


def is_local_path(url: str) -> bool:
    return "://" not in url or url.startswith("file://")


def absolute(url: str) -> str:
    """Ray workers run in another directory: local paths become absolute before they travel."""
    if url.startswith("file://"):
        return "file://" + os.path.abspath(url.removeprefix("file://"))
    return url if "://" in url else os.path.abspath(url)


SECRET_WORDS = ("key", "secret", "token", "password", "credential")


def secret_keys(options: dict[str, Any], prefix: str = "") -> list[str]:
    """Option names that hold credentials, at any depth (client_kwargs.aws_secret_access_key)."""
    found = []
    for name, value in options.items():
        if isinstance(value, dict):
            found += secret_keys(value, f"{prefix}{name}.")
        elif any(word in name.lower() for word in SECRET_WORDS):
            found.append(prefix + name)
    return found


def validate(cfg: DictConfig) -> dict[str, Any]:
    """Check every value a user can get wrong; return the resolved config as a plain dict."""
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise ConfigError(f"{missing[0]} is required; set it, e.g. {missing[0]}=s3://bucket/imagenet")
    c = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    m, d, o, s, cl = c["model"], c["data"], c["optim"], c["schedule"], c["cluster"]
    _choice("model.placement", m["placement"], ("auto", "split", "single"))
    _choice("model.init", m["init"], ("paper", "kaiming"))
    _positive("model.width", m["width"])
    if not 0.0 <= m["dropout"] < 1.0:
        raise ConfigError(f"model.dropout={m['dropout']} must be in [0, 1)")
    if pooled_size(m["input_size"]) < 1:
        raise ConfigError(f"model.input_size={m['input_size']} is too small for AlexNet; use at least 63")
    _choice("data.augment", d["augment"], ("paper", "inception"))
    _at_least("data.workers", d["workers"], 0)
    _at_least("data.shuffle_buffer", d["shuffle_buffer"], 1)
    _at_least("data.lighting", d["lighting"], 0)
    if not d["url"]:
        raise ConfigError("data.url is empty; point it at a shards folder holding manifest.json")
    if d["url"].startswith("pipe:") and not d["allow_pipe"]:
        raise ConfigError(
            "data.url is a pipe: command, which would run in a shell; use a path or fsspec URL, "
            "or set data.allow_pipe=true if you mean it"
        )
    if not 0.0 <= d["max_skipped_fraction"] <= 1.0:
        raise ConfigError(f"data.max_skipped_fraction={d['max_skipped_fraction']} must be in [0, 1]")
    for key in ("data.storage_options", "storage.options"):
        group, name = key.split(".")
        secret = secret_keys(c[group][name])
        if secret:
            raise ConfigError(
                f"{key} holds a credential ({secret[0]}); put credentials in the environment "
                "(AWS_ACCESS_KEY_ID, ...) or a profile, never in the config"
            )
    _choice("optim.name", o["name"], ("sgd",))
    _positive("optim.lr", o["lr"])
    if not 0.0 <= o["momentum"] < 1.0:
        raise ConfigError(f"optim.momentum={o['momentum']} must be in [0, 1)")
    _at_least("optim.weight_decay", o["weight_decay"], 0)
    _choice("schedule.name", s["name"], ("plateau", "step", "cosine"))
    _positive("schedule.factor", s["factor"])
    _at_least("schedule.step_epochs", s["step_epochs"], 1)
    _at_least("cluster.nodes", cl["nodes"], 1)
    _at_least("cluster.gpus_per_worker", cl["gpus_per_worker"], 0)
    _positive("cluster.cpus_per_worker", cl["cpus_per_worker"])
    _at_least("cluster.max_failures", cl["max_failures"], -1)
    _positive("cluster.placement_timeout_s", cl["placement_timeout_s"])
    if c["logger"]["mode"] is not None:
        _choice("logger.mode", c["logger"]["mode"], ("online", "offline", "disabled"))
    _at_least("checkpoint.every_steps", c["checkpoint"]["every_steps"], 1)
    _at_least("checkpoint.keep", c["checkpoint"]["keep"], 1)
    _at_least("sweep.parallel", c["sweep"]["parallel"], 1)
    _at_least("batch_size", c["batch_size"], 1)
    _at_least("epochs", c["epochs"], 1)
    _at_least("log_every_steps", c["log_every_steps"], 1)
    _choice("precision", c["precision"], ("fp32", "bf16"))
    if c["run_name"] is not None and not RUN_NAME.fullmatch(c["run_name"]):
        raise ConfigError(f"run_name={c['run_name']!r} may hold only letters, digits and - _ . , =")
    d["url"] = d["url"] if d["url"].startswith("pipe:") else absolute(d["url"])
    c["storage"]["url"] = absolute(c["storage"]["url"])
    return c
