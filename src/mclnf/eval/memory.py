"""Peak memory of one call: the CUDA allocator's peak, or the process's resident peak on Linux."""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

import torch


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise OSError(f"/proc/self/status has no {field}")


@contextmanager
def _silent_stderr():
    """File descriptor 2 to /dev/null: the profiler's C++ backend logs its start and stop there."""
    sys.stderr.flush()
    saved, null = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(null)


def allocated_peak_mib(fn: Callable[[], object]) -> float:
    """The most memory that tensors allocated during ``fn()`` held at once (MiB): the CPU allocator's own events,
    recorded by ``torch.profiler`` (every allocation and free, with its size, in order). Independent of what the
    process held before, so comparable across calls in one process, and frees inside ``torch.func`` transforms
    count. The profiler's data-flow timeline (``_memory_profile()``), used before, missed those frees (a
    diagonal Fisher by ``vmap(jacrev)``: 412 MiB against the allocator's 150) and held every event's stack:
    an EWC baseline at 180 × 180 exhausted 24 GB measuring it."""
    from torch._C._profiler import _EventType
    from torch.profiler import ProfilerActivity, profile

    with _silent_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    allocations, stack = [], list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        e = stack.pop()
        stack.extend(e.children)
        if e.typed[0] == _EventType.Allocation:
            allocations.append((e.start_time_ns, e.typed[1].alloc_size))  # a free: a negative size
    held = peak = 0
    for _, change in sorted(allocations):
        held += change
        peak = max(peak, held)
    return peak / 2**20


def peak_mib(fn: Callable[[], object], device: str | torch.device = "cpu") -> float | None:
    """How far memory rose above its level before ``fn()`` at the peak of the call (MiB).

    CUDA: ``torch.cuda.max_memory_allocated`` above the allocation at the start. CPU (Linux): the
    process's resident-set peak (VmHWM, reset first through ``/proc/self/clear_refs``) above its
    resident size at the start — real memory, allocator and all; memory the allocator already held
    may be reused without showing, so measure in a fresh process for clean figures. ``None`` where
    neither is available.
    """
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - base) / 2**20
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
        base = _status_kib("VmRSS")
    except OSError:
        fn()
        return None
    fn()
    return max(0, _status_kib("VmHWM") - base) / 1024
