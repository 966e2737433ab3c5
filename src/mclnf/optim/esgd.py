"""Equilibrated SGD (ESGD) with momentum, as the preconditioner paper ran it."""

from __future__ import annotations

from typing import Any, Iterable

from torch import Tensor

from mclnf.optim.adahessian import AdaHessian


class ESGD(AdaHessian):
    r"""Equilibrated SGD (Dauphin, de Vries & Bengio, NeurIPS 2015, arXiv:1502.04390) with Rademacher
    probes (Bradley & Murray) and Adam-style momentum, as in Chng, Saratchandran & Lucey,
    "Preconditioners for the Stochastic Training of Implicit Neural Representations" (arXiv:2402.08784)::

        m_t = β1 m_{t-1} + (1-β1) g_t
        D_n = β2 D_{n-1} + (1-β2) (Hv)²                  v ~ Rademacher, on refresh steps only
        θ_t = θ_{t-1} - lr · (m_t / (1-β1^t)) / (sqrt(D_n / (1-β2^τ)) + eps)

    Refresh steps: 1 … ``warmup`` (50), then every ``update_every`` (100) steps — steps 150, 250, …
    (:meth:`needs_create_graph` is true exactly then); ``D`` is stale in between.

    ``bias_correction="reference"`` (the default, registered as ``esgd``) takes τ = t, *all* steps, as
    the paper's code does: with few refreshes ``1-β2^t`` over-corrects, ``D̂`` is too small and the
    step is larger — ≈3.5× at t = 1300, ≈2.2× at t ≈ 19k (an implicit warm-up). This is what the paper
    measured. ``bias_correction="per-update"`` (``esgd-corrected``) takes τ = number of refreshes, the
    textbook-consistent estimate of ``E[(Hv)²]``.

    ``lr_warmup=warmup, bias_correction="per-update"`` (registered as ``esgd-robust``) ended above Adam on all 40
    photos of the benchmark set for gaussian and wavelet fields after 5000 steps (docs/preconditioners.md; not on every
    photo at 2000 steps, and not faster than Adam for sine fields): the learning rate ramps up linearly over the curvature
    warm-up, so the first steps — taken with a one- or few-sample ``D̂`` — do not throw the field far from its
    initialization (the paper's ESGD: update norm ≈ 10 at step 1, PSNR 13 → 5–8 dB, and on 11 of 40 gaussian photos
    a final PSNR below Adam's); and ``D̂`` is not shrunk by the reference correction's implicit warm-up, which
    after a gentle start grows the step until sine fields collapse (measured: the warm-up alone, with the reference
    correction, ended below Adam on 38 of 40 sine photos).

    Args: as :class:`~mclnf.optim.adahessian.AdaHessian`, with ``estimator="equilibrated"`` and
    ``hessian_power=1`` fixed; defaults lr 0.15, eps 1e-4, betas (0.9, 0.999), update_every 100,
    warmup 50, lr_warmup 0.

    Example::

        opt = ESGD(model.parameters(), seed=0)         # lr 0.15, the paper's setting
        mclnf.train.train(opt, loss_fn, batches, steps=1000)   # the loop honours needs_create_graph()
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float = 0.15,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-4,
        weight_decay: float = 0.0,
        update_every: int = 100,
        warmup: int = 50,
        bias_correction: str = "reference",
        seed: int | None = None,
        lr_warmup: int = 0,
    ):
        super().__init__(
            params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, hessian_power=1.0,
            estimator="equilibrated", update_every=update_every, warmup=warmup,
            bias_correction=bias_correction, seed=seed, lr_warmup=lr_warmup,
        )  # fmt: skip


__all__ = ["ESGD"]
