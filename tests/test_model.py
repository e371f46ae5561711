"""The two-tower AlexNet: size, shapes, connectivity, placement, init, and that it learns."""

import pytest
import torch
import torch.nn.functional as F

from model import AlexNet
from model.__main__ import main as print_table
from model.summary import layer_table

PAPER_SHAPES = {  # activation after each stage, channels of both towers together (paper, fig. 2)
    "conv1": (96, 55, 55),
    "pool1": (96, 27, 27),
    "conv2": (256, 27, 27),
    "pool2": (256, 13, 13),
    "conv3": (384, 13, 13),
    "conv4": (384, 13, 13),
    "conv5": (256, 13, 13),
    "pool5": (256, 6, 6),
    "fc6": (4096,),
    "fc7": (4096,),
    "fc8": (1000,),
}


def mini(**kw) -> AlexNet:
    torch.manual_seed(0)
    return AlexNet(**{"num_classes": 10, "width": 0.25, "input_size": 67, **kw}).eval()


def test_parameter_count_matches_the_grouped_paper_net():
    assert sum(p.numel() for p in AlexNet().parameters()) == 60_965_224


def test_layer_table_ends_in_the_paper_total(capsys):
    assert print_table([]) == 0
    assert "60,965,224" in capsys.readouterr().out.splitlines()[-2]


def _record(store: dict, key):
    """A forward hook that keeps the first output under `key` (and returns None)."""

    def hook(module, inputs, output):
        store.setdefault(key, output)

    return hook


def test_every_activation_shape_matches_the_paper():
    """Hooks on the split path see one tower; both towers together have twice the channels."""
    model = AlexNet().eval().place("cpu", "cpu", fused=False)
    seen: dict[str, torch.Tensor] = {}
    for name, layer in model.tower_a.layers():
        layer.register_forward_hook(_record(seen, name))
    pools: list[torch.Tensor] = []
    model.pool.register_forward_hook(lambda m, i, o: pools.append(o))
    with torch.no_grad():
        out = model(torch.zeros(1, 3, 224, 224))
    # The shared pool runs tower A's C1-C2 segment (pool1, pool2), then B's, then A's and B's pool5.
    seen.update({"pool1": pools[0], "pool2": pools[1], "pool5": pools[4]})
    both = {n: (2 * o.shape[1], *o.shape[2:]) for n, o in seen.items()}
    both["fc8"] = tuple(out.shape[1:])
    assert both == PAPER_SHAPES
    table = {row.layer.split()[0]: row.output for row in layer_table(model)}
    assert table["C3"] == "13x13x384" and table["pool5"] == "6x6x256" and table["F8"] == "1000"


@pytest.mark.parametrize("size", [63, 67, 99, 227])
def test_any_size_the_pooling_chain_accepts(size):
    model = mini(input_size=size)
    assert model(torch.zeros(2, 3, size, size)).shape == (2, 10)


def test_too_small_input_is_refused_clearly():
    with pytest.raises(ValueError, match="too small"):
        AlexNet(input_size=50)


def _input_gradient_by_tower(model: AlexNet, layer: str, tower: str, channel: int) -> torch.Tensor:
    """How much one output unit of `layer` in `tower` depends on each tower's C1 output."""
    model = model.place("cpu", "cpu", fused=False)
    acts = {}
    for t in ("tower_a", "tower_b"):
        getattr(model, t).conv1.register_forward_hook(_record(acts, t))
    out: dict[str, torch.Tensor] = {}
    getattr(getattr(model, tower), layer).register_forward_hook(_record(out, "o"))
    model(torch.randn(1, 3, 67, 67))
    for t in acts.values():
        t.retain_grad()
    o = out["o"]
    (o[0, channel].sum()).backward()
    # No gradient at all means no path from that tower's C1 to the unit.
    grads = [acts[t].grad for t in ("tower_a", "tower_b")]
    return torch.stack([g.abs().sum() if g is not None else torch.tensor(0.0) for g in grads])


@pytest.mark.parametrize(
    ("layer", "crosses"),
    [("conv2", False), ("conv3", True), ("conv4", True), ("conv5", True)],
)
def test_convolutions_see_the_other_tower_only_after_c3(layer, crosses):
    """C2 reads only its own tower; from C3 on, every unit depends on both towers' C1."""
    grads = _input_gradient_by_tower(mini(dropout=0.0), layer, "tower_a", 0)
    assert grads[0] > 0
    assert (grads[1] > 0) == crosses


