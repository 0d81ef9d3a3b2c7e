"""engine/runtime.py: the allocator setting the trainer applies."""

import resource
import sys

import pytest
import torch

from spikeformer.engine import config as C
from spikeformer.engine.runtime import reuse_freed_memory


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc settings")
def test_freed_activations_are_reused_without_page_faults():
    assert C.DEFAULTS["reuse_memory"] is True
    if not reuse_freed_memory():
        pytest.skip("this C library has no mallopt")
    n = 64 * 2**20 // 4  # 64 MB: above glibc's largest automatic mmap threshold (32 MB)
    for _ in range(4):  # the first rounds grow the heap
        t = torch.ones(n)
        del t
    faults = []
    for _ in range(3):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        t = torch.ones(n)  # writes every page
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
        del t
    # without the setting every 4 KB page of a fresh mmap faults once: 16384 faults for 64 MB, every time
    assert min(faults) < 1000, faults
