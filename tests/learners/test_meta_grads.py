"""The three meta-gradients on a tiny problem (float64): second-order against finite differences,
first-order and emcl against their update rules written out, emcl's closed form at the inner optimum."""

import dataclasses

import pytest
import torch

from mclnf.fields import FieldConfig
from mclnf.learners import MetaOptions, meta_method
from mclnf.signals.datasets import load_dataset


@pytest.fixture(scope="module")
def faces():
    ds = load_dataset("lfw_subset", {"resize": 6})  # 6 × 6 real faces
    return ds.layout, ds.values("train")[:3].double()


def make(layout, **opts):
    m = meta_method(layout, FieldConfig(2, 1, width=8, depth=3, omega0=3.0), MetaOptions(**{"inner_steps": 2, "inner_lr": 0.05, **opts}))
    m.template.double()
    theta = {k: v.double().requires_grad_() for k, v in m.init_params(0).items()}
    return m, theta


def meta_grad(m, theta, values, h=None):
    count = values.shape[0] * (m.opts.tasks if m.opts.method.startswith("mcl-nf") else 1)
    obj, loss, _ = m.objective(theta, values, count, h)
    return obj, torch.autograd.grad(obj, list(theta.values()), allow_unused=True), loss / count


@pytest.mark.parametrize("method", ["mol", "oml", "mcl-nf"])  # mcl-nf-fim holds its weights fixed by definition (test_fim)
def test_second_order_matches_finite_differences(faces, method):
    layout, values = faces
    m, theta = make(layout, method=method)
    _, g, _ = meta_grad(m, theta, values)
    torch.manual_seed(1)
    v = [torch.randn_like(p) for p in theta.values()]
    eps = 1e-5

    def value(sign):
        shifted = {k: (p + sign * eps * d).detach() for (k, p), d in zip(theta.items(), v)}
        return float(m.objective(shifted, values, values.shape[0] * (4 if method.startswith("mcl-nf") else 1))[0])

    fd = (value(1) - value(-1)) / (2 * eps)
    analytic = sum(float((gi * d).sum()) for gi, d in zip(g, v) if gi is not None)
    assert analytic == pytest.approx(fd, rel=1e-6, abs=1e-10)


def sgd_by_hand(m, theta0, x, y, steps, lr):
    theta = {k: v.detach().clone().requires_grad_() for k, v in theta0.items()}
    for _ in range(steps):
        loss = (m.forward(theta, x) - y).square().mean()
        gs = torch.autograd.grad(loss, list(theta.values()))
        theta = {k: (v - lr * g).detach().requires_grad_() for (k, v), g in zip(theta.items(), gs)}
    return theta


def test_first_order_is_the_gradient_at_the_adapted_parameters(faces):
    layout, values = faces
    m, theta = make(layout, method="mol", meta_grad="first-order")
    _, got, _ = meta_grad(m, theta, values)
    x = layout.coords().double()
    want = [torch.zeros_like(p) for p in theta.values()]
    for y in values:
        adapted = sgd_by_hand(m, theta, x, y, 2, 0.05)
        gs = torch.autograd.grad((m.forward(adapted, x) - y).square().mean(), list(adapted.values()))
        want = [w + g / len(values) for w, g in zip(want, gs)]
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-13)


def test_first_order_approaches_second_order_as_the_inner_step_shrinks(faces):
    layout, values = faces
    gaps = []
    for lr in (1e-2, 1e-3):
        g1 = meta_grad(*make(layout, method="mcl-nf", meta_grad="first-order", inner_lr=lr, inner_steps=1), values)[1]
        g2 = meta_grad(*make(layout, method="mcl-nf", meta_grad="second-order", inner_lr=lr, inner_steps=1), values)[1]
        gaps.append(sum(float((a - b).norm()) for a, b in zip(g1, g2)) / sum(float(b.norm()) for b in g2))
    assert gaps[1] < gaps[0] / 5  # the second-order term is O(α)
    assert gaps[1] < 0.05


