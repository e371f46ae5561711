"""Host side, on uint8 images: decoding and the paper's crops and flips (training), the centre
or ten crops (test time), straight into one batch tensor."""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

import numpy as np
import simplejpeg
import torch
from PIL import Image
from torchvision.transforms import v2

from orchestrator.data.bad_samples import DataError, Skips


def decode_rgb(jpg: bytes) -> np.ndarray:
    """HWC uint8 RGB. simplejpeg (libjpeg-turbo) decodes the shards' JPEGs ~1.6x faster than PIL
    here (make bench); anything else, or a damaged file, goes to PIL, which raises OSError."""
    try:
        return simplejpeg.decode_jpeg(jpg, colorspace="RGB")
    except ValueError:
        with Image.open(io.BytesIO(jpg)) as img:
            return np.array(img.convert("RGB"))  # writable: the crop becomes a tensor view of it


def fits(image: np.ndarray, size: int) -> tuple[int, int]:
    """The image's height and width, once it is known to hold a `size` crop."""
    h, w, _ = image.shape
    if h < size or w < size:
        raise ValueError(f"image is {w}x{h}, smaller than the {size} crop")
    return h, w


def _offset(room: int) -> int:
    return int(torch.randint(0, room + 1, ()).item()) if room > 0 else 0


class Augment:
    """Host side, on uint8 HWC arrays: the crop and flip. Float conversion happens on the device.

    paper: the centre square of the (short side = `short_side`) image, a random `size` crop of it
    and a random flip, as array slices of the decoded image (no resampling, no copy until the
    batch is stacked). inception: torchvision's
    RandomResizedCrop and flip. Random numbers come from torch's generator, seeded per batch."""

    def __init__(self, kind: str, size: int, short_side: int) -> None:
        self.kind, self.size, self.short_side = kind, size, short_side
        self.inception = v2.Compose([v2.RandomResizedCrop(size, antialias=True), v2.RandomHorizontalFlip()])

    def __call__(self, jpg: bytes) -> np.ndarray | torch.Tensor:
        image = decode_rgb(jpg)
        if self.kind == "inception":
            return np.asarray(self.inception(Image.fromarray(image)))
        h, w = fits(image, self.size)
        square = min(self.short_side, h, w)
        top = (h - square) // 2 + _offset(square - self.size)
        left = (w - square) // 2 + _offset(square - self.size)
        crop = torch.from_numpy(image[top : top + self.size, left : left + self.size])
        # torch's flip: 10 us for a 224 px crop; numpy copying a reversed view pixel by pixel: 160
        return crop.flip(1) if torch.rand(()) < 0.5 else crop


class EvalCrop:
    """Test-time views of one image. Centre: the centre `size` crop. Ten (paper 4.1): the four
    corner and the centre `size` patches of the central `short_side` square, and their
    reflections, as (10, size, size, 3); not the corners of the whole non-square image."""

    def __init__(self, size: int, short_side: int, ten: bool) -> None:
        self.size, self.short_side, self.ten = size, short_side, ten

    def __call__(self, jpg: bytes) -> np.ndarray:
        image = decode_rgb(jpg)
        h, w = fits(image, self.size)
        if not self.ten:  # the centre of the central square is the centre of the image
            top, left = (h - self.size) // 2, (w - self.size) // 2
            return image[top : top + self.size, left : left + self.size]
        side = min(self.short_side, h, w)
        top, left = (h - side) // 2, (w - side) // 2
        square = torch.from_numpy(np.ascontiguousarray(image[top : top + side, left : left + side]))
        crops = v2.functional.ten_crop(square.permute(2, 0, 1), [self.size, self.size])
        return torch.stack(crops).permute(0, 2, 3, 1).numpy()


def decode_batch(
    batch: list[dict[str, Any]],
    decode: Callable[[bytes], np.ndarray | torch.Tensor],
    skips: Skips,
    out: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode and crop into one uint8 batch; an image that fails to decode is dropped (the batch
    is one smaller). Crops are written straight into the batch tensor (`out` when given): no
    stacking copy."""
    images: torch.Tensor | None = out
    labels = []
    for s in batch:
        try:
            image, label = decode(s["jpg"]), int(s["cls"])
        except (OSError, ValueError, SyntaxError) as err:  # what the decoders raise for broken files
            skips.add(1, s["__url__"], f"sample {s['__key__']} does not decode ({err})")
            continue
        if not isinstance(image, torch.Tensor):
            image = torch.from_numpy(np.ascontiguousarray(image))
        if images is None:
            images = torch.empty((len(batch), *image.shape), dtype=torch.uint8)
        images[len(labels)] = image
        labels.append(label)
    if not labels:
        raise DataError(f"no image of a batch from {batch[0]['__url__']} decodes; rebuild that shard")
    assert images is not None
    return images[: len(labels)], torch.tensor(labels)
