"""The one training loop (:func:`train`) — every fit and every learner's task runs through it
(:func:`learn_task` drives a learner's hooks) — and the outer step of meta-learning beside it (:func:`meta_step`)."""

from __future__ import annotations

import contextlib
import math
from time import perf_counter
from typing import Callable, Iterable

import torch
import torch.distributed as dist
from torch import Tensor
from tqdm.auto import tqdm

from mclnf.errors import DivergedError
from mclnf.optim import curvature_step, needs_create_graph
from mclnf.runtime import Precision
from mclnf.sampling import Batch
from mclnf.tracking import Tracker, norm


def log_spaced_steps(steps: int) -> list[int]:
    """1, 2, 4, … up to ``steps``, and ``steps`` itself."""
    out = [2**k for k in range(int(math.log2(steps)) + 1)] if steps >= 1 else []
    return out + [steps] if steps not in out and steps >= 1 else out


def evaluation_steps(steps: int, every: int | None = None) -> list[int]:
    """The steps of a run of ``steps`` at which it is evaluated: log-spaced (:func:`log_spaced_steps`), or
    every ``every``-th and the last."""
    if every is None:
        return log_spaced_steps(steps)
    out = list(range(every, steps + 1, every))
    return out if out and out[-1] == steps else [*out, steps]


def params_finite(optimizer: torch.optim.Optimizer) -> bool:
    return all(bool(torch.isfinite(p).all()) for g in optimizer.param_groups for p in g["params"])


def train(
    optimizer: torch.optim.Optimizer,
    loss_fn: Callable[[Tensor, Tensor], Tensor],
    batches: Callable[[int], Batch],
    steps: int,
    *,
    start_step: int = 0,
    elapsed: float = 0.0,
    eval_steps: Iterable[int] = (),
    on_eval: Callable[[int, float, float], dict | None] | None = None,
    last_good_step: int | None = None,
    progress: bool = True,
    desc: str = "fit",
    update: Callable[[], None] | None = None,
    tracker: Tracker | None = None,
    watch: Callable[[int, float], None] | None = None,
    precision: Precision | None = None,
) -> float:
    """Run optimization steps ``start_step + 1 … steps``; returns the training time in seconds.

    Each step: ``loss = loss_fn(*batches(step))``, gradients into ``p.grad`` (differentiable when
    the optimizer asks for it, see :func:`mclnf.optim.needs_create_graph`), ``update()`` (default
    ``optimizer.step()``; a learner's strategy update wraps it). At the steps the ``tracker`` logs, it
    gets the loss, the learning rate and the norms of the gradient and of the update (their cost is
    not counted as training time). At the steps in ``eval_steps``, ``on_eval(step, loss, training_seconds)``
    is called outside the timed region; the metrics it may return join the loss on the progress bar,
    which shows the loss of every step. A non-finite loss or parameter raises :class:`DivergedError`
    before anything is updated or saved from it, naming ``last_good_step`` (the last step ``on_eval`` saw).
    ``watch(step, loss)`` sees every step's loss first and may stop the run by raising (``--optimizer auto``'s
    :class:`~mclnf.optim.auto.Guard`).

    ``precision`` (:class:`~mclnf.runtime.Precision`; default and ``fp32``: plain float32, no autocast context at
    all) runs ``loss_fn`` under autocast — but on the steps that estimate curvature (:func:`~mclnf.optim.curvature_step`),
    which stay float32 — and, for fp16, scales the loss and skips the update of a step whose gradients overflowed.
    """
    eval_steps = set(eval_steps)
    amp = precision if precision is not None and precision.mixed else None
    update = update or optimizer.step
    params = [p for g in optimizer.param_groups for p in g["params"] if p.requires_grad]
    bar = tqdm(total=steps, initial=start_step, desc=desc, disable=not progress, mininterval=1.0, dynamic_ncols=True)
    shown: dict[str, str] = {}
    try:
        for step in range(start_step + 1, steps + 1):
            t0 = perf_counter()
            optimizer.zero_grad(set_to_none=True)
            cast = amp is not None and not curvature_step(optimizer)  # curvature estimates see float32 passes
            if cast:
                with amp.autocast():
                    loss = loss_fn(*batches(step))
            else:
                loss = loss_fn(*batches(step))
            value = loss.item()
            if watch is not None:
                watch(step, value)
            if not math.isfinite(value):
                raise DivergedError(step, value, last_good_step)
            if needs_create_graph(optimizer):  # autograd.grad, not backward: no parameter↔grad cycle
                for p, g in zip(params, torch.autograd.grad(loss, params, create_graph=True, allow_unused=True)):
                    p.grad = g
            elif cast:
                amp.scale(loss).backward()
            else:
                loss.backward()
            finite = amp.unscale(optimizer) if cast else True  # fp16: False when the scaled gradients overflowed
            logged = tracker is not None and tracker.logs(step)
            if logged:
                t1 = perf_counter()
                grad_norm, before = norm(p.grad for p in params), [p.detach().clone() for p in params]
                t0 += perf_counter() - t1
            if finite:
                update()
            if logged:
                t1 = perf_counter()
                lr = optimizer.param_groups[0].get("lr")
                stats = {"lr": None if lr is None else float(lr), "grad_norm": grad_norm, "update_norm": norm(p.detach() - b for p, b in zip(params, before))}
                t0 += perf_counter() - t1
            elapsed += perf_counter() - t0
            if logged:
                tracker.train_step(step, value, elapsed, **stats)
            bar.update()
            if progress:
                bar.set_postfix(loss=f"{value:.3g}", **shown, refresh=False)
            if step in eval_steps:
                if not params_finite(optimizer):
                    raise DivergedError(step, float("nan"), last_good_step, what="parameters")
                if on_eval is not None:
                    shown = {k: f"{v:.4g}" for k, v in (on_eval(step, value, elapsed) or {}).items() if isinstance(v, float)}
                last_good_step = step
    finally:
        optimizer.zero_grad(set_to_none=True)  # drops a create_graph gradient's graph
        bar.close()
    return elapsed