def _direct_inputs(model: AlexNet, layer: str) -> int:
    return getattr(model.tower_a, layer).weight.shape[1]


def test_layer_fan_in_matches_the_paper():
    """C2, C4, C5 read their own tower's maps; C3, F6, F7, F8 read both towers' outputs."""
    model = AlexNet()
    assert _direct_inputs(model, "conv2") == 48
    assert _direct_inputs(model, "conv3") == 256
    assert _direct_inputs(model, "conv4") == 192
    assert _direct_inputs(model, "conv5") == 192
    assert _direct_inputs(model, "fc6") == 9216
    assert _direct_inputs(model, "fc7") == 4096
    assert _direct_inputs(model, "fc8") == 4096


def test_c4_and_c5_ignore_the_other_towers_c3():
    """Perturb tower B's C3 output: tower A's C4 and C5 do not change, tower B's do."""
    model = mini().place("cpu", "cpu", fused=False)
    x = torch.randn(2, 3, 67, 67)
    outs = {}
    for t in ("tower_a", "tower_b"):
        for layer in ("conv4", "conv5"):
            getattr(getattr(model, t), layer).register_forward_hook(_record(outs, (t, layer)))
    with torch.no_grad():
        model(x)
        clean = dict(outs)
        outs.clear()
        model.tower_b.conv3.bias += 1.0
        model(x)
    for layer in ("conv4", "conv5"):
        assert torch.equal(outs[("tower_a", layer)], clean[("tower_a", layer)])
        assert not torch.equal(outs[("tower_b", layer)], clean[("tower_b", layer)])


def test_fc_layers_read_both_towers():
    model = mini()
    x = torch.randn(2, 3, 67, 67)
    with torch.no_grad():
        clean = model(x)
        model.tower_b.conv5.bias += 1.0
        changed = model(x)
    half = model.tower_a.fc8.out_features
    assert not torch.allclose(clean[:, :half], changed[:, :half])  # tower A's F8 saw tower B


def test_split_and_fused_paths_compute_the_same_function():
    model = mini()
    x = torch.randn(4, 3, 67, 67)
    with torch.no_grad():
        fused = model.place("cpu")(x)
        split = model.place("cpu", "cpu", fused=False)(x)
    torch.testing.assert_close(fused, split, rtol=1e-5, atol=1e-6)


def test_paper_size_split_equals_fused():
    model = AlexNet().eval()
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        fused = model(x)
        split = model.place("cpu", "cpu", fused=False)(x)
    torch.testing.assert_close(fused, split, rtol=1e-5, atol=1e-6)


def test_state_dict_is_the_same_whatever_the_placement():
    split = mini().place("cpu", "cpu", fused=False)
    fused = mini(init="kaiming").place("cpu")
    assert split.state_dict().keys() == fused.state_dict().keys()
    fused.load_state_dict(split.state_dict())
    x = torch.randn(2, 3, 67, 67)
    with torch.no_grad():
        torch.testing.assert_close(fused(x), split(x), rtol=1e-5, atol=1e-6)


def test_odd_class_count_gives_tower_a_the_extra_output():
    model = mini(num_classes=11)
    assert (model.tower_a.fc8.out_features, model.tower_b.fc8.out_features) == (6, 5)
    assert model(torch.zeros(1, 3, 67, 67)).shape == (1, 11)


@pytest.mark.parametrize("mode", ["eager", "compiled"])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("relu", [False, True])
def test_lrn_is_torchs_within_each_tower(channels_last, mode, relu):
    """LRN(x), or with relu=True LRN(relu(x)) in one pass: torch's LRN on each tower's channels."""
    from model.alexnet import LocalResponseNorm

    x = torch.randn(3, 96, 13, 11) * 30
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    torch_lrn = torch.nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=2.0)

    def reference(t: torch.Tensor) -> torch.Tensor:
        t = F.relu(t) if relu else t
        return torch.cat([torch_lrn(t[:, :48]), torch_lrn(t[:, 48:])], 1)

    ours = LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=2.0, mode=mode)
    torch.testing.assert_close(ours(x, relu=relu), torch_lrn(F.relu(x) if relu else x))
    torch.testing.assert_close(ours(x, groups=2, relu=relu), reference(x))
    x.requires_grad_(True)
    (ours(x, groups=2, relu=relu) ** 2).sum().backward()
    grad = x.grad.clone()
    x.grad = None
    reference(x).pow(2).sum().backward()
    torch.testing.assert_close(grad, x.grad)
    assert not relu or (grad[x <= 0] == 0).all()


