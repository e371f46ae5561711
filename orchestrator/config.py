"""The typed schema of conf/train.yaml. Hydra composes YAML onto these dataclasses (a wrong type
fails at composition); `validate` turns the composed config into them (`OmegaConf.to_object`),
which runs each one's `__post_init__`: every rule sits beside the field it checks, and every
broken rule is one ConfigError sentence naming the key and the fix. Workers receive the
dataclasses, so a typo'd key is an AttributeError here, not a KeyError on a remote worker."""

from __future__ import annotations

import dataclasses
import os
import re
import typing
from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from model import pooled_size
from model.alexnet import LRN_MODES

RUN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.,=+-]*")
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GOYAL_WARMUP_EPOCHS = 5.0  # "Accurate, Large Minibatch SGD" (2017): gradual warm-up with scaled lrs
SWEEP_LAUNCHER = "hydra_plugins.alexnet_orchestrator.ray_tune_launcher.RayTuneLauncher"
SECRET_WORDS = ("key", "secret", "token", "password", "credential")


class ConfigError(ValueError):
    """A bad configuration value: one sentence naming the key and what to do."""


COMM_HOOKS = ("none", "bf16", "fp16", "powersgd")  # ddp.comm_hook (orchestrator/worker/gradients.py)
PLACEMENT_STRATEGIES = ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD")  # Ray's placement-group strategies


def one_of(key: str, value: str, options: tuple[str, ...]) -> None:
    if value not in options:
        raise ConfigError(f"{key}={value!r} is not one of {', '.join(options)}; pick one of those")


def at_least(key: str, value: float, low: float) -> None:
    if value < low:
        raise ConfigError(f"{key}={value} must be at least {low}")


def positive(key: str, value: float) -> None:
    if not value > 0:
        raise ConfigError(f"{key}={value} must be greater than 0")


def within(key: str, value: float, low: float, high: float, *, high_included: bool = True) -> None:
    if not (low <= value <= high if high_included else low <= value < high):
        raise ConfigError(f"{key}={value} must be in [{low:g}, {high:g}{']' if high_included else ')'}")


def secret_keys(options: dict[str, Any], prefix: str = "") -> list[str]:
    """Option names that hold credentials, at any depth (client_kwargs.aws_secret_access_key)."""
    found = []
    for name, value in options.items():
        if isinstance(value, dict):
            found += secret_keys(value, f"{prefix}{name}.")
        elif any(word in name.lower() for word in SECRET_WORDS):
            found.append(prefix + name)
    return found


def no_secrets(key: str, options: dict[str, Any]) -> None:
    secret = secret_keys(options)
    if secret:
        raise ConfigError(
            f"{key} holds a credential ({secret[0]}); put credentials in the environment "
            "(AWS_ACCESS_KEY_ID, ...) or a profile, never in the config"
        )


def absolute(url: str) -> str:
    """Ray workers run in another directory: local paths become absolute before they travel."""
    if url.startswith("file://"):
        return "file://" + os.path.abspath(url.removeprefix("file://"))
    return url if "://" in url else os.path.abspath(url)


@dataclass
class ModelConfig:
    name: str = "alexnet"
    width: float = 1.0
    input_size: int = 224
    dropout: float = 0.5
    init: str = "paper"  # paper | kaiming
    placement: str = "auto"  # auto | split | single
    # compiled: ReLU + LRN as two torch.compile'd passes (a CPU train step 1.25-1.45x fp32, 1.6x bf16, make bench);
    # eager: the hand-written backward, no compile at start
    lrn: str = "compiled"

    def __post_init__(self) -> None:
        one_of("model.placement", self.placement, ("auto", "split", "single"))
        one_of("model.lrn", self.lrn, LRN_MODES)
        one_of("model.init", self.init, ("paper", "kaiming"))
        positive("model.width", self.width)
        within("model.dropout", self.dropout, 0.0, 1.0, high_included=False)
        if pooled_size(self.input_size) < 1:
            raise ConfigError(f"model.input_size={self.input_size} is too small for AlexNet; use at least 63")


