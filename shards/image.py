"""One image in, one shard-ready JPEG out; and the pixel statistics training normalises with."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

# Statistics need the colour distribution, not detail: decoding small is ~10x cheaper.
STATS_SIDE = 64


def short_side_size(width: int, height: int, short: int) -> tuple[int, int]:
    if width <= height:
        return short, max(1, round(height * short / width))
    return max(1, round(width * short / height)), short


def to_jpeg(data: bytes, resize: int, quality: int) -> tuple[bytes, int, int]:
    """Decode anything PIL opens (CMYK, grayscale, palette, PNG under a .JPEG name), convert to
    RGB, resize the short side to exactly `resize`, re-encode as JPEG."""
    with Image.open(io.BytesIO(data)) as img:
        size = short_side_size(*img.size, resize)  # from the original: draft sizes round
        # JPEG draft mode decodes at 1/2, 1/4 or 1/8 scale while staying >= the target size.
        img.draft("RGB", size)
        rgb = img.convert("RGB")
    if rgb.size != size:
        rgb = rgb.resize(size, Image.Resampling.BICUBIC, reducing_gap=3.0)
    out = io.BytesIO()
    rgb.save(out, format="JPEG", quality=quality)
    return out.getvalue(), rgb.width, rgb.height


class PixelMoments:
    """Running sums of RGB pixels in [0, 1]: enough for mean, std and the covariance's PCA."""

    def __init__(self) -> None:
        self.pixels = 0
        self.images = 0
        self.sum = np.zeros(3)
        self.outer = np.zeros((3, 3))

    def add_image(self, data: bytes) -> None:
        with Image.open(io.BytesIO(data)) as img:
            img.draft("RGB", (STATS_SIDE, STATS_SIDE))
            rgb = img.convert("RGB")
        rgb.thumbnail((STATS_SIDE, STATS_SIDE))
        x = np.asarray(rgb, dtype=np.float64).reshape(-1, 3) / 255.0
        self.pixels += len(x)
        self.images += 1
        self.sum += x.sum(0)
        self.outer += x.T @ x

    def merge(self, other: PixelMoments) -> None:
        self.pixels += other.pixels
        self.images += other.images
        self.sum += other.sum
        self.outer += other.outer

    def finish(self) -> dict:
        mean = self.sum / self.pixels
        cov = self.outer / self.pixels - np.outer(mean, mean)
        eigval, eigvec = np.linalg.eigh(cov)
        order = eigval.argsort()[::-1]
        return {
            "mean": mean.tolist(),
            "std": np.sqrt(np.diag(cov)).tolist(),
            "eigval": eigval[order].tolist(),
            "eigvec": eigvec[:, order].tolist(),
            "images": self.images,
        }