@pytest.mark.parametrize("mode", ["eager", "compiled"])
@pytest.mark.parametrize(("beta", "relu"), [(0.75, False), (0.6, False), (0.75, True)])  # two square roots, pow
def test_lrn_gradient_is_exact(mode, beta, relu):
    from model.alexnet import LocalResponseNorm

    x = (torch.randn(2, 12, 5, 4, dtype=torch.float64) * 20).contiguous(memory_format=torch.channels_last)
    lrn = LocalResponseNorm(5, alpha=1e-2, beta=beta, k=2.0, mode=mode)  # a large alpha: the window term matters
    assert torch.autograd.gradcheck(lambda t: lrn(t, groups=2, relu=relu), (x.requires_grad_(True),))
    assert torch.autograd.gradcheck(lambda t: lrn(t, 2, relu), (x.detach().contiguous().requires_grad_(True),))


def test_paper_init_statistics():
    model = AlexNet()
    weights = torch.cat([layer.weight.flatten() for t in (model.tower_a, model.tower_b) for _, layer in t.layers()])
    assert abs(weights.mean().item()) < 1e-4
    assert weights.std().item() == pytest.approx(0.01, rel=0.01)
    for _, tower in (("a", model.tower_a), ("b", model.tower_b)):
        for name, layer in tower.layers():
            expected = 1.0 if name in ("conv2", "conv4", "conv5", "fc6", "fc7") else 0.0
            assert torch.all(layer.bias == expected), name


def test_a_narrow_net_overfits_a_fixed_batch():
    torch.manual_seed(0)
    model = AlexNet(num_classes=4, width=0.25, input_size=67, dropout=0.0, init="kaiming").train()
    x, y = torch.randn(16, 3, 67, 67), torch.arange(16) % 4
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    first = None
    for _ in range(40):
        loss = F.cross_entropy(model(x), y)
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < first / 20


def test_bad_arguments_name_the_problem():
    with pytest.raises(ValueError, match="dropout"):
        AlexNet(dropout=1.0)
    with pytest.raises(ValueError, match="fused"):
        AlexNet().place("cpu", "meta", fused=True)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_split_path_equals_cpu():
    model = mini()
    x = torch.randn(4, 3, 67, 67)
    with torch.no_grad():
        expected = model.place("cpu")(x)
        devices = ("cuda:0", "cuda:1") if torch.cuda.device_count() > 1 else ("cuda:0", "cuda:0")
        got = model.place(*devices, fused=False)(x)
        assert got.device == torch.device(devices[0])
        fused = model.place("cuda:0")(x)
    torch.testing.assert_close(got.cpu(), expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(fused.cpu(), expected, rtol=1e-4, atol=1e-5)


def _fc_inputs(model: AlexNet, train: bool) -> dict[str, torch.Tensor]:
    """The input each of tower A's fully-connected layers receives, in train or eval mode."""
    seen: dict[str, torch.Tensor] = {}
    hooks = [
        getattr(model.tower_a, name).register_forward_pre_hook(lambda m, i, name=name: seen.setdefault(name, i[0]))
        for name in ("fc6", "fc7", "fc8")
    ]
    model.train(train)
    torch.manual_seed(1)
    with torch.no_grad():
        model(torch.randn(4, 3, 67, 67, generator=torch.Generator().manual_seed(0)))
    for hook in hooks:
        hook.remove()
    return seen


@pytest.mark.parametrize("fused", [True, False])
def test_dropout_drops_the_outputs_of_f6_and_f7_as_in_the_paper(fused):
    """Paper 4.2 and Caffe's drop6/drop7: F6's input (pool5) is never dropped; the neurons of
    F6 and F7 are, so the inputs of F7 and F8 differ between train and eval mode."""
    model = mini(dropout=0.5).place("cpu", "cpu", fused=fused)
    train, evaluation = _fc_inputs(model, True), _fc_inputs(model, False)
    torch.testing.assert_close(train["fc6"], evaluation["fc6"])
    for name in ("fc7", "fc8"):
        dropped = (train[name] == 0) & (evaluation[name] != 0)
        assert dropped.float().mean() > 0.3, f"the input of {name} is not dropped in train mode"
    kept = train["fc7"] != 0  # F7 reads F6's neurons: the survivors are scaled by 1 / (1 - p)
    torch.testing.assert_close(train["fc7"][kept], 2 * evaluation["fc7"][kept])


@pytest.mark.parametrize(("width", "size"), [(1.0, 224), (0.25, 112)])
def test_flops_per_image_come_from_the_layer_table(width, size):
    """The layer table's forward FLOPs are exactly what torch's flop counter sees in a forward
    pass; training adds twice that for the backward, less C1's unneeded input gradient."""
    from torch.utils.flop_counter import FlopCounterMode

    from model.summary import train_flops_per_image

    model = AlexNet(num_classes=1000, width=width, input_size=size)
    table = layer_table(model)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.randn(1, 3, size, size))
    assert sum(row.flops for row in table) == counter.get_total_flops()
    assert train_flops_per_image(model) == 3 * counter.get_total_flops() - table[0].flops
    if width == 1.0:
        assert train_flops_per_image(model) == 4_135_610_496  # torchvision's AlexNet: 4.14e9 as well