@dataclass
class DataConfig:
    url: str = MISSING  # shards root holding manifest.json
    workers: int = 2  # loader processes per Ray worker
    augment: str = "paper"  # paper | inception
    # paper: raw 0-255 pixels minus the training set's mean (section 2), what the N(0, 0.01)
    # init assumes; standard: [0, 1] pixels minus the mean, divided by the std (torchvision)
    normalize: str = "paper"
    storage_options: dict[str, Any] = field(default_factory=dict)
    shuffle_buffer: int = 2000
    lighting: float = 0.1  # std of the paper's PCA colour noise; 0 turns it off
    max_skipped_fraction: float = 0.01  # more unreadable samples than this stops the run
    allow_pipe: bool = False  # let data.url be a webdataset pipe: command (runs a shell)

    def __post_init__(self) -> None:
        one_of("data.augment", self.augment, ("paper", "inception"))
        one_of("data.normalize", self.normalize, ("paper", "standard"))
        at_least("data.workers", self.workers, 0)
        at_least("data.shuffle_buffer", self.shuffle_buffer, 1)
        at_least("data.lighting", self.lighting, 0)
        within("data.max_skipped_fraction", self.max_skipped_fraction, 0.0, 1.0)
        no_secrets("data.storage_options", self.storage_options)
        if self.url == MISSING:
            return
        if not self.url:
            raise ConfigError("data.url is empty; point it at a shards folder holding manifest.json")
        if self.url.startswith("pipe:"):
            if not self.allow_pipe:
                raise ConfigError(
                    "data.url is a pipe: command, which would run in a shell; use a path or fsspec URL, "
                    "or set data.allow_pipe=true if you mean it"
                )
        else:
            self.url = absolute(self.url)


@dataclass
class OptimConfig:
    name: str = "sgd"
    lr: float = 0.01  # at reference_batch images per step
    momentum: float = 0.9
    weight_decay: float = 5e-4
    # linear: lr x global batch / reference_batch (Goyal et al. 2017), the paper's 0.01 being
    # for its batch of 128; none: lr as given, whatever the global batch
    scale_lr: str = "none"
    reference_batch: int = 128
    # batches per optimizer step: gradients of `accumulate` batches are summed (all-reduced once,
    # with DDP's no_sync on the others), so the global batch is batch_size x nodes x accumulate
    accumulate: int = 1

    def __post_init__(self) -> None:
        one_of("optim.name", self.name, ("sgd",))
        at_least("optim.accumulate", self.accumulate, 1)
        positive("optim.lr", self.lr)
        within("optim.momentum", self.momentum, 0.0, 1.0, high_included=False)
        at_least("optim.weight_decay", self.weight_decay, 0)
        one_of("optim.scale_lr", self.scale_lr, ("none", "linear"))
        at_least("optim.reference_batch", self.reference_batch, 1)


@dataclass
class DDPConfig:
    """How gradients cross workers (orchestrator/worker/gradients.py)."""

    comm_hook: str = "none"  # none | bf16 | fp16 | powersgd
    powersgd_rank: int = 4  # powersgd: the rank of each gradient matrix's approximation
    powersgd_start_step: int = 1000  # powersgd: plain all-reduce before this step
    bucket_cap_mb: float = 25.0  # DDP's bucket size: bigger buckets, fewer all-reduce calls

    def __post_init__(self) -> None:
        one_of("ddp.comm_hook", self.comm_hook, COMM_HOOKS)
        at_least("ddp.powersgd_rank", self.powersgd_rank, 1)
        at_least("ddp.powersgd_start_step", self.powersgd_start_step, 1)
        positive("ddp.bucket_cap_mb", self.bucket_cap_mb)


@dataclass
class ScheduleConfig:
    name: str = "plateau"  # plateau | step | cosine
    factor: float = 0.1  # plateau and step: multiply lr by this
    patience: int = 1  # plateau: epochs without val improvement before dividing
    max_reductions: int = 3  # plateau: the paper divided by 10 three times
    step_epochs: int = 30  # step: every this many epochs
    # every schedule: the lr rises linearly from ~0 over these epochs; unset: Goyal et al.'s 5
    # when optim.scale_lr raises the lr above optim.lr (several workers), else none
    warmup_epochs: float | None = None

    def __post_init__(self) -> None:
        one_of("schedule.name", self.name, ("plateau", "step", "cosine"))
        positive("schedule.factor", self.factor)
        at_least("schedule.patience", self.patience, 0)
        at_least("schedule.max_reductions", self.max_reductions, 0)
        at_least("schedule.step_epochs", self.step_epochs, 1)
        if self.warmup_epochs is not None:
            at_least("schedule.warmup_epochs", self.warmup_epochs, 0)


