import torch

from orchestrator.worker.devices import tower_devices

CPU, G0, G1 = torch.device("cpu"), torch.device("cuda:0"), torch.device("cuda:1")


def test_two_gpus_split_the_towers_like_the_paper():
    assert tower_devices([G0, G1], "auto") == (G0, G1, False)
    assert tower_devices([G0, G1], "split") == (G0, G1, False)


def test_one_device_holds_both_towers():
    assert tower_devices([G0], "auto") == (G0, G0, True)  # grouped convolutions on one GPU
    assert tower_devices([CPU], "auto") == (CPU, CPU, False)  # dense ones per tower: faster on oneDNN
    assert tower_devices([G0, G1], "single") == (G0, G0, True)
    assert tower_devices([CPU], "single") == (CPU, CPU, True)


def test_split_on_one_device_runs_the_two_device_code_path():
    assert tower_devices([G0], "split") == (G0, G0, False)
