"""The config is checked before Ray starts: bad values end in one line naming the key."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from conftest import compose
from hydra.errors import ConfigCompositionException
from omegaconf.errors import ValidationError

from orchestrator.config import ConfigError
from orchestrator.launch.prepare import prepare


def test_default_is_the_demo_preset(tiny_shards):
    cfg = compose()
    assert cfg.experiment == "demo" and cfg.model.name == "alexnet_mini"
    assert cfg.data.url.endswith("data/shards/demo") and cfg.data.url.startswith("/")
    paper = compose("experiment=paper", "data.url=s3://bucket/imagenet")
    assert (paper.model.name, paper.model.width, paper.batch_size, paper.optim.lr) == (
        "alexnet",
        1.0,
        128,
        0.01,
    )
    assert paper.schedule.name == "plateau"


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("optim.lr=0", "optim.lr"),
        ("optim.lr=-0.1", "optim.lr"),
        ("model.dropout=1.0", "model.dropout"),
        ("model.dropout=-0.1", "model.dropout"),
        ("cluster.nodes=0", "cluster.nodes"),
        ("batch_size=0", "batch_size"),
        ("precision=fp8", "precision"),
        ("model.placement=sideways", "model.placement"),
        ("model.input_size=40", "model.input_size"),
    ],
)
def test_bad_values_name_the_key(tiny_shards, override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        prepare(compose(f"data.url={tiny_shards}", override))


def test_missing_manifest_says_how_to_build_shards(tmp_path):
    with pytest.raises(ConfigError, match=r"no manifest\.json.*make shards"):
        prepare(compose(f"data.url={tmp_path}"))


def test_imagenet_without_a_url_is_refused():
    with pytest.raises(ConfigError, match=r"data\.url is required"):
        prepare(compose("data=imagenet"))


def test_input_larger_than_the_shards_is_refused(tiny_shards):
    with pytest.raises(ConfigError, match="shards are 80 px"):
        prepare(compose(f"data.url={tiny_shards}", "model=alexnet"))


def test_unknown_keys_and_wrong_types_fail_at_composition():
    with pytest.raises(ConfigCompositionException):
        compose("optim.lrr=0.1")
    with pytest.raises((ConfigCompositionException, ValidationError)):
        compose("batch_size=many")


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["optim.lrr=0.1"], ["optim.lrr", "not in"]),
        (["batch_size=many"], ["batch_size=many", "Integer"]),
        (["model=nope"], ["model/nope", "alexnet_mini"]),
    ],
)
def test_unknown_keys_wrong_types_and_options_are_one_sentence(argv, words):
    from orchestrator.launch.overrides import override_problem

    problem = override_problem(argv)
    assert problem is not None and "\n" not in problem
    for word in words:
        assert word in problem


def test_command_line_error_is_one_line_and_exit_2(tiny_shards):
    proc = subprocess.run(
        [sys.executable, "-m", "orchestrator.train", f"data.url={tiny_shards}", "optim.lr=-1"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == ["error: optim.lr=-1.0 must be greater than 0"]
    proc = subprocess.run(
        [sys.executable, "-m", "orchestrator.train", "optim.lrr=0.1"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1 and "optim.lrr" in proc.stderr


def test_credentials_in_the_config_are_refused(tiny_shards):
    cfg = compose(f"data.url={tiny_shards}")
    cfg.storage.options = {"client_kwargs": {"aws_secret_access_key": "x"}}
    with pytest.raises(ConfigError, match=r"storage\.options holds a credential .*environment"):
        prepare(cfg)
    cfg = compose(f"data.url={tiny_shards}")
    cfg.data.storage_options = {"token": "x"}
    with pytest.raises(ConfigError, match=r"data\.storage_options holds a credential \(token\)"):
        prepare(cfg)


def test_pipe_urls_need_an_explicit_opt_in(tiny_shards):
    cfg = compose()
    cfg.data.url = "pipe:cat /etc/passwd"
    with pytest.raises(ConfigError, match="pipe: command"):
        prepare(cfg)
    cfg = compose("data.allow_pipe=true", "model.input_size=67")
    cfg.data.url = f"pipe:cat {tiny_shards}/{{name}}"
    config = prepare(cfg)  # opted in: the manifest is read through the command
    assert config.data.url.startswith("pipe:cat ")


def test_evaluate_names_a_missing_checkpoint(tmp_path, tiny_shards):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from orchestrator.evaluate import run as evaluate

    conf = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "conf")
    with initialize_config_dir(config_dir=conf, version_base="1.3"):
        cfg = hydra_compose("evaluate", overrides=[f"checkpoint={tmp_path}", f"data.url={tiny_shards}"])
    with pytest.raises(ConfigError, match="is not a checkpoint"):
        evaluate(cfg)


@pytest.mark.parametrize("override", ["+no_such_key=1", "+model.no_such_key=1", "optim.no_such_key=1"])
def test_unknown_keys_are_refused_with_or_without_plus(tiny_shards, override):
    from orchestrator.launch.overrides import override_problem

    key = override.lstrip("+").split("=")[0]
    problem = override_problem([f"data.url={tiny_shards}", override])
    assert problem == f"{key} is not in the config schema; check the spelling (--cfg job lists every key)"
    if override.startswith("+"):  # sweeps compose through Hydra: the same sentence from prepare
        with pytest.raises(ConfigError, match=rf"^{key} is not in the config schema"):
            prepare(compose(f"data.url={tiny_shards}", override))


def test_resume_needs_the_name_of_the_run(tiny_shards):
    with pytest.raises(ConfigError, match=r"resume=true needs the run to continue; add run_name="):
        prepare(compose(f"data.url={tiny_shards}", "resume=true"))


def test_the_paper_recipe_scales_the_lr_with_the_global_batch(tiny_shards):
    one = prepare(compose("experiment=paper", f"data.url={tiny_shards}", "model.input_size=67", "cluster.nodes=1"))
    assert (one.global_batch, one.lr, one.warmup_epochs) == (128, 0.01, 0.0)  # the paper exactly
    four = prepare(compose("experiment=paper", f"data.url={tiny_shards}", "model.input_size=67", "cluster.nodes=4"))
    assert (four.global_batch, four.lr, four.warmup_epochs) == (512, 0.04, 5.0)  # Goyal et al.
    assert four.data.normalize == "paper"
    fixed = prepare(compose(f"data.url={tiny_shards}", "model.input_size=67", "cluster.nodes=4", "optim.lr=0.02"))
    assert (fixed.lr, fixed.warmup_epochs) == (0.02, 0.0)  # scale_lr: none leaves it alone
    from orchestrator.config import public_config

    assert public_config(four)["effective"] == {"lr": 0.04, "global_batch": 512, "warmup_epochs": 5.0}


def test_warm_up_rises_linearly_to_the_lr_then_hands_over():
    import torch

    from orchestrator.config import ScheduleConfig
    from orchestrator.worker.schedule import Schedule

    for name in ("plateau", "step", "cosine"):
        optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.04)
        schedule = Schedule(optimizer, ScheduleConfig(name=name), epochs=10, steps_per_epoch=4, warmup_epochs=1)
        lrs = []
        for _ in range(6):
            lrs.append(optimizer.param_groups[0]["lr"])
            optimizer.step()  # as training does, before the schedule moves on
            schedule.after_step()
        assert lrs[:4] == pytest.approx([0.01, 0.02, 0.03, 0.04]), name
        assert lrs[4] == pytest.approx(0.04, rel=0.05), name  # cosine has just begun to decay


def test_a_worker_must_fit_on_one_node():
    from orchestrator.launch.resources import workers_that_fit

    one_gpu_nodes = [{"Alive": True, "Resources": {"CPU": 8.0, "GPU": 1.0}} for _ in range(8)]
    assert workers_that_fit(one_gpu_nodes, {"CPU": 1, "GPU": 2}) == 0  # 8 GPUs in all, yet no 2-GPU worker
    assert workers_that_fit(one_gpu_nodes, {"CPU": 1, "GPU": 1}) == 8
    mixed = [{"Alive": True, "Resources": {"CPU": 16.0, "GPU": 4.0}}, {"Alive": False, "Resources": {"GPU": 8.0}}]
    assert workers_that_fit(mixed, {"CPU": 4, "GPU": 2}) == 2
    assert workers_that_fit([{"Resources": {"CPU": 2.0}}], {"CPU": 0.5}) == 4