@dataclass
class ClusterConfig:
    # Ray Train workers, and each one's GPUs (2: the paper's split). Unset on an embedded Ray:
    # fitted to this machine (no GPU: 2 CPU workers; 1 GPU: 1 worker, both towers on it;
    # 2-3: 1 worker, one tower per GPU; 2k: k workers of 2); set, they must fit, or are refused.
    nodes: int | None = None
    gpus_per_worker: int | None = None
    cpus_per_worker: float = 1.0
    address: str | None = None  # Ray cluster to join; RAY_ADDRESS when unset
    max_failures: int = 3
    placement_timeout_s: float = 120.0
    # Ray's placement of the workers: PACK fills a node before the next (fewest hops between
    # workers), SPREAD puts them on different nodes (one node lost costs one worker)
    placement_strategy: str = "PACK"

    def __post_init__(self) -> None:
        if self.nodes is not None:
            at_least("cluster.nodes", self.nodes, 1)
        if self.gpus_per_worker is not None:
            at_least("cluster.gpus_per_worker", self.gpus_per_worker, 0)
        positive("cluster.cpus_per_worker", self.cpus_per_worker)
        at_least("cluster.max_failures", self.max_failures, -1)
        positive("cluster.placement_timeout_s", self.placement_timeout_s)
        one_of("cluster.placement_strategy", self.placement_strategy, PLACEMENT_STRATEGIES)


@dataclass
class StorageConfig:
    url: str = "runs"  # root of all runs: a path, file://, s3://, gs://
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        no_secrets("storage.options", self.options)
        self.url = absolute(self.url)


@dataclass
class LoggerConfig:
    project: str = "alexnet"
    group: str | None = None
    mode: str | None = None  # online | offline | disabled; unset: online iff WANDB_API_KEY is set
    tags: list[str] = field(default_factory=list)
    # W&B's local files when the run folder is not on local disk (else they sit beside the
    # run's metrics); relative to where the job was launched
    dir: str = "wandb-runs"

    def __post_init__(self) -> None:
        if self.mode is not None:
            one_of("logger.mode", self.mode, ("online", "offline", "disabled"))
        self.dir = os.path.abspath(self.dir)


@dataclass
class CheckpointConfig:
    every_steps: int = 500
    keep: int = 2

    def __post_init__(self) -> None:
        at_least("checkpoint.every_steps", self.every_steps, 1)
        at_least("checkpoint.keep", self.keep, 1)


@dataclass
class EvalConfig:
    ten_crop: bool = False


@dataclass
class PerfConfig:
    # Every this many steps, on the split path (a tower per device), one batch is also run
    # with each tower's forward and backward and the crossings timed apart (0: never).
    profile_every_steps: int = 500
    # Keep large freed host blocks for the next step instead of unmapping them (glibc; see
    # orchestrator/host_memory.py): a CPU train step 1.2-1.3x faster; the process keeps its peak.
    reuse_host_memory: bool = True

    def __post_init__(self) -> None:
        at_least("perf.profile_every_steps", self.profile_every_steps, 0)


SCHEDULERS = ("none", "asha", "sha", "hyperband")


