"""The scaling model: the bytes it assumes are what PyTorch's hooks send, and its arithmetic."""

from __future__ import annotations

import json

import pytest

from model import AlexNet
from orchestrator.tools import scaling
from orchestrator.tools.gradient_traffic import traffic

HOOKS = ["none", "bf16", "fp16", "powersgd"]


@pytest.mark.timeout(300)
def test_the_bytes_it_assumes_are_what_the_hooks_hand_to_the_all_reduce():
    """Two gloo workers train the mini net under each hook, every all_reduce's bytes counted."""
    net = {"width": 0.25, "input_size": 67, "num_classes": 10}
    measured = traffic([2], HOOKS, steps=1, batch=2, net=net)[2]
    model = AlexNet(**net)
    for hook in HOOKS:
        assert measured[hook]["bytes_per_step"] == scaling.bytes_per_step(model, hook), hook


def test_the_paper_nets_traffic_per_hook():
    model = AlexNet()
    full = scaling.bytes_per_step(model, "none")
    assert full == 4 * sum(p.numel() for p in model.parameters()) and round(full / 1e6) == 244
    assert scaling.bytes_per_step(model, "bf16") == full // 2
    fc = [p for name, p in model.named_parameters() if ".fc" in name and p.dim() == 2]
    fc_full = sum(4 * p.numel() for p in fc)
    fc_powersgd = sum(4 * (p.shape[0] + p.shape[1]) * 4 for p in fc)  # rank 4: n x 4 and m x 4
    assert fc_full / fc_powersgd >= 20  # the goal for the fully-connected layers
    assert scaling.bytes_per_step(model, "powersgd") < full / 20


def test_ring_arithmetic():
    link = scaling.Link(gbps=8, latency_s=0)  # 1 GB/s
    assert scaling.all_reduce_s(10**9, 1, link) == 0
    assert scaling.all_reduce_s(10**9, 2, link) == pytest.approx(1.0)  # 2(N-1)/N = 1
    assert scaling.all_reduce_s(10**9, 4, link) == pytest.approx(1.5)
    # one worker computes 100 img/s at batch 100 (1 s); with 4 the step takes 1 + 1.5 s
    assert scaling.images_per_s(4, 100, 100, 10**9, link) == pytest.approx(400 / 2.5)
    assert scaling.images_per_s(4, 100, 100, 10**9, link, overlap=1.0) == pytest.approx(400)
    rows = scaling.table([1, 2, 4, 8], 100, 100, {"none": 10**9}, [link], 0.0)
    efficiencies = [r["efficiency"] for r in rows]
    assert efficiencies[0] == 1 and efficiencies == sorted(efficiencies, reverse=True)
    (verdict,) = scaling.verdicts(rows)
    assert verdict.startswith("none at 8 Gb/s: >= 90% efficient up to 1 nodes")


def test_the_command_prints_a_table_draws_a_plot_and_checks_a_measurement(tmp_path, capsys):
    png = tmp_path / "scaling.png"
    assert scaling.main(["--img-per-s-per-worker", "4000", "--nodes", "1,2,4", "--plot", str(png)]) == 0
    out = capsys.readouterr().out
    assert "powersgd at 400 Gb/s: >= 90% efficient up to 4 nodes" in out and png.stat().st_size > 0
    # a measurement the model describes (2 workers: 100 MB fp32 at 1 GB/s bus, 1 s compute) passes,
    # one whose step took twice as long does not
    figures = {"none": {"bytes_per_step": 1e8, "step_s": 1.1, "local_step_s": 1.0, "exposed_comm_s": 0.1}}
    measured = {"workers": {"2": {**figures, "bus_bytes_per_s": {"fp32": 1e9}}}}
    path = tmp_path / "measured.json"
    path.write_text(json.dumps(measured))
    assert scaling.main(["--check", str(path), "--hooks", "none"]) == 0
    measured["workers"]["2"]["none"]["step_s"] = 2.2
    path.write_text(json.dumps(measured))
    assert scaling.main(["--check", str(path), "--hooks", "none"]) == 1
