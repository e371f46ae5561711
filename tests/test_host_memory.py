"""The host allocator setting (perf.reuse_host_memory): a large tensor freed and allocated again
is served from pages already faulted in, and release() hands them back; in a thread too, as Ray
Train runs the training loop, given the environment its workers start with. Run in child
processes: the settings are the whole process's."""

import os
import subprocess
import sys
import textwrap

import pytest

from orchestrator.worker import host_memory

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")

MB = 1 << 20
PAGES = 128 * MB // 4096

# Allocates and frees a 128 MB tensor (over glibc's mmap threshold, and over the 64 MB that a
# thread's own arena maps afresh) 20 times and prints the page faults of the last 5: glibc
# needs a few rounds to coalesce the first freed blocks with their neighbours.
FAULTS = """
import resource, torch

def faults_of_fresh_tensors():
    faults = []
    for _ in range(20):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        t = torch.empty(128 << 20, dtype=torch.uint8).fill_(1)
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
        del t
    return max(faults[-5:])
"""

IN_THE_MAIN_THREAD = FAULTS + textwrap.dedent(
    """
    from orchestrator.worker import host_memory

    default = faults_of_fresh_tensors()
    assert host_memory.keep_freed_blocks()
    kept = faults_of_fresh_tensors()
    host_memory.release()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    torch.empty(128 << 20, dtype=torch.uint8).fill_(1)
    released = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    print(default, kept, released)
    """
)

IN_A_THREAD = FAULTS + textwrap.dedent(
    """
    import threading

    found = []
    thread = threading.Thread(target=lambda: found.append(faults_of_fresh_tensors()))
    thread.start()
    thread.join()
    print(found[0])
    """
)


def faults(code: str, env: dict[str, str] | None = None) -> list[int]:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env).stdout
    return [int(n) for n in out.split()]


def test_freed_blocks_are_reused_until_released():
    default, kept, released = faults(IN_THE_MAIN_THREAD)
    assert default > PAGES // 2  # glibc's default: unmapped on free, faulted in again
    assert kept < PAGES // 20  # kept: the same pages serve the next tensor
    assert released > PAGES // 2  # release() handed them back


def test_a_training_thread_reuses_freed_blocks_in_a_worker_started_with_its_environment():
    (kept,) = faults(IN_A_THREAD, env=os.environ | host_memory.ENV)
    assert kept < PAGES // 20


def test_ray_training_workers_start_with_that_environment_unless_turned_off():
    from orchestrator.config import PerfConfig, TrainConfig
    from orchestrator.launch.ray_job import worker_env

    assert worker_env(TrainConfig()).items() >= host_memory.ENV.items()
    assert not worker_env(TrainConfig(perf=PerfConfig(reuse_host_memory=False))).keys() & host_memory.ENV.keys()
