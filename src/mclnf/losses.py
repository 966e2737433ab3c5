"""Losses: field fitting (mse, bce), MCL-NF's FIM loss, and the masked cross-entropy of multi-head
classification streams. Written out rather than via F.mse_loss: torch 2.13's ``jvp(grad(f))``
fails on ``F.mse_loss`` with mean reduction ("ZeroTensors are immutable")."""

from __future__ import annotations

import functools
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

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
                group: int = 1, prior: list[Tensor] | None = None, with_sums: bool = False) -> Tensor | tuple[Tensor, list[Tensor]]:  # fmt: skip
    """Per-sample weights w_n = 1 + λ g_nᵀ F⁻¹ g_n / P of the Fisher-information-maximization loss (MCL-NF, eq. 3).

    g_n is sample n's gradient of its negative log-likelihood; for a linear layer l it is the outer
    product δ_{l,n} ⊗ [a_{l-1,n}, 1] of the back-propagated error ``deltas[l]`` (N, out) and the
    layer's input ``inputs[l]`` (N, in), so gᵀF⁻¹g is summed layer by layer without ever forming the
    N × P per-sample gradients. F is an empirical Fisher E_n[g gᵀ], block-diagonal over layers, and within a layer

    * ``kfac-diag`` (default): F ≈ diag(E[δ²]) ⊗ diag(E[a²]) — the diagonals of K-FAC's two factors,
      so gᵀF⁻¹g = (Σ_i δ_i²/E[δ_i²]) (Σ_j a_j²/E[a_j²]): O(N·(in + out)) per layer, free next to the step;
    * ``diagonal``: F = diag E[g²], exactly: two (N × out)·(out × in) products per layer.

    The expectation is over the batch, or — with ``prior``, the sums another call returned (``with_sums``) —
    over the samples of every batch that went into ``prior`` and this one: the Fisher a task accumulates
    over its steps (MCL-NF's Algorithm 1, lines 8 and 16). ``with_sums``: also return those sums (Σ_n of the
    squared factors per layer, and the sample count, detached), to be passed as the next call's ``prior``.

    Dividing by P (the number of parameters) is a fixed rescaling of λ that makes it unit-free: for
    the undamped diagonal Fisher of the batch itself the batch mean of gᵀF⁻¹g is exactly P, so mean
    w = 1 + λ (the paper's λ is this λ / P). ``damping`` adds that fraction of each factor's mean
    (zero-error samples give g = 0, w = 1). ``mask`` (N,) marks real samples (padding: 0). The weights
    carry no gradient.

    ``group`` > 1: a sample is ``group`` consecutive field evaluations (a ray's points), its gradient
    the sum Σ_s δ_s ⊗ [a_s, 1] over them — formed per sample (N × out × (in + 1) per layer), with F
    its exact diagonal whatever ``fisher`` says (K-FAC's factorization does not hold for sums).

    The bias's input column (constant 1) is handled in closed form rather than concatenated, so a
    layer costs two squares and a few matrix-vector products over its (N, in) and (N, out) tensors.
    """
    if fisher not in FISHERS:
        raise MclnfError(f"--fisher {fisher}: unknown; choose one of {', '.join(FISHERS)}")
    N = len(inputs[0]) // group
    inputs, deltas = [a.detach() for a in inputs], [d.detach() for d in deltas]
    m = None if mask is None else mask.detach().to(inputs[0].dtype)
    count = inputs[0].new_full((1,), float(N)) if m is None else m.sum().reshape(1)  # Σ_n m_n: also the bias column's Σ m·1²
    colsum = (lambda t: t.sum(0)) if m is None else (lambda t: m @ t)  # noqa: E731  (masked Σ_n of each column)
    tiny = inputs[0].new_full((1,), torch.finfo(inputs[0].dtype).tiny)
    P = sum((a.shape[1] + 1) * d.shape[1] for a, d in zip(inputs, deltas))
    q = inputs[0].new_zeros(N)
    if group > 1:  # per layer Σ_n g_n² (out, in + 1) of the summed per-sample gradients
        g2 = [torch.einsum("nso,nsi->noi", d.reshape(N, group, -1), torch.cat([a, torch.ones_like(a[:, :1])], 1).reshape(N, group, -1)).square()
              for a, d in zip(inputs, deltas)]  # fmt: skip
        sums = [(g if m is None else g * m[:, None, None]).sum(0) for g in g2]
    elif fisher == "diagonal":  # per layer Σ_n [δ_i² a_j² | δ_i²]: (out, in + 1)
        a2, d2 = [a.square() for a in inputs], [d.square() for d in deltas]
        sums = [torch.cat([(d if m is None else d * m[:, None]).T @ a, colsum(d)[:, None]], 1) for a, d in zip(a2, d2)]
    else:  # per layer Σ δ² (out,) and [Σ a², Σ 1²] (in + 1,), all layers in one vector
        a2, d2 = [a.square() for a in inputs], [d.square() for d in deltas]
        sums = [torch.cat([t for a, d in zip(a2, d2) for t in (colsum(d), colsum(a), count)])]
    sums.append(count)
    if prior is not None:
        sums = [s + p for s, p in zip(sums, prior)]
    n = sums[-1].clamp_min(1)
    if group > 1:
        for g, total in zip(g2, sums):
            f = total / n
            q = q + (g / (f + damping * f.mean() + tiny)).sum((1, 2))
    elif fisher == "diagonal":
        for a, d, f in zip(a2, d2, sums):
            t = d @ torch.addcdiv(tiny, f.add(f.mean(), alpha=damping), n).reciprocal()  # (N, in + 1)
            q = q + (t[:, :-1] * a).sum(1) + t[:, -1]
    else:  # the factors' diagonals, damped and inverted all at once
        lengths = [k for a, d in zip(a2, d2) for k in (d.shape[1], a.shape[1] + 1)]
        mean, spread = _segment_means(tuple(lengths), sums[0].dtype, sums[0].device)
        inv = torch.addcdiv(tiny, sums[0].add(spread @ (sums[0] @ mean), alpha=damping), n).reciprocal().split(lengths)
        for a, d, g_inv, s_inv in zip(a2, d2, inv[::2], inv[1::2]):
            q = torch.addcmul(q, d @ g_inv, torch.addmv(s_inv[-1:], a, s_inv[:-1]))
    w = 1 + lam * q / P
    return (w, sums) if with_sums else w


