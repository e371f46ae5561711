"""The 2012 two-tower AlexNet (Krizhevsky, Sutskever & Hinton), split exactly where the paper
split it across its two GPUs.

Each tower owns half of every layer. C1, C2, C4 and C5 read only their own tower; C3, F6, F7
and F8 read both towers, so those four are the only places where activations cross devices.

Input size: 224 with conv1 padding 2 (torchvision's choice) rather than Caffe's 227 without
padding. Both give the paper's 55x55x96 after C1, but 224 is the crop size the paper states
and the one every modern ImageNet pipeline produces, so shards and crops need no special case.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

# Per tower: kernels of C1..C5, then neurons of F6 and F7 (paper, section 3.5).
PAPER_TOWER_WIDTHS = (48, 128, 192, 192, 128, 2048)
PAPER_INPUT_SIZE = 224
INITS = ("paper", "kaiming")


def stage_sizes(input_size: int) -> tuple[int, int, int, int]:
    """Spatial sizes after C1 (11/4, pad 2) and after each of the three 3/2 max-pools; C2-C5
    keep the size they are given. 224 -> (55, 27, 13, 6), the paper's figure 2."""
    sizes = [(input_size + 2 * 2 - 11) // 4 + 1]
    for _ in range(3):
        sizes.append((sizes[-1] - 3) // 2 + 1)
    return tuple(sizes)


def pooled_size(input_size: int) -> int:
    """Spatial size of pool5's output, what F6 reads."""
    return stage_sizes(input_size)[-1]


def _window_mean(t: torch.Tensor, size: int, groups: int) -> torch.Tensor:
    """Mean over `size` adjacent channels (zero-padded at each tower's edges), computed as a 1-D
    average over the channel axis of channels-last memory, where the reshape is a view."""
    n, c, h, w = t.shape
    rows = t.permute(0, 2, 3, 1).reshape(n * h * w * groups, 1, c // groups)
    mean = F.avg_pool1d(rows, size, stride=1, padding=size // 2)
    return mean.view(n, h, w, c).permute(0, 3, 1, 2)


class _LRN(torch.autograd.Function):
    """y = x * s^-beta with s = k + alpha * mean_window(x^2). The backward is written out,
    grad = g * s^-beta - 2 * alpha * beta * x * mean_window(g * y / s), instead of autograd
    walking a chain of five memory-bound ops and keeping each one's output."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, size: int, alpha: float, beta: float, k: float, groups: int) -> torch.Tensor:
        s = _window_mean(x * x, size, groups).mul(alpha).add(k)
        inv = s.pow(-beta)
        y = x * inv
        ctx.save_for_backward(x, s, inv, y)
        ctx.size, ctx.alpha, ctx.beta, ctx.groups = size, alpha, beta, groups
        return y

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        x, s, inv, y = ctx.saved_tensors
        spread = _window_mean(g * y / s, ctx.size, ctx.groups)
        grad = g * inv - (2 * ctx.alpha * ctx.beta) * x * spread
        return grad, None, None, None, None, None


def _channel_rows(t: torch.Tensor, groups: int) -> torch.Tensor:
    """(N*H*W*groups, C/groups): each row one tower's channels at one pixel, a view of
    channels-last memory (a copy otherwise)."""
    channels = t.shape[1]
    return t.permute(0, 2, 3, 1).reshape(-1, channels // groups)


def _window_sum(rows: torch.Tensor, size: int) -> torch.Tensor:
    """Sum over `size` adjacent channels, zero beyond the row's ends, as `size` shifted slices of
    the padded rows: elementwise along memory, which Inductor fuses and vectorises (an average
    pool over the channel axis became a scalar loop with an index modulo per load)."""
    half = size // 2
    padded = F.pad(rows, (half, size - 1 - half))
    width = rows.shape[1]
    total = padded[:, :width]
    for shift in range(1, size):
        total = total + padded[:, shift : shift + width]
    return total


def _inverse_power(s: torch.Tensor, beta: float) -> torch.Tensor:
    """s ** -beta. For the paper's beta = 0.75 as rsqrt(s) * sqrt(rsqrt(s)): two vector square
    roots instead of an exp and a log per element (the LRN was compute-bound on `pow`)."""
    if beta == 0.75:
        r = torch.rsqrt(s)
        return r * torch.sqrt(r)
    return s.pow(-beta)


def _wide(t: torch.Tensor) -> torch.Tensor:
    """At least fp32: bf16/fp16 activations are normalised in fp32 (float64 stays float64)."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


# bf16 matrix products run on the CPU's matrix units (AMX, AVX512-BF16) rather than emulated.
_CPU_BF16_MATMUL = torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()


def _banded(rows: torch.Tensor) -> bool:
    """Window sums of bf16 rows on such a CPU run as a matrix product with a band of ones: one
    oneDNN GEMM (K = a tower's channels) instead of shifted slices, which Inductor's CPU code
    loads through masks at the row ends, element by element for bf16. Forward + backward with
    the ReLU, 64x96x55x55 bf16: 82 ms against 160 (63 keeping the bf16 sums for the backward
    instead of an fp32 s); 64x256x27x27: 20 against 56. fp32 stays on the slices (55 ms against
    64 forward), and GPUs too (Triton masks its loads for free). The squares and the products
    summed are rounded to bf16 and the sums come back in bf16: one bf16 rounding of the output
    (relative error 4e-3 against the fp32 arithmetic)."""
    return rows.dtype == torch.bfloat16 and rows.device.type == "cpu" and _CPU_BF16_MATMUL


def _band(width: int, size: int, like: torch.Tensor) -> torch.Tensor:
    """(width, width) ones where |i - j| <= size // 2: rows @ band sums each window (odd size:
    the band is its own transpose, as the backward needs)."""
    i = torch.arange(width, device=like.device)
    return ((i[:, None] - i[None, :]).abs() <= size // 2).to(like.dtype)


def _window_sums(rows: torch.Tensor, size: int) -> torch.Tensor:
    """The sum of x^2 over each channel's window: bf16 from the band product (_banded), else at
    least fp32 from shifted slices."""
    if _banded(rows):
        return torch.mm(rows * rows, _band(rows.shape[1], size, rows))
    rows = _wide(rows)
    return _window_sum(rows * rows, size)


def _denominator(sums: torch.Tensor, size: int, alpha: float, k: float) -> torch.Tensor:
    """s = k + alpha * (mean of x^2 over the window), in at least fp32."""
    return _wide(sums) * (alpha / size) + k


def _lrn_forward_keeping_sums(
    x: torch.Tensor, size: int, alpha: float, beta: float, k: float, groups: int, relu: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """The LRN of x (of relu(x) with `relu`), and the window sums the backward rebuilds s from."""
    n, c, h, w = x.shape
    rows = _channel_rows(x, groups)
    if relu:
        rows = torch.relu(rows)
    sums = _window_sums(rows, size)
    s = _denominator(sums, size, alpha, k)
    return (_wide(rows) * _inverse_power(s, beta)).to(x.dtype).view(n, h, w, c).permute(0, 3, 1, 2), sums


def _lrn_forward(
    x: torch.Tensor, size: int, alpha: float, beta: float, k: float, groups: int, relu: bool
) -> torch.Tensor:
    """Without autograd: nothing is kept for a backward."""
    return _lrn_forward_keeping_sums(x, size, alpha, beta, k, groups, relu)[0]


def _lrn_backward(
    g: torch.Tensor,
    x: torch.Tensor,
    sums: torch.Tensor,
    size: int,
    alpha: float,
    beta: float,
    k: float,
    groups: int,
    relu: bool,
) -> torch.Tensor:
    """dL/dr_i = g_i s_i^-beta - (2 alpha beta / size) r_i sum_{j in window(i)} g_j r_j s_j^(-beta-1)
    with r = x (r = relu(x) with `relu`, whose gradient then passes only where x > 0): the window
    is symmetric, so its transpose is itself."""
    n, c, h, w = x.shape
    rows, grad_rows = _wide(_channel_rows(x, groups)), _wide(_channel_rows(g, groups))
    if relu:
        rows = torch.relu(rows)
    s = _denominator(sums, size, alpha, k)
    inverse = _inverse_power(s, beta)
    term = grad_rows * rows * inverse / s
    if _banded(x):
        spread = torch.mm(term.to(x.dtype), _band(term.shape[1], size, x)).float()
    else:
        spread = _window_sum(term, size)
    grad = grad_rows * inverse - (2 * alpha * beta / size) * rows * spread
    if relu:
        grad = torch.where(rows > 0, grad, 0.0)
    return grad.to(g.dtype).view(n, h, w, c).permute(0, 3, 1, 2)


# One kernel per shape (dynamic=False): a batch dimension left symbolic made these passes 1.6x
# slower here. A run meets up to 8 shapes per LRN function (two layers x the train batch, the
# last val batch, 10-crop's tenfold ones), dynamo's default recompile limit, past which it runs
# the function uncompiled (slower, and rounding differently): allow more.
torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
_lrn_forward_compiled = torch.compile(_lrn_forward, dynamic=False)
_lrn_forward_keeping_sums_compiled = torch.compile(_lrn_forward_keeping_sums, dynamic=False)
_lrn_backward_compiled = torch.compile(_lrn_backward, dynamic=False)


class _CompiledLRN(torch.autograd.Function):
    """The same function, forward and backward each one torch.compile'd kernel chain (Inductor:
    C++ on the CPU, Triton on GPUs). The forward keeps the window sums of squares (fp32; bf16 on
    the banded path, whose product gives them in bf16) for the backward, which then needs one
    window sum instead of two: one more activation-sized tensor per LRN while training (122 MB
    at batch 64 for both layers in fp32), for a backward 1.5-4x faster here."""

    @staticmethod
    def forward(
        ctx, x: torch.Tensor, size: int, alpha: float, beta: float, k: float, groups: int, relu: bool
    ) -> torch.Tensor:
        y, sums = _lrn_forward_keeping_sums_compiled(x, size, alpha, beta, k, groups, relu)
        ctx.save_for_backward(x, sums)
        ctx.args = (size, alpha, beta, k, groups, relu)
        return y

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        x, sums = ctx.saved_tensors
        return _lrn_backward_compiled(g, x, sums, *ctx.args), *[None] * 6


LRN_MODES = ("eager", "compiled")


class LocalResponseNorm(nn.Module):
    """The paper's local response normalisation across channels, x / (k + alpha * mean(x^2))^beta
    over a window of `size` adjacent channels, applied within each of `groups` towers.

    The same function as torch.nn.LocalResponseNorm on each tower (the tests check values and
    gradients), but torch's version pads, runs a 3-D average pool and leaves the backward to
    autograd: that was ~45% of a CPU training step in fp32 and ~75% in bf16 (make bench).
    eager: the window mean as a 1-D pool on channels-last memory, backward written out.
    compiled: forward and backward each one torch.compile'd pass (Inductor: C++ on the CPU, Triton
    on GPUs), the window as shifted slices, beta=0.75 as two square roots, s kept for the
    backward (bf16 on a CPU: window sums as a band matrix product, see _banded). Forward +
    backward on 64x96x55x55 channels-last, 2-core CPU: fp32 85 ms (eager 380, the same math
    compiled as one autograd graph with an average pool and `pow` 189, a ReLU, the floor, 44);
    bf16 134 ms with slices (eager 294, the autograd-graph version 163). On 64x256x27x27: fp32 61
    (242, 120), bf16 28 (116, 62). relu=True (how the net calls it) takes the ReLU before it into
    the same passes, so its output is never written nor read back: ReLU and LRN forward +
    backward, 64x96x55x55, fp32 97 ms against 141 as two; bf16 63 (the band, bf16 sums kept)
    against 171 as two with slices. 64x256x27x27: fp32 64 against 90; bf16 16 against 45."""

    def __init__(
        self, size: int = 5, alpha: float = 1e-4, beta: float = 0.75, k: float = 2.0, mode: str = "eager"
    ) -> None:
        super().__init__()
        if mode not in LRN_MODES:
            raise ValueError(f"LRN mode must be one of {LRN_MODES}, got {mode!r}")
        self.size, self.alpha, self.beta, self.k, self.mode = size, alpha, beta, k, mode

    def forward(self, x: torch.Tensor, groups: int = 1, relu: bool = False) -> torch.Tensor:
        """LRN(x) within each of `groups` towers; with `relu`, LRN(relu(x)), the paper's order,
        which the compiled mode does in the same pass."""
        args = (self.size, self.alpha, self.beta, self.k, groups)
        if self.mode == "compiled":
            if torch.is_grad_enabled() and x.requires_grad:
                return _CompiledLRN.apply(x, *args, relu)
            return _lrn_forward_compiled(x, *args, relu)  # no s to keep
        return _LRN.apply(F.relu(x) if relu else x, *args)


def tower_widths(width: float) -> tuple[int, ...]:
    return tuple(max(1, round(w * width)) for w in PAPER_TOWER_WIDTHS)


class Tower(nn.Module):
    """One GPU's half of the network. C3, F6, F7 and F8 take both towers' outputs as input."""

    def __init__(self, widths: tuple[int, ...], pooled: int, classes: int) -> None:
        super().__init__()
        c1, c2, c3, c4, c5, fc = widths
        self.conv1 = nn.Conv2d(3, c1, 11, stride=4, padding=2)
        self.conv2 = nn.Conv2d(c1, c2, 5, padding=2)
        self.conv3 = nn.Conv2d(2 * c2, c3, 3, padding=1)
        self.conv4 = nn.Conv2d(c3, c4, 3, padding=1)
        self.conv5 = nn.Conv2d(c4, c5, 3, padding=1)
        self.fc6 = nn.Linear(2 * c5 * pooled * pooled, fc)
        self.fc7 = nn.Linear(2 * fc, fc)
        self.fc8 = nn.Linear(2 * fc, classes)

    def layers(self) -> Iterator[tuple[str, nn.Conv2d | nn.Linear]]:
        for name in ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8"):
            yield name, getattr(self, name)


@dataclass(frozen=True)
class Placement:
    tower_a: torch.device
    tower_b: torch.device
    fused: bool  # both towers on one device computed with grouped convolutions

    @property
    def split(self) -> bool:
        return self.tower_a != self.tower_b

    @property
    def split_path(self) -> bool:
        """The towers run as two (the two-device code path), on one device or two."""
        return not self.fused


class AlexNet(nn.Module):
    """The paper's grouped two-tower AlexNet: 60,965,224 parameters at 1000 classes, width 1.

    `width` scales every layer (same topology) for CPU demos; `input_size` may be any size the
    pooling chain accepts (e.g. 67 or 99 for a mini net). Call `place()` to put the towers on
    devices; parameter names are the same whatever the placement, so checkpoints move freely.
    """

    def __init__(
        self,
        num_classes: int = 1000,
        dropout: float = 0.5,
        width: float = 1.0,
        input_size: int = PAPER_INPUT_SIZE,
        init: str = "paper",
        lrn: str = "eager",
    ) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes must be at least 2, got {num_classes}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        if width <= 0:
            raise ValueError(f"width must be positive, got {width}")
        if init not in INITS:
            raise ValueError(f"init must be one of {INITS}, got {init!r}")
        pooled = pooled_size(input_size)
        if pooled < 1:
            raise ValueError(f"input_size {input_size} is too small for AlexNet's pooling chain; use at least 63")
        self.num_classes = num_classes
        self.input_size = input_size
        self.widths = tower_widths(width)
        # The paper splits F8's 1000 outputs 500/500; an odd count gives tower A the extra one.
        classes_a = math.ceil(num_classes / 2)
        self.tower_a = Tower(self.widths, pooled, classes_a)
        self.tower_b = Tower(self.widths, pooled, num_classes - classes_a)
        # Applied within each tower, as on the authors' GPUs: k=2, n=5, alpha=1e-4, beta=0.75.
        self.lrn = LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=2.0, mode=lrn)
        self.pool = nn.MaxPool2d(3, stride=2)
        self.dropout = nn.Dropout(dropout)
        self.reset_parameters(init)
        cpu = torch.device("cpu")
        self.placement = Placement(cpu, cpu, fused=True)

    def reset_parameters(self, init: str = "paper") -> None:
        """paper: weights N(0, 0.01); biases 1 in C2, C4, C5, F6, F7, else 0 (section 5).
        kaiming: He-normal weights, zero biases; trains narrow nets from scratch reliably."""
        for tower in (self.tower_a, self.tower_b):
            for name, layer in tower.layers():
                if init == "paper":
                    nn.init.normal_(layer.weight, 0.0, 0.01)
                    one = name in ("conv2", "conv4", "conv5", "fc6", "fc7")
                    nn.init.constant_(layer.bias, 1.0 if one else 0.0)
                else:
                    nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
                    nn.init.zeros_(layer.bias)

    def place(
        self,
        tower_a: torch.device | str,
        tower_b: torch.device | str | None = None,
        fused: bool | None = None,
    ) -> AlexNet:
        """Put tower A on `tower_a` and tower B on `tower_b` (default: the same device).

        On one device the towers run as grouped convolutions (`fused`, the default there); pass
        fused=False to run the two-device code path on one device. Output lands on `tower_a`.
        """
        dev_a = torch.device(tower_a)
        dev_b = torch.device(tower_b) if tower_b is not None else dev_a
        if fused is None:
            fused = dev_a == dev_b
        if fused and dev_a != dev_b:
            raise ValueError("fused=True needs both towers on one device")
        self.tower_a.to(dev_a)
        self.tower_b.to(dev_b)
        self.placement = Placement(dev_a, dev_b, fused)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.placement.fused:
            return self._forward_fused(x)
        return self._forward_split(x)

    # Two towers, each on its own device: crossings are the only device-to-device copies.
    def cross(self, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        dev_a, dev_b = self.placement.tower_a, self.placement.tower_b
        return torch.cat([a, b.to(dev_a)], 1), torch.cat([a.to(dev_b), b], 1)

    def segments(self, t: Tower) -> list[Callable[[torch.Tensor], torch.Tensor]]:
        """One tower's work between two crossings: C1-C2, C3-C5, F6, F7, F8. The towers cross
        between consecutive segments, into C3, F6, F7 and F8."""
        return [
            lambda x: self.pool(self.lrn(t.conv2(self.pool(self.lrn(t.conv1(x), relu=True))), relu=True)),
            lambda x: self.pool(F.relu(t.conv5(F.relu(t.conv4(F.relu(t.conv3(x))))))).flatten(1),
            # Dropout on the outputs of F6 and F7 (the paper's placement, Caffe's drop6/drop7):
            # each tower drops its own neurons once, before the crossing: both towers see one mask.
            lambda x: self.dropout(F.relu(t.fc6(x))),
            lambda x: self.dropout(F.relu(t.fc7(x))),
            t.fc8,
        ]

    def _forward_split(self, x: torch.Tensor) -> torch.Tensor:
        a, b = x.to(self.placement.tower_a), x.to(self.placement.tower_b)
        pairs = zip(self.segments(self.tower_a), self.segments(self.tower_b), strict=True)
        for i, (segment_a, segment_b) in enumerate(pairs):
            if i:
                a, b = self.cross(a, b)
            a, b = segment_a(a), segment_b(b)
        return torch.cat([a, b.to(self.placement.tower_a)], 1)

    # Both towers on one device: the same function as grouped convolutions (Caffe's `group: 2`),
    # one kernel per layer instead of two. Channels are laid out [tower A | tower B] throughout.
    def _conv(self, name: str, x: torch.Tensor, groups: int) -> torch.Tensor:
        """The layer's convolution, before its ReLU."""
        a, b = getattr(self.tower_a, name), getattr(self.tower_b, name)
        weight = torch.cat([a.weight, b.weight])
        bias = torch.cat([a.bias, b.bias])
        return F.conv2d(x, weight, bias, a.stride, a.padding, groups=groups)

    def _fc(self, name: str, x: torch.Tensor) -> torch.Tensor:
        # Two matmuls on the shared input instead of concatenating 37M weights every step.
        a, b = getattr(self.tower_a, name), getattr(self.tower_b, name)
        return torch.cat([a(x), b(x)], 1)

    def _forward_fused(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.placement.tower_a)
        # ReLU, then LRN within each tower (the paper's order), in one pass
        x = self.pool(self.lrn(self._conv("conv1", x, groups=1), groups=2, relu=True))
        x = self.pool(self.lrn(self._conv("conv2", x, groups=2), groups=2, relu=True))
        x = F.relu(self._conv("conv3", x, groups=1))  # reads both towers
        x = self.pool(F.relu(self._conv("conv5", F.relu(self._conv("conv4", x, groups=2)), groups=2)))
        x = self.dropout(F.relu(self._fc("fc6", x.flatten(1))))
        x = self.dropout(F.relu(self._fc("fc7", x)))
        return self._fc("fc8", x)
