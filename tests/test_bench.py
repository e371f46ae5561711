"""make bench's timing helpers (the figures themselves are measured by `make bench`, not here)."""

import time

from orchestrator.tools.bench import cpu_info, interleaved_seconds


def test_steps_are_timed_in_turns_after_all_are_warm():
    calls = []
    slow = {"a": 0.02, "b": 0.0}

    def step(name):
        def run():
            calls.append(name)
            time.sleep(slow[name])

        return run

    seconds = interleaved_seconds({"a": step("a"), "b": step("b")}, repeats=3, warmup=1)
    assert calls == ["a", "b"] + ["a", "b"] * 3
    assert seconds["a"] >= 0.02 > seconds["b"]


def test_the_machine_record_names_the_cpu_and_its_bf16_units():
    info = cpu_info()
    assert info["cpu"]
    assert set(info["cpu_bf16_units"]) <= {"amx_bf16", "avx512_bf16"}
