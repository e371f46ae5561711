"""The network as training and evaluation build it: the model from its config, the paper's
optimiser, and the autocast context of the configured precision."""

from __future__ import annotations

import contextlib

import torch

from model import AlexNet
from orchestrator.config import ModelConfig, OptimConfig


def build_model(config: ModelConfig, num_classes: int) -> AlexNet:
    return AlexNet(
        num_classes,
        dropout=config.dropout,
        width=config.width,
        input_size=config.input_size,
        init=config.init,
        lrn=config.lrn,
    )


def make_optimizer(model: torch.nn.Module, config: OptimConfig, lr: float) -> torch.optim.SGD:
    """SGD with momentum; weight decay on weights only, as in Caffe's reference recipe."""
    weights = [p for n, p in model.named_parameters() if n.endswith("weight")]
    biases = [p for n, p in model.named_parameters() if not n.endswith("weight")]
    return torch.optim.SGD(
        [{"params": weights, "weight_decay": config.weight_decay}, {"params": biases, "weight_decay": 0.0}],
        lr=lr,
        momentum=config.momentum,
    )


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """bf16 autocast on the device's type, or nothing for fp32."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
