"""The host allocator setting (perf.reuse_host_memory): a large tensor freed and allocated again
is served from pages already faulted in, and release() hands them back. Run in a child process:
mallopt changes the whole process."""

import subprocess
import sys
import textwrap

import pytest

CHILD = textwrap.dedent(
    """
    import resource, sys, torch
    from orchestrator import host_memory

    def faults_of_a_fresh_tensor():
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        t = torch.empty(64 << 20, dtype=torch.uint8).fill_(1)  # 64 MB: over glibc's mmap threshold
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
        del t
        return faults

    def faults_after_warming_up():
        for _ in range(8):  # glibc consolidates the first freed blocks with their neighbours
            faults_of_a_fresh_tensor()
        return faults_of_a_fresh_tensor()

    default = faults_after_warming_up()
    assert host_memory.keep_freed_blocks()
    kept = faults_after_warming_up()
    host_memory.release()
    released = faults_of_a_fresh_tensor()
    print(default, kept, released)
    """
)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_freed_blocks_are_reused_until_released():
    out = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, check=True).stdout
    default, kept, released = map(int, out.split())
    pages = (64 << 20) // 4096
    assert default > pages // 2  # glibc's default: unmapped on free, faulted in again
    assert kept < pages // 20  # kept: the same pages serve the next tensor
    assert released > pages // 2  # release() handed them back