def learn_task(learner, task, steps: int, progress: bool = True, *, tracker: Tracker | None = None, eval_every: int | None = None,
               on_eval: Callable[[int, float, float], dict | None] | None = None, precision: Precision | None = None) -> dict[str, float]:  # fmt: skip
    """Learn ``task`` with ``learner`` (a :class:`mclnf.learners.Learner`) for ``steps`` training steps:
    ``before_task`` → :func:`train` over its ``batches`` with its ``loss`` and ``update`` → ``after_task``.
    ``tracker`` logs its training steps (numbered ``1 … steps × learner.updates_per_step``: MER counts its pieces);
    with ``eval_every``, ``on_eval(step, loss, seconds)`` is called every ``eval_every`` steps before the
    task's last (which its caller evaluates after ``after_task``); ``precision``: the steps' arithmetic (:func:`train`).
    Returns the seconds spent training and after it."""
    learner.before_task(task)
    desc = f"{learner.name} task {task.index + 1}/{len(learner.tasks)}"
    total = steps * learner.updates_per_step
    within = [s * learner.updates_per_step for s in evaluation_steps(steps, eval_every)[:-1]] if eval_every and on_eval else []

    def evaluate(step: int, loss: float, seconds: float) -> dict | None:
        return on_eval(step, loss, seconds) if step < total else None  # the last: after after_task, by the caller

    # the task's last step is an evaluation step, for the loop's check of the parameters at the end
    seconds = train(learner.optimizer, learner.loss, learner.batches(task), total, eval_steps=(*within, total), on_eval=evaluate if on_eval else None,
                    progress=progress, desc=desc, update=learner.update, tracker=tracker, precision=precision)  # fmt: skip
    t0 = perf_counter()
    learner.after_task(task)
    return {"train_s": seconds, "after_task_s": perf_counter() - t0}


def meta_step(method, theta: dict[str, Tensor], optimizer: torch.optim.Optimizer, values: Tensor, coords: Tensor | None, count: int,
              importance, subset: Tensor | None, clip_grad: float, precision: Precision | None = None) -> tuple[float, float]:  # fmt: skip
    """One outer step of meta-learning θ₀ (``theta``, optimized by ``optimizer``) on a meta-batch:
    the method's meta-objective (:meth:`mclnf.learners.MetaMethod.objective`), its gradient summed
    over the processes of a ``torch.distributed`` group, a non-finite check (:class:`DivergedError`
    with step 0: the caller names the step), the norm clipped to ``clip_grad``, the optimizer's step,
    and EMCL's importance h ← η h + (1 − η) Ω/mean(Ω) where ``importance`` (an
    :class:`~mclnf.learners.emcl.Importance` over ``method.fast``) is given. Returns (loss after
    adaptation per task, gradient norm before clipping).

    ``precision`` bf16 runs the meta-objective — inner loop and outer loss — under autocast (θ₀, its Adam state,
    the meta-gradient, the importance and the reported loss stay float32; a second-order meta-gradient is
    differentiated through the bf16 products); fp16 is not taken: its loss scaling would have to reach the
    inner loop's gradients too (meta-train's config refuses it)."""
    if precision is not None and precision.scaler is not None:
        raise ValueError("meta_step: fp16 needs loss scaling of the inner loop's gradients, which it does not do; use bf16")
    h = None if importance is None else dict(zip(method.fast, importance.normalized()))
    optimizer.zero_grad(set_to_none=True)
    with precision.autocast() if precision is not None else contextlib.nullcontext():
        obj, loss_sum, omega = method.objective(theta, values, count, h, coords, subset)
    obj.backward()
    stats = torch.cat([loss_sum.reshape(1)] + [omega[k].reshape(-1) for k in method.fast])
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        for p in theta.values():
            if p.grad is not None:
                dist.all_reduce(p.grad)
        dist.all_reduce(stats)
    loss = float(stats[0]) / count
    if not torch.isfinite(stats[:1]).all():
        raise DivergedError(0, loss, None)
    if not all(torch.isfinite(p.grad).all() for p in theta.values() if p.grad is not None):
        raise DivergedError(0, loss, None, what="meta-gradient")
    grad_norm = float(torch.nn.utils.clip_grad_norm_(theta.values(), clip_grad))
    optimizer.step()
    if importance is not None:
        taylor = stats[1:] / count
        taylor = taylor / taylor.mean().clamp_min(torch.finfo(taylor.dtype).tiny)
        importance.update([v.reshape(theta[k].shape) for k, v in zip(method.fast, taylor.split([theta[k].numel() for k in method.fast]))])
    return loss, grad_norm
