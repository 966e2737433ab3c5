"""Many fields of one architecture trained as one (functa's batching): their parameters stacked along a new
first axis (``torch.func.stack_module_state``) and the field evaluated with ``torch.func.vmap`` over
``torch.func.functional_call``, so that one forward pass, one backward pass and one optimizer step serve them all.

The fields stay independent. The loss is the sum of each field's own loss, so each stacked slice receives
exactly its own field's gradient, and the optimizers taken here (:data:`STACKABLE`: Adam, SGD) work element by
element, so one of them over the stacked tensors is one optimizer per field. Every field starts from the
initialization ``mclnf fit`` starts from with the same seed, and the mini-batches are ``mclnf fit``'s (one
:class:`~mclnf.sampling.EpochSampler` order, which signals sharing their samples share): a stacked fit is
fitting each signal alone, up to the rounding of batched matrix products. The training steps run through the
one training loop, :func:`mclnf.train.train`.
"""

from __future__ import annotations

import copy
import math
from functools import partial

import torch
from torch import Tensor
from torch.func import functional_call, stack_module_state, vmap

from mclnf.errors import DivergedError, MclnfError
from mclnf.fields import Field, FieldConfig
from mclnf.losses import LOSSES
from mclnf.optim import build_optimizer
from mclnf.resources import physical_memory
from mclnf.runtime import Precision
from mclnf.sampling import EpochSampler
from mclnf.signals import Signal
from mclnf.train import train

STACKABLE = ("adam", "sgd")  # element-wise optimizers: over stacked parameters, exactly one per field
CPU_STACK_BYTES = 4 * 2**20  # CPU: a stack's activations of one layer (signals × batch × width × 4 bytes) at most this (see default_stack)
ACTIVATION_COPIES = 4  # tensors of batch × width per hidden layer a step keeps: pre-activation, activation, their gradients


class StackedFields:
    """``count`` fields of ``config``, each initialized as ``mclnf fit`` initializes one with ``seed``
    (``torch.manual_seed(seed)``, then :class:`~mclnf.fields.Field`), as stacked tensors on ``device``.

    ``parameters()`` are the stacked leaves (what an optimizer takes); calling the object on samples (N, d)
    gives every field's values (count, N, c); :meth:`field` is one of them as an ordinary field."""

    def __init__(self, config: FieldConfig, count: int, seed: int, device: str | torch.device = "cpu"):
        torch.manual_seed(seed)
        self.init = Field(config).to(device)  # every field's start, and the module each slice is loaded into
        self.config, self.count = config, count
        self.params, self.buffers = stack_module_state([self.init] * count)
        self.template = copy.deepcopy(self.init).to("meta")  # the computation, without data: functional_call supplies each slice

    def parameters(self) -> list[Tensor]:
        return list(self.params.values())

    def one(self, params: dict[str, Tensor], buffers: dict[str, Tensor], x: Tensor) -> Tensor:
        """The field of one slice (``params``, ``buffers``) at samples ``x``."""
        return functional_call(self.template, (params, buffers), (x,))

    def __call__(self, x: Tensor) -> Tensor:
        """Every field at the samples ``x`` (N, d): (count, N, c)."""
        return vmap(self.one, in_dims=(0, 0, None))(self.params, self.buffers, x)

    def losses(self, loss, observe, x: Tensor, y: Tensor) -> Tensor:
        """Every field's ``loss(observe(field, x), target)`` — ``y`` (N, count, c) holds the targets, field k's in ``y[:, k]``: (count,)."""
        per_field = lambda p, b, target: loss(observe(partial(self.one, p, b), x), target)  # noqa: E731
        return vmap(per_field, in_dims=(0, 0, 1))(self.params, self.buffers, y)

    @torch.no_grad()
    def field(self, k: int) -> Field:
        """Field ``k`` as an ordinary :class:`~mclnf.fields.Field` (a copy, on the stack's device)."""
        f = copy.deepcopy(self.init)
        state = f.state_dict()
        f.load_state_dict({name: t[k] for name, t in {**self.params, **self.buffers}.items() if name in state})
        return f


