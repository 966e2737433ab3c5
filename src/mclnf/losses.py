"""Losses: field fitting (mse, bce), MCL-NF's FIM loss, and the masked cross-entropy of multi-head
classification streams. Written out rather than via F.mse_loss: torch 2.13's ``jvp(grad(f))``
fails on ``F.mse_loss`` with mean reduction ("ZeroTensors are immutable")."""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from mclnf.errors import MclnfError

Loss = Callable[[Tensor, Tensor], Tensor]


def mse(pred: Tensor, target: Tensor) -> Tensor:
    """Mean squared error over all samples and channels."""
    return (pred - target).square().mean()


def bce_logits(logits: Tensor, labels: Tensor) -> Tensor:
    """Binary cross-entropy of logits against labels in {0, 1} (occupancy)."""
    return F.binary_cross_entropy_with_logits(logits, labels)


LOSSES: dict[str, Loss] = {"mse": mse, "bce": bce_logits}


PER_SAMPLE: dict[str, Callable[[Tensor, Tensor], Tensor]] = {  # (N, C), (N, C) → (N,): the losses above, before the mean over samples
    "mse": lambda pred, target: (pred - target).square().mean(1),
    "bce": lambda logits, labels: F.binary_cross_entropy_with_logits(logits, labels, reduction="none").mean(1),
}
FISHERS = ("kfac-diag", "diagonal")


def fim_weights(inputs: list[Tensor], deltas: list[Tensor], lam: float, fisher: str = "kfac-diag", damping: float = 1e-3, mask: Tensor | None = None,
                group: int = 1) -> Tensor:  # fmt: skip
    """Per-sample weights w_n = 1 + λ g_nᵀ F⁻¹ g_n / P of the Fisher-information-maximization loss (MCL-NF).

    g_n is sample n's gradient of its negative log-likelihood; for a linear layer l it is the outer
    product δ_{l,n} ⊗ [a_{l-1,n}, 1] of the back-propagated error ``deltas[l]`` (N, out) and the
    layer's input ``inputs[l]`` (N, in), so gᵀF⁻¹g is summed layer by layer without ever forming the
    N × P per-sample gradients. F is the empirical Fisher E_n[g gᵀ] of the batch, block-diagonal over
    layers, and within a layer

    * ``kfac-diag`` (default): F ≈ diag(E[δ²]) ⊗ diag(E[a²]) — the diagonals of K-FAC's two factors,
      so gᵀF⁻¹g = (Σ_i δ_i²/E[δ_i²]) (Σ_j a_j²/E[a_j²]): O(N·(in + out)) per layer, free next to the step;
    * ``diagonal``: F = diag E[g²], exactly: two (N × out)·(out × in) products per layer.

    Dividing by P (the number of parameters) is a fixed rescaling of λ that makes it unit-free: for
    the undamped diagonal Fisher the batch mean of gᵀF⁻¹g is exactly P, so mean w = 1 + λ.
    ``damping`` adds that fraction of each factor's mean (zero-error samples give g = 0, w = 1).
    ``mask`` (N,) marks real samples (padding: 0). The weights carry no gradient.

    ``group`` > 1: a sample is ``group`` consecutive field evaluations (a ray's points), its gradient
    the sum Σ_s δ_s ⊗ [a_s, 1] over them — formed per sample (N × out × (in + 1) per layer), with F
    its exact diagonal whatever ``fisher`` says (K-FAC's factorization does not hold for sums).
    """
    if fisher not in FISHERS:
        raise MclnfError(f"--fisher {fisher}: unknown; choose one of {', '.join(FISHERS)}")
    N = len(inputs[0]) // group
    m = torch.ones(N, dtype=inputs[0].dtype, device=inputs[0].device) if mask is None else mask.to(inputs[0].dtype)
    n = m.sum().clamp_min(1)
    q, P = 0.0, 0
    for a, d in zip(inputs, deltas):
        a1 = torch.cat([a.detach(), torch.ones_like(a[:, :1])], 1)  # the bias's input is 1
        a2, d2 = a1.square(), d.detach().square()
        P += a2.shape[1] * d2.shape[1]
        tiny = torch.finfo(a2.dtype).tiny
        if group > 1:
            g2 = torch.einsum("nso,nsi->noi", d.detach().reshape(N, group, -1), a1.reshape(N, group, -1)).square()
            f = (g2 * m[:, None, None]).sum(0) / n
            f = f + damping * f.mean() + tiny
            q = q + (g2 / f).sum((1, 2))
        elif fisher == "diagonal":
            f = (d2 * m[:, None]).T @ a2 / n  # (out, in + 1)
            f = f + damping * f.mean() + tiny
            q = q + ((d2 @ f.reciprocal()) * a2).sum(1)
        else:
            g, s = (d2 * m[:, None]).sum(0) / n, (a2 * m[:, None]).sum(0) / n
            g, s = g + damping * g.mean() + tiny, s + damping * s.mean() + tiny
            q = q + (d2 / g).sum(1) * (a2 / s).sum(1)
    return 1 + lam * q / P