def proximal_by_hand(m, theta0, h, x, y, steps, lr, lam):
    theta = {k: v.detach().clone() for k, v in theta0.items()}
    for _ in range(steps):
        t = {k: v.requires_grad_() for k, v in theta.items()}
        gs = torch.autograd.grad((m.forward(t, x) - y).square().mean(), list(t.values()))
        theta = {k: ((v - lr * g) + lr * lam * h[k] * theta0[k].detach()) / (1 + lr * lam * h[k]) for (k, v), g in zip(t.items(), gs)}
    return {k: v.detach() for k, v in theta.items()}


def test_emcl_is_the_closed_form_of_the_proximal_inner_loop(faces):
    layout, values = faces
    m, theta = make(layout, method="mol", meta_grad="emcl", emcl_lambda=3.0)
    torch.manual_seed(2)
    h = {k: torch.rand_like(v) + 0.5 for k, v in theta.items()}
    _, got, _ = meta_grad(m, theta, values, h)
    x = layout.coords().double()
    want = [torch.zeros_like(p) for p in theta.values()]
    for y in values:
        adapted = proximal_by_hand(m, theta, h, x, y, 2, 0.05, 3.0)
        want = [w + 3.0 * h[k] * (theta[k].detach() - adapted[k]) / len(values) for w, k in zip(want, theta)]
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-13)


def test_emcl_equals_the_gradient_at_the_inner_optimum(faces):
    """At the minimizer θ* of L(θ) + (λ/2) h (θ − θ₀)², λh(θ₀ − θ*) = ∇L(θ*): emcl's meta-gradient
    is then first-order MAML's at the same adapted parameters."""
    layout, values = faces
    m, theta = make(layout, method="mol", meta_grad="emcl", emcl_lambda=20.0, inner_steps=400, inner_lr=0.05)
    h = {k: torch.ones_like(v) for k, v in theta.items()}
    _, closed, _ = meta_grad(m, theta, values[:1], h)
    x, y = layout.coords().double(), values[0]
    adapted = proximal_by_hand(m, theta, h, x, y, 400, 0.05, 20.0)
    t = {k: v.requires_grad_() for k, v in adapted.items()}
    grad_at_optimum = torch.autograd.grad((m.forward(t, x) - y).square().mean(), list(t.values()))
    num = sum(float((a - b).norm()) for a, b in zip(closed, grad_at_optimum))
    assert num / sum(float(b.norm()) for b in grad_at_optimum) < 1e-6


def test_oml_adapts_only_the_top_layers_and_meta_learns_all(faces):
    layout, values = faces
    m, theta = make(layout, method="oml", oml_fast_layers=1)
    assert m.fast == ["layers.2.weight", "layers.2.bias"]
    for grad_kind in ("second-order", "first-order", "emcl"):
        m2, theta2 = make(layout, method="oml", oml_fast_layers=1, meta_grad=grad_kind)
        h = {k: torch.ones_like(theta2[k]) for k in m2.fast}
        _, g, _ = meta_grad(m2, theta2, values, h)
        assert all(gi is not None and float(gi.abs().sum()) > 0 for gi in g)  # representation and PLN init both get a meta-gradient


@pytest.mark.parametrize("method", ["mol", "oml", "mcl-nf"])
def test_vmap_equals_a_loop_over_the_meta_batch(faces, method):
    layout, values = faces
    m, theta = make(layout, method=method)
    obj, g, _ = meta_grad(m, theta, values)
    m.opts = dataclasses.replace(m.opts, vmap=False)
    obj2, g2, _ = meta_grad(m, theta, values)
    assert float(obj.detach()) == pytest.approx(float(obj2.detach()), rel=1e-12)
    for a, b in zip(g, g2):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


def test_per_task_inner_gradients_are_not_scaled_by_the_batch(faces):
    """The meta-batch's inner loops are independent: one signal's adaptation does not depend on the others."""
    layout, values = faces
    m, theta = make(layout, method="mol")
    alone = meta_grad(m, theta, values[:1])[2]
    together = meta_grad(m, theta, values)[2]
    others = meta_grad(m, theta, values[1:])[2]
    assert float(together) == pytest.approx((float(alone) + 2 * float(others)) / 3, rel=1e-10)
