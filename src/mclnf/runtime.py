"""Process-wide settings that make training steps faster; the CLI applies them, the library never does."""

from __future__ import annotations

import ctypes
import ctypes.util


def keep_freed_memory() -> bool:
    """glibc only: serve large blocks from the heap (no mmap) and never trim it, so a step's big
    temporaries reuse pages already faulted in. By default every block over 32 MiB (batch 65,536:
    each activation is 64 MiB) is a fresh mmap that the kernel zero-fills at first touch, every step
    (measured: 1000 → 608 ms per step at batch 65,536, 43.7 → 39.2 ms at 4096). The cost: the process
    keeps its peak memory. Returns whether the setting took effect."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4
        return bool(libc.mallopt(M_MMAP_MAX, 0)) and bool(libc.mallopt(M_TRIM_THRESHOLD, 2**31 - 1))
    except (OSError, AttributeError):
        return False


def flush_denormals() -> bool:
    """Treat subnormal floats as zero. A gaussian or wavelet field's exp(−u²) underflows into subnormals
    as it trains (pre-activations grow), and x86 arithmetic on them is many times slower: measured on a
    trained lego NeRF (gaussian 4 × 128), a 512-ray training step 0.50 → 0.24 s. Values below 1.2e−38
    become 0. Returns whether the CPU supports it."""
    import torch

    return torch.set_flush_denormal(True)