def test_the_profiled_step_times_each_part_and_keeps_the_gradients():
    """Cut at every crossing, the step's gradients are the uncut step's; the parts (each
    tower's forward and backward, the crossings) add up to about one ordinary step."""
    import statistics
    import time

    from model.profile import profile_split_step, summarize

    model = mini(dropout=0.0).train().place("cpu", "cpu", fused=False)
    x, y = torch.randn(16, 3, 67, 67), torch.randint(0, 10, (16,))

    def plain_step() -> float:
        model.zero_grad(set_to_none=True)
        start = time.perf_counter()
        F.cross_entropy(model(x), y).backward()
        return time.perf_counter() - start

    plain_step()
    expected = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    parts = profile_split_step(model, x, y)
    for name, param in model.named_parameters():
        torch.testing.assert_close(param.grad, expected[name], rtol=1e-4, atol=1e-6, msg=name)
    assert set(parts) == {f"tower_{t}_{p}" for t in "ab" for p in ("forward", "backward")} | {
        "crossings",
        "loss",
        "total",
    }
    assert all(seconds > 0 for seconds in parts.values())
    step = statistics.median(plain_step() for _ in range(5))
    total = []
    for _ in range(5):
        model.zero_grad(set_to_none=True)
        total.append(profile_split_step(model, x, y)["total"])
    assert 0.6 < statistics.median(total) / step < 1.6
    figures = summarize(parts)
    assert 0 <= figures["tower_imbalance"] < 1 and 0 < figures["crossing_share"] < 1


@pytest.mark.parametrize(("dtype", "banded"), [(torch.float32, False), (torch.bfloat16, False), (torch.bfloat16, True)])
@pytest.mark.parametrize("relu", [False, True])
def test_compiled_lrn_is_the_same_function(dtype, banded, relu, monkeypatch):
    """model.lrn=compiled (torch.compile's fused kernels) against the hand-written backward; bf16
    on the CPU with window sums as shifted slices and as the band matrix product (_banded)."""
    import model.alexnet as alexnet

    torch._dynamo.reset()  # the compiled functions were traced for the machine's own choice
    monkeypatch.setattr(alexnet, "_CPU_BF16_MATMUL", banded)
    x = torch.randn(4, 16, 9, 9).to(dtype).contiguous(memory_format=torch.channels_last)
    grads, outs = [], []
    for mode in ("eager", "compiled"):
        leaf = x.detach().requires_grad_()
        out = alexnet.LocalResponseNorm(mode=mode)(leaf * 20, groups=2, relu=relu)  # large: the norm bites
        out.float().square().sum().backward()
        outs.append(out.float())
        grads.append(leaf.grad.float())
    torch._dynamo.reset()
    # bf16: Inductor computes inside its fused kernel in fp32, eager rounds after every op
    tol = 1e-5 if dtype == torch.float32 else 5e-2
    torch.testing.assert_close(outs[1], outs[0], rtol=tol, atol=tol * outs[0].abs().max().item())
    torch.testing.assert_close(grads[1], grads[0], rtol=tol, atol=tol * grads[0].abs().max().item())
