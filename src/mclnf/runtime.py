"""Process-wide settings that make training steps faster (the CLI applies them, the library never does), and the
device every command runs on: the one ``--device`` check and the helpers that move work there and results back."""

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


def check_device(name: str):
    """The ``torch.device`` that ``--device NAME`` names, if this machine has it; else one :class:`~mclnf.errors.MclnfError`
    line naming the option (every command's ``--device`` is checked here, before anything is loaded or written)."""
    import torch

    from mclnf.errors import MclnfError

    try:
        device = torch.device(name)
    except (RuntimeError, TypeError, ValueError):
        raise MclnfError(f"--device {name}: not a device name (cpu, cuda or cuda:N)") from None
    if device.type == "cpu":
        return device
    if device.type != "cuda":
        raise MclnfError(f"--device {name}: not supported; mclnf runs on cpu or cuda[:N]")
    if not torch.cuda.is_available():
        why = f"this torch ({torch.__version__}) is built without CUDA" if torch.version.cuda is None else "no CUDA GPU is visible"
        raise MclnfError(f"--device {name}: CUDA is not available ({why}); use --device cpu")
    count = torch.cuda.device_count()
    if (device.index or 0) >= count:
        raise MclnfError(f"--device {name}: not available; this machine has {count} CUDA device(s), cuda:0 to cuda:{count - 1}")
    return device


def on_device(predict, device):
    """``predict`` (a function of one tensor, on ``device``) as a function of CPU tensors with CPU results."""
    return lambda x: predict(x.to(device)).cpu()


def tensors_to(obj, device):
    """A dataclass ``obj`` (a signal, a task) with every tensor field on ``device`` (the same object when all are there;
    fields holding one tensor keep holding one)."""
    import dataclasses

    import torch

    moved, changes = {}, {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if f.init and isinstance(value, torch.Tensor) and value.device != torch.device(device):
            changes[f.name] = moved.setdefault(id(value), value.to(device))
    return dataclasses.replace(obj, **changes) if changes else obj
