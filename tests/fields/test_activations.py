"""Each activation's initialization has the statistics its paper states; the fused activations (one
autograd node each) equal the plain expressions in value and in derivatives of every order, in plain
autograd and under torch.func (float64: gradcheck, gradgradcheck, forward mode, vmap, grad of grad)."""

import math

import numpy as np
import pytest
import torch
from scipy import stats
from torch.autograd import gradcheck, gradgradcheck
from torch.func import functional_call, grad, jacrev, jvp, vmap

from mclnf.errors import MclnfError
from mclnf.fields import Field, FieldConfig, PositionalEncoding
from mclnf.fields.activations import FoldedActivation, Gaussian, RealGabor, Sine, floored_exp
from mclnf.learners import MetaOptions, meta_method
from mclnf.signals.datasets import load_dataset


def test_default_field_has_the_papers_parameter_count():
    assert Field(FieldConfig(2, 3)).num_params == 198_915  # MCL-NF's table: 5 × 256, 2 → 3


@pytest.mark.parametrize("activation", ["sine", "gaussian", "wavelet", "relu"])
def test_parameter_count_formula(activation):
    f = Field(FieldConfig(3, 1, width=64, depth=4, activation=activation))
    assert f.num_params == (3 * 64 + 64) + 2 * (64 * 64 + 64) + (64 + 1)


def test_siren_weight_distributions():
    torch.manual_seed(0)
    f = Field(FieldConfig(2, 3, width=1024, depth=4, activation="sine"))
    first, *rest = [layer.weight for layer in f.layers]
    assert first.abs().max() <= 1 / 2 and first.abs().max() > 0.49  # U(-1/n, 1/n), n = 2
    for w in rest:
        bound = math.sqrt(6 / w.shape[1]) / 30
        assert w.abs().max() <= bound and w.abs().max() > 0.99 * bound
        assert w.var().item() == pytest.approx(bound**2 / 3, rel=0.02)  # uniform variance


@torch.no_grad()
def test_siren_preactivations_are_standard_normal():
    """SIREN Sec. 3.2: with this init ω₀·Wx of every hidden layer is ≈ N(0, 1) whatever the depth.

    With nn.Linear's bias U(±1/√n) the full pre-activation ω₀(Wx + b) is N(0, s²), s² ≈ 1 + ω₀²/(3n),
    so each sine output is distributed as sin(N(0, s²)) (the paper's "≈ arcsine"), variance (1 − e^{−2s²})/2.
    """
    torch.manual_seed(0)
    n = 2048
    f = Field(FieldConfig(2, 1, width=n, depth=5, activation="sine"))
    h = f.first_activation(f.layers[0](torch.rand(2000, 2) * 2 - 1))
    rng = np.random.default_rng(0)
    for layer in f.layers[1:-1]:
        wx = 30.0 * (h @ layer.weight.T)
        # Var(ω₀Wh) = n·Var(W)·ω₀²·E[h²] = 2·E[h²]: ≈ 1 for arcsine inputs (E[h²] = 1/2)
        assert wx.var().item() == pytest.approx(2 * h.square().mean().item(), rel=0.03)
        assert wx.std().item() == pytest.approx(1.0, abs=0.07)
        assert abs(stats.kurtosis(wx[:, :200].flatten().numpy())) < 0.15  # Gaussian: excess kurtosis 0
        h = f.activation(layer(h))
        s2 = wx.var().item() + 30.0**2 / (3 * n)  # plus the bias term ω₀²·Var(b)
        reference = np.sin(rng.normal(0, math.sqrt(s2), 200_000))
        assert h.var().item() == pytest.approx((1 - math.exp(-2 * s2)) / 2, rel=0.03)
        assert stats.ks_2samp(h.flatten().numpy(), reference).statistic < 0.01