def fim_loss(forward: Callable[[Tensor, list[Tensor]], tuple[Tensor, list[Tensor]]], out_dims: list[int], x: Tensor, target: Tensor, lam: float,
             loss: str = "mse", fisher: str = "kfac-diag", mask: Tensor | None = None, observe: Callable | None = None) -> Tensor:  # fmt: skip
    """The FIM loss Σ_n w_n ℓ_n / Σ_n w_n (weights from :func:`fim_weights`, without gradient).

    ``forward(x, taps)`` is a field's forward with taps (``Field.forward``, or ``functional_call`` of
    it: this works inside ``torch.func`` transforms). One forward pass serves both the errors δ
    (a ``torch.func.vjp`` with respect to the taps: input gradients only) and the weighted loss, so a
    step costs one extra backward through the layers' inputs, not a second forward.

    ``observe(field, x)`` (a layout's; radiance renders rays) makes the predictions from the field;
    each sample is then the ``group`` field evaluations ``observe`` makes for it (:func:`fim_weights`).
    """
    per_sample = PER_SAMPLE[loss]
    group = 1
    if observe is not None:
        calls = []
        with torch.no_grad():  # how many field evaluations a sample takes (the sampling only, no field)
            observe(lambda p: (calls.append(len(p)), p.new_zeros(len(p), out_dims[-1]))[1], x)
        if len(calls) != 1 or calls[0] % len(x):
            raise MclnfError("the FIM loss needs one field evaluation pass per prediction (scenes: --importance 0)")
        group = calls[0] // len(x)
    taps = [x.new_zeros(x.shape[0] * group, d) for d in out_dims]

    def losses(taps):
        if observe is None:
            pred, inputs = forward(x, taps)
        else:
            inputs = []

            def field(points):  # the field with taps; keeps the layers' inputs
                y, layer_inputs = forward(points, taps)
                inputs.extend(layer_inputs)
                return y

            pred = observe(field, x)
        ell = per_sample(pred, target)
        return ell, (ell, inputs)

    _, backprop, (ell, inputs) = torch.func.vjp(losses, taps, has_aux=True)
    deltas = backprop(torch.ones_like(ell))[0]
    w = fim_weights(inputs, deltas, lam, fisher, mask=mask, group=group)
    if mask is not None:
        w = w * mask.to(w.dtype)
    return (w * ell).sum() / w.sum()


def head_loss(heads: Tensor | None) -> Loss:
    """Cross-entropy of logits (N, C) against targets (N, 2) = (label, task); with ``heads`` (T, C)
    each sample's logits outside its task's classes are masked out (multi-head class-incremental streams)."""

    def loss(logits: Tensor, y: Tensor) -> Tensor:
        if heads is not None:
            logits = logits.masked_fill(~heads.to(logits.device)[y[:, 1]], float("-inf"))
        return F.cross_entropy(logits, y[:, 0])

    return loss
