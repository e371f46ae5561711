"""The network only: pure torch, no Ray, Hydra, W&B or fsspec."""

from model.alexnet import PAPER_INPUT_SIZE, AlexNet, Placement, pooled_size

__all__ = ["PAPER_INPUT_SIZE", "AlexNet", "Placement", "pooled_size"]