@pytest.mark.parametrize("activation", ["gaussian", "wavelet", "relu", "relu-pe"])
def test_default_linear_initialization(activation):
    """Gaussian (Ramasinghe & Lucey), WIRE and ReLU(+PE) keep nn.Linear's U(±1/√n) for weights and biases."""
    torch.manual_seed(0)
    f = Field(FieldConfig(2, 3, width=512, depth=4, activation=activation))
    for layer in f.layers[1:]:
        bound = 1 / math.sqrt(layer.in_features)
        assert layer.weight.abs().max() <= bound and layer.weight.abs().max() > 0.99 * bound
        assert layer.weight.var().item() == pytest.approx(bound**2 / 3, rel=0.02)
        assert layer.bias.abs().max() <= bound


def test_activation_formulas():
    z = torch.linspace(-0.3, 0.3, 7, dtype=torch.float64)
    g = Field(FieldConfig(1, 1, activation="gaussian", sigma=0.05)).activation
    torch.testing.assert_close(g(z), torch.exp(-(z**2) / (2 * 0.05**2)))
    w = Field(FieldConfig(1, 1, activation="wavelet")).activation
    torch.testing.assert_close(w(z), torch.cos(10 * z) * torch.exp(-((10 * z) ** 2)))
    s = Field(FieldConfig(1, 1, activation="sine", omega0=20)).activation
    torch.testing.assert_close(s(z), torch.sin(20 * z))


def test_positional_encoding_values():
    pe = PositionalEncoding(2, 3)
    x = torch.tensor([[0.5, -0.25]])
    y = pe(x)
    assert y.shape == (1, pe.out_dim) == (1, 2 * (1 + 2 * 3))
    torch.testing.assert_close(y[0, :2], x[0])
    # channel 0: sin(2^k π 0.5) for k = 0, 1, 2, then the cosines
    torch.testing.assert_close(y[0, 2:5], torch.tensor([1.0, 0.0, 0.0]), atol=1e-6, rtol=0)
    torch.testing.assert_close(y[0, 5:8], torch.tensor([0.0, -1.0, 1.0]), atol=1e-6, rtol=0)


def test_config_defaults_and_unused_options():
    c = FieldConfig(2, 3, activation="wavelet", sigma=0.3)
    assert (c.omega0, c.s0, c.sigma) == (10.0, 10.0, None)  # sigma does not apply to wavelets
    c = FieldConfig(1, 1, activation="sine", omega0=20)
    assert c.first_omega0 == 20
    assert FieldConfig.from_dict(c.to_dict()) == c


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"activation": "tanh"}, "--activation tanh"),
        ({"depth": 1}, "--depth 1"),
        ({"width": 0}, "--width 0"),
        ({"activation": "gaussian", "sigma": -1.0}, "--sigma -1.0"),
        ({"activation": "relu-pe", "pe_frequencies": 0}, "--pe-frequencies 0"),
    ],
)
def test_bad_config_is_rejected(kwargs, match):
    with pytest.raises(MclnfError, match=match):
        FieldConfig(2, 3, **kwargs)


# ---- fused activations ---------------------------------------------------------------------------
FOLDED = {"sine": lambda: Sine(30.0), "gaussian": lambda: Gaussian(0.05), "wavelet": lambda: RealGabor(10.0, 10.0)}


def fused(act: FoldedActivation, on: bool = True) -> FoldedActivation:
    act.fuse = on  # on the instance: the class default stays as measured
    return act


def preactivations(n=40, seed=0):
    """Scaled pre-activations u over the range the activations see, tails included (exp(−u²) near 0)."""
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, 6, generator=g, dtype=torch.float64) * 1.7).requires_grad_()


def test_fused_where_measured_faster():
    """benchmarks/activations.py: the fused node is faster for gaussian and wavelet fields, not for sine."""
    assert (Sine.fuse, Gaussian.fuse, RealGabor.fuse) == (False, True, True)


