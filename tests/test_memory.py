import platform

import pytest
import torch

from harness.memory import release_freed_memory
from harness.models import Projector, build_encoder
from harness.ssl import SimCLRConfig, simclr_step


def resident_bytes() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS"))


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc's malloc_trim")
def test_freed_activations_leave_the_process_after_release():
    encoder, projector = build_encoder("resnet18", 16), Projector(128, 128)
    x = torch.rand(128, 3, 32, 32)
    simclr_step(encoder, projector, x, SimCLRConfig(epochs=1, batch_size=128), torch.Generator().manual_seed(0)).backward()
    del encoder, projector, x
    before = resident_bytes()
    assert release_freed_memory()
    assert before - resident_bytes() > 50 * 2**20  # the step's activations were ~400 MB; glibc kept most of them
