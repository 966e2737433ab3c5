"""peak_mib: the rise of the resident set during a call, on this (Linux) machine."""

import subprocess
import sys

import torch

from mclnf.eval.memory import allocated_peak_mib


def test_peak_sees_a_temporary_and_only_it():
    """In a fresh process, as the docstring says (a long-lived heap may reuse freed memory)."""
    code = ("import torch; from mclnf.eval.memory import peak_mib; "
            "print(peak_mib(lambda: torch.ones(96 * 2**20 // 4).sum()), peak_mib(lambda: torch.ones(1024).sum()))")  # fmt: skip
    big, small = map(float, subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split())
    assert 90 <= big <= 110  # a 96 MiB temporary
    assert small < 5


def test_allocated_peak_counts_what_is_alive_at_once():
    def two_then_one():
        a = torch.ones(8 * 2**20 // 4)  # 8 MiB
        b = torch.ones(8 * 2**20 // 4)
        del a, b
        return torch.ones(4 * 2**20 // 4).sum()

    assert 15.9 <= allocated_peak_mib(two_then_one) <= 16.5


def test_allocated_peak_sees_frees_inside_function_transforms():
    """Eight vmap(jacrev) Jacobians of 4 MiB, each dropped before the next: the peak is about one of them, not eight."""
    from torch.func import jacrev, vmap

    w = torch.ones(1024)

    def eight():
        for _ in range(8):
            vmap(jacrev(lambda x: x * w))(torch.ones(1, 1024)).sum()  # (1, 1024, 1024) float32: 4 MiB

    assert 4 <= allocated_peak_mib(eight) <= 12