@pytest.mark.parametrize("name", list(FOLDED))
def test_fused_equals_the_plain_expression_with_its_gradients(name):
    act = fused(FOLDED[name]())
    u = preactivations()
    y = act.folded(u)
    assert "Eager" in type(y.grad_fn).__name__  # one node, the plain-autograd Function
    torch.testing.assert_close(y, act.expression(u), rtol=1e-14, atol=1e-15)
    g = torch.randn_like(y)
    torch.testing.assert_close(torch.autograd.grad(y, u, g)[0], torch.autograd.grad(act.expression(u), u, g)[0], rtol=1e-13, atol=1e-14)
    h = torch.randn_like(y)  # second order: d/du ⟨g, g'(u)⟩ ⋅ h
    second = [torch.autograd.grad(torch.autograd.grad(f(u), u, g, create_graph=True)[0], u, h)[0] for f in (act.folded, act.expression)]
    torch.testing.assert_close(second[0], second[1], rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("name", list(FOLDED))
def test_fused_passes_gradcheck_gradgradcheck_and_forward_mode(name):
    act = fused(FOLDED[name]())
    u = preactivations(8, seed=1)
    assert gradcheck(act.folded, (u,))
    assert gradgradcheck(act.folded, (u,))
    assert gradcheck(act.folded, (u,), check_forward_ad=True, check_backward_ad=False, check_undefined_grad=False)


@pytest.mark.parametrize("name", list(FOLDED))
def test_fused_under_torch_func(name):
    """vmap of grad, the Hessian (jacrev of jacrev) and jvp: the torch.func Function equals the expression."""
    act = fused(FOLDED[name]())
    u = preactivations(5, seed=2).detach()
    f = lambda f_u: lambda v: f_u(v).sin().sum()  # noqa: E731  (a scalar function with a non-trivial outer derivative)
    for transform in (lambda h: vmap(grad(h)), lambda h: vmap(jacrev(jacrev(h)))):
        torch.testing.assert_close(transform(f(act.folded))(u), transform(f(act.expression))(u), rtol=1e-12, atol=1e-13)
    t = torch.randn_like(u)
    torch.testing.assert_close(jvp(act.folded, (u,), (t,))[1], jvp(act.expression, (u,), (t,))[1], rtol=1e-13, atol=1e-14)
    torch.testing.assert_close(jvp(grad(f(act.folded)), (u[0],), (t[0],))[1], jvp(grad(f(act.expression)), (u[0],), (t[0],))[1], rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("name", list(FOLDED))
def test_without_a_gradient_the_fused_forward_alone_equals_the_expression(name):
    """Inference (no_grad, or nothing requiring a gradient) runs the fused forward without a node; plain
    forward-mode AD through it (dual tensors) gives the expression's tangent."""
    act = fused(FOLDED[name]())
    u = preactivations().detach() * 4  # far tails too: exp's argument below its floor
    with torch.no_grad():
        y = act.folded(u.requires_grad_())
    assert y.grad_fn is None
    torch.testing.assert_close(y, act.expression(u.detach()), rtol=1e-14, atol=1e-15)
    t = torch.randn_like(u)
    with torch.autograd.forward_ad.dual_level():
        tangents = [torch.autograd.forward_ad.unpack_dual(f(torch.autograd.forward_ad.make_dual(u.detach(), t))).tangent for f in (act.folded, act.expression)]
    torch.testing.assert_close(tangents[0], tangents[1], rtol=1e-13, atol=1e-14)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_exp_of_arguments_below_its_floor_is_exactly_zero(dtype):
    """floored_exp: torch's CPU exp is slow near and below log(tiny); arguments there are clamped and their
    results set to 0 — a change below 3.3e−38 (6.1e−308), exact elsewhere, derivative 0 there."""
    t = torch.tensor([0.0, -1.0, -80.0, -86.0, -86.4, -87.0, -120.0, -700.0, -707.0, -708.0, -1e4], dtype=dtype, requires_grad=True)
    y = floored_exp(t)
    tiny = torch.finfo(torch.float64 if dtype == torch.float64 else torch.float32).tiny
    torch.testing.assert_close(y, torch.exp(t), rtol=1e-6 if dtype == torch.float32 else 1e-14, atol=3 * tiny)
    assert bool((y[torch.exp(t) < tiny] == 0).all()) and bool((y[torch.exp(t) > 3 * tiny] > 0).all())
    (g,) = torch.autograd.grad(y.sum(), t)
    torch.testing.assert_close(g, torch.where(y > 0, y, 0), rtol=0, atol=0)
    torch.testing.assert_close(floored_exp(t.detach().clone(), inplace=True), y.detach(), rtol=0, atol=0)


def field_pair(activation, **kw):
    """The same field (float64) with the fused activations on and off."""
    torch.manual_seed(0)
    f = Field(FieldConfig(2, 3, width=12, depth=4, activation=activation, **kw)).double()
    return f, {"on": True, "off": False}


def set_fuse(field, on):
    for act in (field.first_activation, field.activation):
        fused(act, on)


@pytest.mark.parametrize("activation", ["sine", "gaussian", "wavelet"])
def test_fields_with_fused_activations_match_plain_fields_to_second_order(activation):
    """A whole field: outputs, parameter gradients and Hessian-vector products (what ESGD/AdaHessian take)
    with the fused activations equal the plain ones; the same through functional_call + vmap + grad, and
    for stacked fields (vmap inside, plain autograd outside)."""
    field, _ = field_pair(activation, omega0=3.0 if activation != "gaussian" else None, sigma=0.5 if activation == "gaussian" else None)
    x, y = torch.rand(30, 2, dtype=torch.float64) * 2 - 1, torch.rand(30, 3, dtype=torch.float64)
    params = list(field.parameters())
    v = [torch.randn_like(p) for p in params]
    results = {}
    for on in (True, False):
        set_fuse(field, on)
        out = field(x)
        g = torch.autograd.grad((out - y).square().mean(), params, create_graph=True)
        hv = torch.autograd.grad(sum((gi * vi).sum() for gi, vi in zip(g, v)), params)
        stacked = {k: torch.stack([p.detach(), 0.9 * p.detach()]) for k, p in field.named_parameters()}
        vg = vmap(grad(lambda p: (functional_call(field, p, (x,)) - y).square().mean()))(stacked)
        leaves = {k: v.clone().requires_grad_() for k, v in stacked.items()}  # stacked fields (fit-many): vmap inside, autograd outside
        sg = torch.autograd.grad((vmap(lambda p: functional_call(field, p, (x,)))(leaves) - y).square().sum(), list(leaves.values()))
        results[on] = [out, *g, *hv, *vg.values(), *sg]
    for a, b in zip(results[True], results[False]):
        torch.testing.assert_close(a, b, rtol=1e-11, atol=1e-13)


@pytest.mark.parametrize("activation", ["gaussian", "wavelet"])
def test_maml_second_order_meta_gradient_with_fused_activations(activation):
    """MAML's meta-gradient (vmapped torch.func inner steps, outer autograd through them) is the same with the
    fused activations as with the plain expressions (real 6 × 6 faces, float64)."""
    ds = load_dataset("lfw_subset", {"resize": 6})
    values = ds.values("train")[:2].double()
    grads = {}
    for on in (True, False):
        m = meta_method(ds.layout, FieldConfig(2, 1, width=8, depth=3, activation=activation, sigma=0.5 if activation == "gaussian" else None,
                                               omega0=3.0 if activation == "wavelet" else None), MetaOptions(method="mol", inner_steps=2, inner_lr=0.05))  # fmt: skip
        m.template.double()
        set_fuse(m.template, on)
        theta = {k: v.double().requires_grad_() for k, v in m.init_params(0).items()}
        grads[on] = torch.cat([g.reshape(-1) for g in torch.autograd.grad(m.objective(theta, values, 2)[0], list(theta.values()))])
    torch.testing.assert_close(grads[True], grads[False], rtol=1e-10, atol=1e-13)
