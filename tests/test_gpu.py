"""The CUDA path of the network (run by `make gpu-check` on a GPU machine; skipped elsewhere).
Imports the model and the checkpoint format only, so it runs where Ray is not installed."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from model import AlexNet
from orchestrator.worker import checkpoint

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]

SECOND = "cuda:1" if torch.cuda.device_count() > 1 else "cuda:0"


def outputs_and_grads(model: AlexNet, x: torch.Tensor, y: torch.Tensor, dtype: torch.dtype | None):
    model.zero_grad(set_to_none=True)
    with torch.autocast("cuda", dtype=dtype, enabled=dtype is not None):
        out = model(x)
    F.cross_entropy(out.float(), y.to(out.device)).backward()
    return out.float().cpu(), {n: p.grad.float().cpu() for n, p in model.named_parameters()}


@pytest.mark.parametrize(("dtype", "tol"), [(None, 2e-3), (torch.bfloat16, 6e-2)])
def test_split_and_fused_agree_on_cuda(dtype, tol):
    """The two-device code path (one tower per GPU, or both on one GPU with fused=False) and
    the grouped-convolution path give the same outputs and gradients, fp32 and bf16."""
    torch.manual_seed(0)
    model = AlexNet(num_classes=100).train()
    model.dropout.p = 0.0  # the two paths draw their dropout masks differently
    x, y = torch.randn(16, 3, 224, 224, device="cuda:0"), torch.randint(0, 100, (16,))
    fused_out, fused_grads = outputs_and_grads(copy.deepcopy(model).place("cuda:0"), x, y, dtype)
    split_out, split_grads = outputs_and_grads(model.place("cuda:0", SECOND, fused=False), x, y, dtype)
    torch.testing.assert_close(split_out, fused_out, rtol=tol, atol=tol)
    for name, grad in fused_grads.items():
        scale = grad.abs().max().clamp_min(1e-12)
        torch.testing.assert_close(split_grads[name] / scale, grad / scale, rtol=tol, atol=tol, msg=name)


def test_a_checkpoint_saved_on_cuda_loads_on_the_cpu(tmp_path):
    model = AlexNet(num_classes=10, width=0.25, input_size=67).place("cuda:0", SECOND, fused=False)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    model(torch.randn(2, 3, 67, 67, device="cuda:0")).sum().backward()
    optimizer.step()
    checkpoint.save(str(tmp_path), model=model.state_dict(), optimizer=optimizer.state_dict())
    state = checkpoint.load(str(tmp_path))
    assert all(t.device.type == "cpu" for t in state["model"].values())
    cpu = AlexNet(num_classes=10, width=0.25, input_size=67)
    cpu.load_state_dict(state["model"])
    x = torch.randn(2, 3, 67, 67)
    with torch.no_grad():
        torch.testing.assert_close(cpu.eval()(x), model.eval()(x.cuda()).cpu(), rtol=1e-4, atol=1e-4)
