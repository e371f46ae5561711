"""The paper's layer table (section 3.5, figure 2), derived from a built network."""

from __future__ import annotations

from dataclasses import dataclass

from model.alexnet import AlexNet, stage_sizes


@dataclass(frozen=True)
class LayerRow:
    layer: str
    input: str
    kernel: str
    output: str
    params_per_tower: int  # tower A's count; tower B differs only in F8 when classes are odd
    params: int  # both towers
    flops: int  # forward, both towers, one image: 2 per multiply-add of the conv or matmul


def _count(*modules) -> int:
    return sum(p.numel() for m in modules for p in m.parameters())


def layer_table(model: AlexNet) -> list[LayerRow]:
    a, b = model.tower_a, model.tower_b
    c1, c2, c3, c4, c5, fc = (2 * w for w in model.widths)

    def hwc(size: int, channels: int) -> str:
        return f"{size}x{size}x{channels}"

    s0 = model.input_size
    s1, p1, p2, p3 = stage_sizes(s0)
    rows = [
        ("C1", hwc(s0, 3), "11x11/4", hwc(s1, c1), "conv1"),
        ("LRN1 + pool1", hwc(s1, c1), "3x3/2", hwc(p1, c1), None),
        ("C2", hwc(p1, c1), "5x5/1", hwc(p1, c2), "conv2"),
        ("LRN2 + pool2", hwc(p1, c2), "3x3/2", hwc(p2, c2), None),
        ("C3 (both towers)", hwc(p2, c2), "3x3/1", hwc(p2, c3), "conv3"),
        ("C4", hwc(p2, c3), "3x3/1", hwc(p2, c4), "conv4"),
        ("C5", hwc(p2, c4), "3x3/1", hwc(p2, c5), "conv5"),
        ("pool5", hwc(p2, c5), "3x3/2", hwc(p3, c5), None),
        ("F6 (both towers)", str(c5 * p3 * p3), "-", str(fc), "fc6"),
        ("F7 (both towers)", str(fc), "-", str(fc), "fc7"),
        ("F8 (both towers)", str(fc), "-", str(model.num_classes), "fc8"),
    ]
    table = []
    for layer, inp, kernel, out, name in rows:
        per_tower = _count(getattr(a, name)) if name else 0
        total = _count(getattr(a, name), getattr(b, name)) if name else 0
        flops = _flops(getattr(a, name), out) + _flops(getattr(b, name), out) if name else 0
        table.append(LayerRow(layer, inp, kernel, out, per_tower, total, flops))
    return table


def _flops(layer, output: str) -> int:
    """Forward FLOPs of one tower's layer for one image: each output value of a convolution
    costs one multiply-add per weight of its kernel; a linear layer, one per weight."""
    weights = layer.weight[0].numel()
    if layer.weight.dim() == 4:  # conv: outputs = the output map's area x this tower's kernels
        area = int(output.split("x")[0]) ** 2
        return 2 * area * layer.out_channels * weights
    return 2 * layer.out_features * weights


def train_flops_per_image(model: AlexNet) -> int:
    """FLOPs of one training image: the forward, and twice that backward (the gradient of each
    layer's input and of its weights), less C1's input gradient, which nothing needs (what
    torch.utils.flop_counter counts for forward + backward; the tests compare the two)."""
    table = layer_table(model)
    forward = sum(row.flops for row in table)
    return 3 * forward - table[0].flops
