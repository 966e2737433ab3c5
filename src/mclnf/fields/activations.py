"""Activations of coordinate networks, each with the weight initialization its paper prescribes.

=========  ===========================================  ==========================================
name       activation of a pre-activation z              initialization
=========  ===========================================  ==========================================
sine       sin(ω₀ z), ω₀ = 30 (SIREN, Sitzmann 2020)     first W ~ U(±1/n), others U(±√(6/n)/ω₀)
gaussian   exp(−z² / 2σ²), σ = 0.05 (Ramasinghe 2022)    torch's nn.Linear default, U(±1/√n)
wavelet    cos(ω₀ z)·exp(−(s₀ z)²), ω₀ = s₀ = 10 (WIRE)   nn.Linear default
relu       max(z, 0)                                     nn.Linear default
relu-pe    relu after a positional encoding (NeRF)       nn.Linear default
=========  ===========================================  ==========================================

n is a layer's fan-in. Biases keep nn.Linear's default U(±1/√n) everywhere, as the reference code.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

ACTIVATIONS = ("sine", "gaussian", "wavelet", "relu", "relu-pe")


# ---- fused elementwise activations -------------------------------------------------------------
# An activation g(u; k) of a (scaled) pre-activation u as one autograd node: the forward writes few
# buffers, the backward computes g'(u)·grad in a few in-place passes from what was saved (autograd's
# graph of the plain expression keeps every intermediate and takes a pass per elementary op each way:
# exp(−u²) is square, neg, clamp, exp, threshold forward and as many products backward). Each gives
#   value(u, k) -> (y, extra)        y = g(u); extra: an intermediate the fast backward may reuse, or None
#   slope(u, y, extra, grad, k)      grad·g'(u) in in-place passes on fresh buffers (no graph wanted)
#   exact(u, y, grad, k)             grad·g'(u) in differentiable out-of-place ops of u and y
# ``exact`` serves double backward (``create_graph``: MAML's second order, Hessian-vector products)
# and forward-mode AD: differentiating it again goes through u's graph and, for y, this node again.


def _zero(u: Tensor) -> Tensor:
    return u.new_zeros(())


def floored_exp(t: Tensor, inplace: bool = False) -> Tensor:
    """exp(t), exactly 0 where it is below about 3.2e−38 (6.1e−308 in float64), in three passes
    (in place on ``t`` with ``inplace``; else in differentiable ops).

    Near and below log of the smallest normal number torch's CPU exp takes a slow path (measured 35–110×
    slower per element; a gaussian field's exp(−u²) has u² > 87 for a fifth of its first layer at
    initialization), so the argument is clamped above it, at f = log(tiny) + 1; the results of clamped
    arguments, exp(f), are then set to exactly 0 (not left at a tiny value whose products are subnormal:
    slow arithmetic, unless subnormals are flushed as the CLI does). A value changes by less than 3.3e−38
    (its true value, subnormal or 0); the derivative there is 0 (truly at most 2|t|·3.3e−38)."""
    floor = math.log(torch.finfo(torch.float64 if t.dtype == torch.float64 else torch.float32).tiny) + 1.0
    least = math.exp(floor + 0.01)  # above exp(floor) as exp computes it, below every unclamped result
    if inplace:
        return F.threshold(t.clamp_min_(floor).exp_(), least, 0.0, inplace=True)
    return F.threshold(torch.exp(t.clamp_min(floor)), least, 0.0)


def _sine_value(u, k):
    return torch.sin(u), None


def _sine_slope(u, y, extra, grad, k):
    return torch.cos(u).mul_(grad)


def _sine_exact(u, y, grad, k):
    return grad * torch.cos(u)


def _gaussian_value(u, k):  # exp(−u²): −u² in one pass (addcmul), then floored_exp in place
    return floored_exp(torch.addcmul(_zero(u), u, u, value=-1.0), inplace=True), None


def _gaussian_slope(u, y, extra, grad, k):  # g' = −2u·y
    return torch.addcmul(_zero(u), u, y, value=-2.0).mul_(grad)


def _gaussian_exact(u, y, grad, k):
    return grad * (-2.0 * u * y)


def _gabor_window(u, k):  # exp(−k u²)
    return floored_exp(torch.addcmul(_zero(u), u, u, value=-k), inplace=True)


def _gabor_value(u, k):  # cos(u)·e, e = exp(−k u²)
    e = _gabor_window(u, k)
    return torch.cos(u).mul_(e), e


def _gabor_slope(u, y, e, grad, k):  # g' = −(sin(u)·e + 2k·u·y)
    if e is None:
        e = _gabor_window(u, k)
    d = torch.addcmul(torch.sin(u).mul_(e), u, y, value=2 * k)  # not addcmul_: it has no vmap batching rule
    return torch.addcmul(_zero(u), d, grad, value=-1.0)


def _gabor_exact(u, y, grad, k):
    return grad * -(torch.sin(u) * floored_exp(-k * u.square()) + 2 * k * u * y)


def _fused(name: str, value, slope, exact) -> tuple[type[torch.autograd.Function], type[torch.autograd.Function]]:
    """The two autograd Functions of one fused activation: for ``torch.func`` transforms (``setup_context``,
    ``generate_vmap_rule``; saves only inputs and outputs, u and y) and for plain autograd (a classic
    ``forward(ctx, …)``, free of the per-call signature binding that ``setup_context`` costs, which also
    keeps ``value``'s intermediate when there is one)."""

    def backward(ctx, grad):
        u, y = ctx.saved_tensors[:2]
        if torch.is_grad_enabled():  # create_graph: a differentiable backward
            return exact(u, y, grad, ctx.k), None
        return slope(u, y, getattr(ctx, "extra", None), grad, ctx.k), None

    def jvp(ctx, tangent, _):
        u, y = ctx.saved_tensors[:2]
        return exact(u, y, tangent, ctx.k)

    class Transformable(torch.autograd.Function):
        generate_vmap_rule = True

        @staticmethod
        def forward(u, k):
            return value(u, k)[0]

        @staticmethod
        def setup_context(ctx, inputs, output):
            ctx.k = inputs[1]
            ctx.save_for_backward(inputs[0], output)
            ctx.save_for_forward(inputs[0], output)

    class Eager(torch.autograd.Function):
        @staticmethod
        def forward(ctx, u, k):
            y, ctx.extra = value(u, k)
            ctx.k = k
            ctx.save_for_backward(u, y)
            ctx.save_for_forward(u, y)
            return y

    for cls in (Transformable, Eager):
        cls.backward, cls.jvp, cls.value = staticmethod(backward), staticmethod(jvp), staticmethod(value)
        cls.__name__ = cls.__qualname__ = f"{name}{cls.__name__}"
    return Transformable, Eager


class FoldedActivation(nn.Module):
    """An activation σ(z) = g(c·z) whose constant c can be folded into the (small) layer parameters:
    σ(Wh + b) = g((cW)h + cb), saving elementwise passes over every pre-activation each way
    (``Field`` and ``ModularField`` use :meth:`of_linear` / :attr:`scale` + :meth:`folded`).

    :meth:`folded` evaluates g as one fused autograd node (:func:`_fused`) where ``fuse`` is set —
    where it measured faster than autograd's graph of :meth:`expression` (``benchmarks/activations.py``:
    gaussian and wavelet; not sine, whose graph is already sin forward, cos and a product backward) —
    where a gradient may be taken (under ``torch.func`` transforms: whenever grad mode is on — a vmapped
    tensor does not tell whether an outer level records), and its forward alone where none will
    (inference); the plain expression under ``torch.compile`` (inductor fuses it into fewer passes still).
    All give the same values and derivatives of every order (``tests/fields/test_activations.py``)."""

    scale: float  # c
    fuse: bool = False  # evaluate g as the fused node (set per activation from measurements)
    functions: tuple[type[torch.autograd.Function], type[torch.autograd.Function]] | None = None  # (torch.func, eager)

    @property
    def constant(self) -> float:
        """k, the constant of g(u; k) besides c (the wavelet's window), or 0."""
        return 0.0

    def expression(self, u: Tensor) -> Tensor:
        """g(u) in plain differentiable torch ops (the reference the fused node equals)."""
        raise NotImplementedError

    def folded(self, u: Tensor) -> Tensor:
        """g(u), the activation of an already scaled pre-activation u = c·z."""
        if not self.fuse or torch.compiler.is_compiling():
            return self.expression(u)
        transformable, eager = self.functions
        if torch._C._functorch.peek_interpreter_stack() is not None:  # torch.func: u.requires_grad does not say whether an outer level records
            return transformable.apply(u, self.constant) if torch.is_grad_enabled() else self.expression(u)
        if u.requires_grad and torch.is_grad_enabled():
            return eager.apply(u, self.constant)
        return eager.value(u, self.constant)[0]  # no graph to record: the fused forward's passes alone

    def forward(self, z: Tensor) -> Tensor:
        return self.folded(self.scale * z)

    def of_linear(self, h: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
        """``self(F.linear(h, weight, bias))`` with c folded into the parameters. A per-sample ``bias``
        (N, out) (the FIM loss's taps, :meth:`Field.forward`) is scaled by the addmm as it copies it."""
        if bias.dim() == 2:
            return self.folded(torch.addmm(bias, h, (self.scale * weight).t(), beta=self.scale))
        return self.folded(F.linear(h, self.scale * weight, self.scale * bias))


class Sine(FoldedActivation):
    """sin(ω₀z): c = ω₀, g = sin; g' = cos."""

    functions = _fused("Sine", _sine_value, _sine_slope, _sine_exact)

    def __init__(self, omega0: float):
        super().__init__()
        self.omega0 = self.scale = omega0

    def expression(self, u: Tensor) -> Tensor:
        return torch.sin(u)

    def extra_repr(self) -> str:
        return f"omega0={self.omega0}"


class Gaussian(FoldedActivation):
    """exp(−z²/2σ²): c = 1/(σ√2), g(u) = exp(−u²); g' = −2u·g. exp is :func:`floored_exp`."""

    functions = _fused("Gaussian", _gaussian_value, _gaussian_slope, _gaussian_exact)
    fuse = True  # 2 passes each way instead of 3 and 4: 1.14–1.19× a 4×128 / 5×256 field step at 4096 points

    def __init__(self, sigma: float):
        super().__init__()
        self.sigma, self.scale = sigma, math.sqrt(0.5) / sigma

    def expression(self, u: Tensor) -> Tensor:
        return floored_exp(-u.square())

    def extra_repr(self) -> str:
        return f"sigma={self.sigma}"


class RealGabor(FoldedActivation):
    """WIRE's real Gabor wavelet cos(ω₀z)·exp(−(s₀z)²): c = ω₀, g(u) = cos(u)·exp(−k u²) with
    k = (s₀/ω₀)²; g' = −(sin(u)·exp(−k u²) + 2k·u·g). exp is :func:`floored_exp`."""

    functions = _fused("RealGabor", _gabor_value, _gabor_slope, _gabor_exact)
    fuse = True  # 4 passes each way instead of 5 and ≈ 8: 1.3–1.4× a field step at 4096 points

    def __init__(self, omega0: float, s0: float):
        super().__init__()
        self.omega0, self.s0, self.scale = omega0, s0, omega0

    @property
    def constant(self) -> float:
        return (self.s0 / self.omega0) ** 2

    def expression(self, u: Tensor) -> Tensor:
        return torch.cos(u) * floored_exp(-self.constant * u.square())

    def extra_repr(self) -> str:
        return f"omega0={self.omega0}, s0={self.s0}"


def siren_init_(layer: nn.Linear, omega0: float, first: bool) -> None:
    """SIREN (Sitzmann et al. 2020, Sec. 3.2): W ~ U(−1/n, 1/n) for the first layer, else U(−√(6/n)/ω₀, √(6/n)/ω₀).

    With it ω₀·Wx is ≈ N(0, 1) for arcsine-distributed inputs, so every sine layer sees the same statistics.
    """
    n = layer.in_features
    bound = 1.0 / n if first else math.sqrt(6.0 / n) / omega0
    with torch.no_grad():
        layer.weight.uniform_(-bound, bound)
