"""Outer steps of :func:`mclnf.train.meta_step` in float64 on a tiny field, for every meta-gradient rule: the problem
``test_meta_distributed.py`` computes in one process and, as this script under ``torchrun``, in N processes.

    torchrun --standalone --nproc_per_node=2 tests/commands/meta_step_worker.py OUT_FOLDER

Each process takes its contiguous slice of the same meta-batch (as ``mclnf meta-train`` does), joins a gloo group
and writes what :func:`run` returns for every (method, rule) to ``OUT_FOLDER/rank<r>.pt``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.distributed as dist

from mclnf.fields import FieldConfig
from mclnf.learners import MetaOptions, meta_method
from mclnf.learners.emcl import Importance
from mclnf.learners.meta import META_GRADIENTS
from mclnf.signals.datasets import load_dataset
from mclnf.train import meta_step

RULES = tuple(META_GRADIENTS)  # second-order, first-order, emcl
METHODS = ("mol", "oml", "mcl-nf")  # whole signals; a representation outside the inner loop; a module per (signal, task)
META_BATCH = 4
STEPS = 2  # the second step sees Adam's state and emcl's importance of the first


def problem() -> tuple:
    """The layout and the meta-batch (float64): the first four 6 × 6 faces of ``lfw_subset``'s meta-train split."""
    ds = load_dataset("lfw_subset", {"resize": 6})
    return ds.layout, ds.values("train")[:META_BATCH].double()


def make(layout, method: str, rule: str):
    """The method with ``rule`` on a 3 × 8 sine field and its θ₀, both float64."""
    m = meta_method(layout, FieldConfig(2, 1, width=8, depth=3, omega0=3.0), MetaOptions(method=method, meta_grad=rule, inner_steps=2, inner_lr=0.05))
    m.template.double()
    return m, {k: v.double().requires_grad_() for k, v in m.init_params(0).items()}


def run(layout, values: torch.Tensor, method: str, rule: str, lo: int, hi: int) -> dict:
    """:data:`STEPS` calls of ``meta_step`` on the slice ``values[lo:hi]`` of the meta-batch (all-reduced when a process
    group is up); after each: the meta-gradient (summed over processes, unclipped), the loss and the gradient's norm;
    at the end θ₀ and emcl's importance h."""
    m, theta = make(layout, method, rule)
    optimizer = torch.optim.Adam(theta.values(), lr=1e-2)
    importance = Importance(0.9, [torch.ones_like(theta[k]) for k in m.fast]) if rule == "emcl" else None
    count = values.shape[0] * (m.opts.tasks if m.modular else 1)  # tasks in the global meta-batch
    grads, losses, norms = [], [], []
    for _ in range(STEPS):
        loss, grad_norm = meta_step(m, theta, optimizer, values[lo:hi], None, count, importance, None, 1e9)
        grads.append({k: v.grad.detach().clone() for k, v in theta.items() if v.grad is not None})
        losses.append(loss)
        norms.append(grad_norm)
    return {"grads": grads, "loss": losses, "grad_norm": norms, "theta": {k: v.detach().clone() for k, v in theta.items()},
            "h": None if importance is None else [h.clone() for h in importance.h]}  # fmt: skip


def main(out: Path) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    try:
        rank, size = dist.get_rank(), dist.get_world_size()
        layout, values = problem()
        lo, hi = rank * META_BATCH // size, (rank + 1) * META_BATCH // size
        results = {f"{method}/{rule}": run(layout, values, method, rule, lo, hi) for method in METHODS for rule in RULES}
        torch.save(results, out / f"rank{rank}.pt")
        dist.barrier()  # every process leaves together (a process exiting with gloo's threads alive may abort another)
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