@dataclass
class SweepConfig:
    parallel: int = 1  # multirun runs at once (Ray Tune trials); each needs nodes x gpus_per_worker GPUs
    # Early stopping on val top-1 per epoch (orchestrator/sweeps/schedulers.py): none | asha | sha | hyperband
    scheduler: str = "sha"
    grace_period: int = 1  # asha, sha: epochs every run gets before it can be stopped
    reduction_factor: int = 2  # 1/reduction_factor of the runs go on at each rung
    # asha: a run that passed a rung before better runs reached it is stopped once they have
    # (orchestrator/sweeps/schedulers.py, stopping_gracefully); false: Tune's ASHA as it is
    rejudge: bool = True

    def __post_init__(self) -> None:
        at_least("sweep.parallel", self.parallel, 1)
        one_of("sweep.scheduler", self.scheduler, SCHEDULERS)
        at_least("sweep.grace_period", self.grace_period, 1)
        at_least("sweep.reduction_factor", self.reduction_factor, 2)


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    ddp: DDPConfig = field(default_factory=DDPConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    perf: PerfConfig = field(default_factory=PerfConfig)
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
    # Stop after this epoch with a checkpoint, the schedule still spanning `epochs`; resume=true
    # continues exactly there (a time-boxed allocation; sweep.scheduler=sha's rungs). null: `epochs`
    until_epoch: int | None = None

    def __post_init__(self) -> None:
        at_least("batch_size", self.batch_size, 1)
        at_least("epochs", self.epochs, 1)
        if self.until_epoch is not None:
            at_least("until_epoch", self.until_epoch, 1)
        at_least("log_every_steps", self.log_every_steps, 1)
        one_of("precision", self.precision, ("fp32", "bf16"))
        if self.run_name is not None and not RUN_NAME.fullmatch(self.run_name):
            raise ConfigError(f"run_name={self.run_name!r} may hold only letters, digits and - _ . , =")
        if self.resume and self.run_name is None:
            raise ConfigError("resume=true needs the run to continue; add run_name=<its name> (see runs/)")

    @property
    def global_batch(self) -> int:
        if self.cluster.nodes is None:
            raise ValueError("cluster.nodes is decided when the job meets its cluster; ask after that")
        return self.batch_size * self.cluster.nodes * self.optim.accumulate

    @property
    def lr(self) -> float:
        """The learning rate training uses: optim.lr, scaled to the global batch if asked."""
        if self.optim.scale_lr == "linear":
            return self.optim.lr * self.global_batch / self.optim.reference_batch
        return self.optim.lr

    @property
    def warmup_epochs(self) -> float:
        if self.schedule.warmup_epochs is not None:
            return self.schedule.warmup_epochs
        return GOYAL_WARMUP_EPOCHS if self.lr > self.optim.lr else 0.0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


HIDDEN = ("options", "storage_options")  # fsspec options may hold keys and tokens


def public_config(config: TrainConfig | dict[str, Any]) -> dict[str, Any]:
    """The config as plain data with every storage option's value hidden: safe for W&B, logs
    and files."""
    data = config.to_dict() if isinstance(config, TrainConfig) else config
    if isinstance(config, TrainConfig):  # what the settings amount to, for W&B and compare
        data["effective"] = {
            "lr": config.lr,
            "global_batch": config.global_batch,
            "warmup_epochs": config.warmup_epochs,
        }
    out = {}
    for key, value in data.items():
        if key in HIDDEN and isinstance(value, dict):
            out[key] = dict.fromkeys(value, "<hidden>")
        elif isinstance(value, dict):
            out[key] = public_config(value)
        else:
            out[key] = value
    return out


def register() -> None:
    """The schema as `train_schema` for conf/train.yaml, ${repo:path} for paths in this repo, and
    the sweep launcher's config (`hydra/launcher: ray_tune`, named by its class so that composing
    needs no import of it). The launcher class itself is registered by `python -m orchestrator.train`,
    the one verb that sweeps: Hydra finds plugins by listing the `hydra_plugins` folders on
    sys.path, which misses an editable install's (and this repo's when run from elsewhere)."""
    ConfigStore.instance().store(name="train_schema", node=TrainConfig)
    ConfigStore.instance().store(
        group="hydra/launcher", name="ray_tune", node={"_target_": SWEEP_LAUNCHER}, provider="alexnet"
    )
    OmegaConf.register_new_resolver("repo", lambda path: os.path.join(REPO_ROOT, path), replace=True)


def unknown_keys(cfg: DictConfig, schema: type = TrainConfig, prefix: str = "") -> list[str]:
    """Keys of a composed config that the schema does not have. Hydra lets `+key=value` add
    any key, even to a structured config; OmegaConf.to_object would then drop it silently."""
    hints = typing.get_type_hints(schema)
    found = []
    for key in cfg:
        if key not in hints:
            found.append(f"{prefix}{key}")
        elif dataclasses.is_dataclass(hints[key]):
            found += unknown_keys(cfg[key], hints[key], f"{prefix}{key}.")
    return found


def unknown_key_problem(key: str) -> str:
    return f"{key} is not in the config schema; check the spelling (--cfg job lists every key)"


def validate(cfg: DictConfig) -> TrainConfig:
    """The composed config as checked dataclasses, or one ConfigError sentence."""
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise ConfigError(f"{missing[0]} is required; set it, e.g. {missing[0]}=s3://bucket/imagenet")
    unknown = unknown_keys(cfg)
    if unknown:
        raise ConfigError(unknown_key_problem(unknown[0]))
    return OmegaConf.to_object(cfg)
