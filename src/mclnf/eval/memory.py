"""Peak memory of one call, measured by the allocator (CUDA) or torch's memory profiler (CPU)."""

from __future__ import annotations

from typing import Callable

import torch


def peak_mib(fn: Callable[[], object], device: str | torch.device = "cpu") -> float:
    """The largest amount of memory (MiB) that tensors allocated *during* ``fn()`` held at once.

    Tensors alive before the call (parameters, data) are not counted. On CUDA:
    ``torch.cuda.max_memory_allocated`` above the starting allocation; on CPU: the allocation timeline
    of ``torch.profiler`` (every tensor's creation and destruction, in order), which sees exactly
    what PyTorch's CPU allocator hands out (not Python objects, not allocator caching).
    """
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - base) / 2**20
    from torch.profiler import ProfilerActivity, profile
    from torch.profiler._memory_profiler import Action

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True, with_stack=True) as prof:
        fn()
    held = peak = 0
    for _, action, _, size in prof._memory_profile().timeline:
        if action == Action.CREATE:
            held += size
        elif action == Action.DESTROY:
            held -= size
        peak = max(peak, held)
    return peak / 2**20
