"""On the device: the uint8 batch becomes float, gets the paper's PCA colour noise and is normalised."""

from __future__ import annotations

import torch

from shards.manifest import Manifest


class DeviceTransform:
    """On the first tower's device: uint8 NHWC -> float NCHW, PCA lighting (train), normalise.

    paper (section 2): raw 0-255 pixels minus the training set's mean pixel, no division, the
    scale the N(0, 0.01) init was made for; the colour noise's eigenvalues are rescaled to the
    same units (x 255: ImageNet's 0.2175, 0.0188, 0.0045 become ChainerCV's 55.46, 4.794, 1.148).
    standard (torchvision): [0, 1] pixels, minus the mean, divided by the std."""

    def __init__(
        self, manifest: Manifest, device: torch.device, lighting: float, channels_last: bool, normalize: str
    ) -> None:
        stats = manifest.stats
        self.scale = 1.0 if normalize == "paper" else 1 / 255
        unit = 255.0 * self.scale  # the manifest's statistics are for [0, 1] pixels
        self.mean = torch.tensor(stats.mean, device=device).view(1, 3, 1, 1) * unit
        self.std = torch.tensor(stats.std, device=device).view(1, 3, 1, 1) if normalize == "standard" else None
        self.eigval = torch.tensor(stats.eigval, device=device) * unit
        self.eigvec = torch.tensor(stats.eigvec, device=device)
        self.device, self.lighting, self.channels_last = device, lighting, channels_last

    def __call__(self, images: torch.Tensor, train: bool) -> torch.Tensor:
        x = images.to(self.device, non_blocking=True).permute(0, 3, 1, 2).float()
        if self.scale != 1.0:
            x = x.mul_(self.scale)
        if train and self.lighting > 0:
            # Paper 4.1: add eigvec @ (alpha * eigval), alpha ~ N(0, 0.1), to every pixel.
            alpha = torch.randn(x.shape[0], 3, device=self.device) * self.lighting
            x = x + (alpha * self.eigval @ self.eigvec.T).view(-1, 3, 1, 1)
        x = x - self.mean
        if self.std is not None:
            x = x / self.std
        return x.contiguous(memory_format=torch.channels_last if self.channels_last else torch.contiguous_format)