def default_stack(config: FieldConfig, batch_size: int, samples: int, count: int, device: str | torch.device = "cpu") -> int:
    """Signals per stack when none is given: as many of the ``count`` as the memory takes, each field needing its
    parameters four times (weights, gradients, Adam's two moments) and ``ACTIVATION_COPIES`` tensors of
    batch × width per hidden layer. A GPU takes half of its free memory. The CPU takes a quarter of the machine's
    memory, and no more than keeps a stack's activations of one layer within ``CPU_STACK_BYTES`` (4 MiB): past that
    a bigger stack is no faster per signal, and then slower, as a step's element-wise passes leave the caches.
    Measured on the 2-core Xeon (2 MiB of L2 a core), one thread, sine fields at batch 512, ms per field and step:
    3 × 64 — stacks of 8: 0.77–0.82, of 32 (4 MiB): 0.54–0.72, of 64: 0.45–0.69; 3 × 128 — 8: 1.1–1.6, 16 (4 MiB):
    1.1–1.5, 32: 1.2–1.7; 5 × 256 — 2: 8.2–9.2, 8 (4 MiB): 6.3–8.3, 32: 9.1–11.5 (alone: ≈ 11–13)."""
    batch = min(batch_size, samples)
    per_field = 4 * (4 * config.num_params + batch * (config.width * (config.depth - 1) * ACTIVATION_COPIES + 2 * config.out_dim))
    device = torch.device(device)
    if device.type == "cuda":
        budget = torch.cuda.mem_get_info(device)[0] // 2
        cap = count
    else:
        budget = (physical_memory() or 2**32) // 4
        cap = max(1, CPU_STACK_BYTES // (4 * batch * config.width))
    return max(1, min(count, cap, budget // per_field))


def stacks(indices: list[int], size: int) -> list[list[int]]:
    """``indices`` cut into consecutive stacks of at most ``size``, as even as that allows (10 by 4: 4, 3, 3)."""
    n = math.ceil(len(indices) / size)
    sizes = [len(indices) // n + (k < len(indices) % n) for k in range(n)]
    return [indices[sum(sizes[:k]) : sum(sizes[: k + 1])] for k in range(n)]


def fit_stacked(signals: list[Signal], config: FieldConfig, *, optimizer: str = "adam", lr: float | None = None, steps: int, batch_size: int, seed: int = 0,
                device: str | torch.device = "cpu", precision: Precision | None = None, progress: bool = False, desc: str = "fit") -> tuple[StackedFields, list[float], float]:  # fmt: skip
    """Fit one field of ``config`` to each of ``signals`` (one layout, the same samples) for ``steps`` steps of
    ``batch_size`` samples, all stacked (module docstring). Returns the fields, each one's loss at the last step,
    and the training time in seconds. A diverged field stops all with a :class:`~mclnf.errors.DivergedError`
    naming its signal."""
    if optimizer not in STACKABLE:
        raise MclnfError(f"--optimizer {optimizer}: fields trained together take {' or '.join(STACKABLE)} (element-wise, so one per field)")
    first = signals[0]
    fields = StackedFields(config, len(signals), seed, device)
    opt = build_optimizer(optimizer, fields, lr, seed)
    values = torch.stack([s.values for s in signals], 1).to(device)  # (N, count, c): a mini-batch of samples is a batch of rows
    sampler = EpochSampler(first.coords.to(device), values, batch_size, seed)
    loss_of, layout, last = LOSSES[first.layout.loss], first.layout, []

    def loss_fn(x: Tensor, y: Tensor) -> Tensor:
        per_field = fields.losses(loss_of, layout.observe, x, y)
        last[:] = [per_field.detach()]
        return per_field.sum()

    try:
        seconds = train(opt, loss_fn, sampler, steps, eval_steps=(steps,), progress=progress, desc=desc, precision=precision)
    except DivergedError as e:
        finite = torch.isfinite(last[0]) if e.what == "loss" else torch.stack([torch.isfinite(p.flatten(1)).all(1) for p in fields.parameters()]).all(0)
        bad = (~finite).nonzero().flatten().tolist() or list(range(len(signals)))  # none alone: their sum overflowed
        names = ", ".join(signals[k].name for k in bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
        raise DivergedError(e.step, e.loss, None, e.what, where=f" (fitting {names})", kept="the signals fitted before are kept (--resume skips them)") from None
    return fields, last[0].tolist(), seconds