def fim_weight_stats(field: nn.Module, x: Tensor, target: Tensor, lam: float, loss: str = "mse", fisher: str = "kfac-diag",
                     params: dict[str, Tensor] | None = None) -> dict[str, float]:  # fmt: skip
    """What the FIM weights of one batch (its own Fisher) look like: their mean and max, and their Pearson correlation
    with the samples' losses ℓ_n (near 1: the loss leans on the worst-fitted samples). For logs; no gradient."""
    p = {k: v.detach() for k, v in (params or dict(field.named_parameters())).items()}
    with torch.enable_grad():
        taps = [p[f"layers.{i}.bias"].expand(len(x), -1).detach().requires_grad_() for i in range(len(field.layers))]
        pred, inputs = functional_call(field, p, (x,), {"taps": taps})
        ell = PER_SAMPLE[loss](pred, target)
        deltas = torch.autograd.grad(ell.sum(), taps)
    w, ell = fim_weights(inputs, deltas, lam, fisher).double(), ell.detach().double()
    corr = torch.corrcoef(torch.stack([w, ell]))[0, 1]
    return {"fim_w_mean": float(w.mean()), "fim_w_max": float(w.max()), "fim_w_corr_loss": float(corr)}


@functools.lru_cache(maxsize=64)
def _segment_means(lengths: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> tuple[Tensor, Tensor]:
    """For a vector of consecutive segments of these ``lengths`` (K in all): the (K, S) matrix whose
    product gives each segment's mean, and the (K, S) indicator that spreads S values back over them."""
    spread = torch.block_diag(*[torch.ones(k, 1, dtype=dtype, device=device) for k in lengths])
    return spread / spread.sum(0), spread


def _weighted_gradients(c: Tensor, deltas, inputs, w1: Tensor, first: bool) -> tuple[Tensor | None, list[Tensor], list[Tensor]]:
    """Σ_n c_n ∇ℓ_n of an MLP from one backward pass's errors: for linear layer l (z = a Wᵀ + b),
    W_l: (c ⊙ δ_l)ᵀ a_{l-1} and b_l: δ_lᵀ c; with ``first``, also the gradient (c ⊙ δ_1) W_1 of the first
    layer's input a_0 (an encoding's output, or coordinates that need one). Differentiable torch ops."""
    weights, biases = [], []
    for d, a in zip(deltas, inputs):
        # (c ⊙ δ)ᵀ a: scale the narrower factor (a_0 has the coordinates' few columns; δ_L the outputs')
        weights.append(d.T @ (a * c[:, None]) if a.shape[1] < d.shape[1] else (d * c[:, None]).T @ a)
        biases.append(d.T @ c)
    return ((deltas[0] * c[:, None]) @ w1 if first else None), weights, biases


class _WeightedGradient(torch.autograd.Function):
    """A scalar whose value is given and whose gradient is the weighted gradient Σ_n c_n ∇ℓ_n of an
    MLP (:func:`_weighted_gradients`), from which autograd continues into an encoding through a_0.

    Inputs: ``value``, ``c`` (N,), then L errors δ_l, L inputs a_{l-1}, L weights, L biases. The
    backward is written in differentiable torch ops, so with ``create_graph`` its result is a function
    of δ and a — and through them of the parameters — and second derivatives (MAML meta-gradients,
    Hessian-vector products) are those of Σ c_n ℓ_n with c held fixed. ``setup_context`` and
    ``generate_vmap_rule``: works under ``torch.func`` transforms (``vmap``, ``grad``)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(value, c, *tensors):
        return value.clone()

    @staticmethod
    def setup_context(ctx, inputs, output):
        _, c, *tensors = inputs
        ctx.L = L = len(tensors) // 4
        ctx.save_for_backward(c, *tensors[: 2 * L], tensors[2 * L])  # c, errors, inputs, first weight

    @staticmethod
    def backward(ctx, grad):
        c, *rest = ctx.saved_tensors
        L = ctx.L
        first, weights, biases = _weighted_gradients(c * grad, rest[:L], rest[L : 2 * L], rest[2 * L], ctx.needs_input_grad[2 + L])
        return (None, None, *[None] * L, first, *[None] * (L - 1), *weights, *biases)


class _WeightedGradientEager(torch.autograd.Function):
    """:class:`_WeightedGradient` outside ``torch.func`` transforms (a classic ``forward(ctx, …)``: no
    per-call signature binding). Its errors δ carry no graph (taking them cost no double-backward
    bookkeeping); a backward with ``create_graph`` (an optimizer's Hessian-vector product) calls
    ``recompute()`` for (a, δ) with their graph first, so second derivatives stay exact."""

    @staticmethod
    def forward(ctx, value, c, recompute, *tensors):
        ctx.L, ctx.recompute = len(tensors) // 4, recompute
        ctx.save_for_backward(c, *tensors[: 2 * ctx.L], tensors[2 * ctx.L])
        return value.clone()

    @staticmethod
    def backward(ctx, grad):
        c, *rest = ctx.saved_tensors
        L = ctx.L
        deltas, inputs = rest[:L], rest[L : 2 * L]
        if torch.is_grad_enabled():  # create_graph: the errors as functions of the parameters
            inputs, deltas = ctx.recompute()
        first, weights, biases = _weighted_gradients(c * grad, deltas, inputs, rest[2 * L], ctx.needs_input_grad[3 + L])
        return (None, None, None, *[None] * L, first, *[None] * (L - 1), *weights, *biases)


FIM_FORMS = ("normalized", "paper")


def fim_loss(field: nn.Module, x: Tensor, target: Tensor, lam: float, loss: str = "mse", fisher: str = "kfac-diag", mask: Tensor | None = None,
             observe: Callable | None = None, params: dict[str, Tensor] | None = None, form: str = "normalized", prior: list[Tensor] | None = None,
             with_sums: bool = False) -> Tensor | tuple[Tensor, list[Tensor]]:  # fmt: skip
    """The FIM loss (MCL-NF, Woo et al., eq. 2–3 and Alg. 1 l. 8–16; weights from :func:`fim_weights`, held
    constant) of a :class:`~mclnf.fields.Field` (``params``: evaluated at these tensors by ``functional_call``,
    e.g. inside ``torch.func`` transforms; else the module's own), in one of two ``form``s:

    * ``normalized`` (mclnf's default): Σ_n w_n ℓ_n / Σ_n w_n with F the batch's own Fisher — a weighted mean,
      whose scale stays the plain loss's whatever λ;
    * ``paper``: (1/m) Σ_n w_n ℓ_n, eq. 2 as printed, with F the task's Fisher accumulated over its steps:
      ``prior`` (the sums an earlier step returned with ``with_sums``; None at a task's first step) plus this
      batch (:func:`fim_weights`). Its scale grows with the weights (mean 1 + λ).

    ``with_sums``: also return the Fisher's sums after this batch, for the task's next step.

    One forward with taps (``Field.forward(x, taps)``) keeps every linear layer's input a_{l-1}, one
    backward of Σ_n ℓ_n with respect to the taps gives the errors δ_l (input gradients only), the
    weights w come from (a, δ), and the gradient of the weighted loss is formed from the same errors,
    with c_n = w_n / Σ_m w_m (back-propagation is linear in each sample's output error, so the
    weighted loss's errors are c ⊙ δ):

        ∂L/∂W_l = (c ⊙ δ_l)ᵀ a_{l-1},   ∂L/∂b_l = δ_lᵀ c

    (:func:`_weighted_gradients`, :class:`_WeightedGradient`): a step costs one forward and one
    backward, like a plain loss's, instead of a second backward of Σ w ℓ (``benchmarks/fim_step.py``:
    ≈ 1.3× an MSE step, was ≈ 1.7–2.0×). Value, gradient and second derivatives equal those of
    ``(w * ℓ).sum() / w.sum()`` with ``w`` detached (``tests/learners/test_fim.py``). Outside
    ``torch.func`` transforms the errors are taken without a graph (recording the backward for a
    possible double backward costs ≈ 20 % of a step); a backward with ``create_graph`` (an optimizer's
    Hessian-vector product) recomputes them with it. A field with module hooks on its layers (K-FAC
    records the layers' inputs and output gradients that way) gets the weighted loss Σ c_n ℓ_n itself,
    whose backward (a second one) the hooks see, as they did before.

    ``observe(field, x)`` (a layout's; radiance renders rays) makes the predictions from the field;
    each sample is then the ``group`` field evaluations ``observe`` makes for it (:func:`fim_weights`).
    """
    per_sample = PER_SAMPLE[loss]
    group = 1
    if observe is not None:
        calls = []
        with torch.no_grad():  # how many field evaluations a sample takes (the sampling only, no field)
            observe(lambda p: (calls.append(len(p)), p.new_zeros(len(p), field.out_dims[-1]))[1], x)
        if len(calls) != 1 or calls[0] % len(x):
            raise MclnfError("the FIM loss needs one field evaluation pass per prediction (scenes: --importance 0)")
        group = calls[0] // len(x)

    def losses(taps):
        inputs = []

        def evaluate(points):  # the field with taps; keeps the layers' inputs
            y, layer_inputs = field(points, taps) if params is None else functional_call(field, params, (points,), {"taps": taps})
            inputs.extend(layer_inputs)
            return y

        ell = per_sample(evaluate(x) if observe is None else observe(evaluate, x), target)
        return ell, (ell, inputs)

    given = {} if params is None else params
    weights = [given.get(f"layers.{i}.weight", layer.weight) for i, layer in enumerate(field.layers)]
    biases = [given.get(f"layers.{i}.bias", layer.bias) for i, layer in enumerate(field.layers)]

    hooked = any(layer._forward_pre_hooks or layer._forward_hooks or layer._backward_hooks for layer in field.layers)

    def errors(graph: bool) -> tuple[Tensor, list[Tensor], list[Tensor]]:
        """(ℓ, a, δ): one forward with taps (the biases, one row per sample, stride 0) and one backward of Σ ℓ to them."""
        taps = [b.expand(len(x) * group, -1) for b in biases]
        if graph:
            _, backprop, (ell, inputs) = torch.func.vjp(losses, taps, has_aux=True)
            return ell, inputs, backprop(torch.ones_like(ell))[0]
        with torch.enable_grad():
            if not hooked:
                taps = [t.detach().requires_grad_() for t in taps]
                ell, (_, inputs) = losses(taps)
                deltas = torch.autograd.grad(ell.sum(), taps)  # frees the graph but for a_0's encoding (no tap beyond it)
                return ell.detach(), inputs[:1] + [a.detach() for a in inputs[1:]], deltas
            taps = [t if t.requires_grad else t.detach().requires_grad_() for t in taps]
            ell, (_, inputs) = losses(taps)
            return ell, inputs, torch.autograd.grad(ell.sum(), taps, retain_graph=True)  # the graph serves the weighted loss's backward

    if form not in FIM_FORMS:
        raise MclnfError(f"--fim-form {form}: unknown; choose one of {', '.join(FIM_FORMS)}")
    plain = torch._C._functorch.peek_interpreter_stack() is None
    ell, inputs, deltas = errors(graph=not plain)
    w, sums = fim_weights(inputs, deltas, lam, fisher, mask=mask, group=group, prior=prior, with_sums=True)
    if mask is not None:
        w = w * mask.to(w.dtype)
    c = w / (w.sum() if form == "normalized" else (len(w) if mask is None else mask.to(w.dtype).sum().clamp_min(1)))
    done = (lambda v: (v, sums)) if with_sums else (lambda v: v)  # noqa: E731
    if plain and hooked:  # module hooks (K-FAC's) must see the weighted loss's backward: the second backward, as before
        return done((c * ell).sum())
    value = (c * ell.detach()).sum()
    if group > 1:
        c = c.repeat_interleave(group)
    if plain:
        return done(_WeightedGradientEager.apply(value, c, lambda: errors(graph=True)[1:], *deltas, *inputs, *weights, *biases))
    return done(_WeightedGradient.apply(value, c, *deltas, *inputs, *weights, *biases))


def head_loss(heads: Tensor | None) -> Loss:
    """Cross-entropy of logits (N, C) against targets (N, 2) = (label, task); with ``heads`` (T, C)
    each sample's logits outside its task's classes are masked out (multi-head class-incremental streams)."""

    def loss(logits: Tensor, y: Tensor) -> Tensor:
        if heads is not None:
            logits = logits.masked_fill(~heads.to(logits.device)[y[:, 1]], float("-inf"))
        return F.cross_entropy(logits, y[:, 0])

    return loss
