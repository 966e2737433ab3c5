"""One shared table over every registered optimizer, plus the curvature utilities they rest on."""

from __future__ import annotations

import copy
import io
import math

import pytest
import torch

from mclnf.optim import OPTIMIZERS, build_optimizer, needs_create_graph
from mclnf.optim.adahessian import AdaHessian
from mclnf.optim.curvature import equilibrated_diagonal, hvp, jacobi_diagonal, rademacher_like
from mclnf.optim.esgd import ESGD
from mclnf.optim.kfac import KFAC
from mclnf.optim.shampoo import Shampoo

F64 = torch.float64

# name: (lr, steps) on the quadratic (reach max|x| < 1e-6), on Rosenbrock b=10 (reach max|x-1| < tol) and
# on linear least squares through an nn.Linear (reach max|θ-θ*| < tol, θ* the lstsq solution).
# kfac has no quad/rosen entry (None: those rows are not generated for it): it preconditions nn.Linear
# layers and the two bare-parameter problems have none (test_layer_preconditioners_need_linear_layers); linear least squares is its problem — there A ⊗ G is the exact
# curvature up to the noise level, which is where K-FAC must shine — and every other optimizer runs it too.
CONVERGENCE = {
    "adam": dict(quad=(0.05, 1000), rosen=(0.05, 1500, 1e-3), lsq=(0.05, 1000, 1e-6)),
    "sgd": dict(quad=(0.019, 1000), rosen=(0.02, 1500, 1e-3), lsq=(0.4, 1500, 1e-6)),
    "esgd": dict(quad=(0.15, 300), rosen=(0.15, 1500, 1e-2), lsq=(0.15, 300, 1e-6)),
    "esgd-corrected": dict(quad=(0.15, 300), rosen=(0.15, 3000, 5e-2), lsq=(0.15, 300, 1e-6)),
    "esgd-robust": dict(quad=(0.15, 350), rosen=(0.15, 3000, 5e-2), lsq=(0.15, 350, 1e-6)),
    "adahessian-j": dict(quad=(0.15, 300), rosen=(0.15, 1500, 5e-2), lsq=(0.15, 300, 1e-6)),
    "adahessian-e": dict(quad=(0.15, 300), rosen=(0.15, 3000, 5e-2), lsq=(0.15, 300, 1e-6)),
    "shampoo": dict(quad=(1.0, 500), rosen=(0.1, 3000, 5e-2), lsq=(0.3, 1000, 1e-6)),
    "kfac": dict(quad=None, rosen=None, lsq=(0.1, 300, 1e-6)),
}

# name: (constructor, [(bad kwargs, words the message must contain)])
_CURV = [
    (dict(lr=-1.0), "lr"), (dict(betas=(1.0, 0.999)), "betas[0]"), (dict(betas=(0.9, -0.1)), "betas[1]"),
    (dict(eps=0.0), "eps"), (dict(eps=-1e-4), "eps"), (dict(weight_decay=-1.0), "weight_decay"),
    (dict(update_every=0), "update_every"), (dict(warmup=-1), "warmup"), (dict(seed=1.5), "seed"),
    (dict(bias_correction="none"), "bias_correction"), (dict(lr_warmup=-1), "lr_warmup"), (dict(lr_warmup=2.5), "lr_warmup"),
]  # fmt: skip
BAD_ARGUMENTS = {
    "adam": (torch.optim.Adam, [(dict(lr=-1.0), "learning rate"), (dict(betas=(1.0, 0.9)), "beta parameter at index 0"), (dict(eps=-1.0), "epsilon")]),
    "sgd": (torch.optim.SGD, [(dict(lr=-1.0), "learning rate"), (dict(momentum=-1.0), "momentum")]),
    "esgd": (ESGD, _CURV),
    "esgd-corrected": (ESGD, _CURV),
    "esgd-robust": (ESGD, _CURV),
    "adahessian-j": (AdaHessian, _CURV + [(dict(hessian_power=1.5), "hessian_power"), (dict(estimator="gauss"), "estimator")]),
    "adahessian-e": (AdaHessian, _CURV + [(dict(hessian_power=-0.5), "hessian_power")]),
    "shampoo": (Shampoo, [(dict(lr=-1.0), "lr"), (dict(momentum=1.0), "momentum"), (dict(matrix_eps=0.0), "matrix_eps"),
                          (dict(preconditioning_compute_steps=0), "preconditioning_compute_steps"), (dict(weight_decay=-1.0), "weight_decay")]),
    "kfac": (lambda _params, **kw: KFAC(torch.nn.Linear(2, 2), **kw),  # K-FAC takes the model, not its parameters
             [(dict(lr=-1.0), "lr"), (dict(lr=math.inf), "lr"), (dict(damping=-0.01), "damping"), (dict(damping=math.nan), "damping"),
              (dict(update_every=0), "update_every"), (dict(update_every=2.5), "update_every")]),
}  # fmt: skip


def test_table_covers_every_registered_optimizer():
    assert set(CONVERGENCE) == set(OPTIMIZERS) == set(BAD_ARGUMENTS)


def _step(opt, loss_fn, params):
    """One step the way mclnf.train does it: a differentiable gradient when the optimizer asks."""
    opt.zero_grad(set_to_none=True)
    loss = loss_fn()
    if needs_create_graph(opt):
        for p, g in zip(params, torch.autograd.grad(loss, params, create_graph=True)):
            p.grad = g
    else:
        loss.backward()
    opt.step()
    return loss.item()


class _Point(torch.nn.Module):
    """A bare parameter as a model (build_optimizer takes the model)."""

    def __init__(self, x0):
        super().__init__()
        self.x = torch.nn.Parameter(x0.clone())


def _minimize(name, lr, steps, f, x0):
    point = _Point(x0)
    x = point.x
    opt = build_optimizer(name, point, lr)
    for _ in range(steps):
        _step(opt, lambda: f(x), [x])
    return x.detach()


# ½ Σ a_ij x_ij² with a = r cᵀ (a Kronecker structure), eigenvalues 1 … 100: condition number 100
_A = torch.logspace(0, 1, 4, dtype=F64)[:, None] * torch.logspace(0, 1, 5, dtype=F64)[None, :]


def _with(problem):
    return [name for name in OPTIMIZERS if CONVERGENCE[name][problem] is not None]


def test_layer_preconditioners_need_linear_layers():
    """The optimizers left out of the bare-parameter rows are exactly those that refuse models without nn.Linear."""
    assert set(OPTIMIZERS) - set(_with("quad")) == set(OPTIMIZERS) - set(_with("rosen")) == {"kfac"}
    with pytest.raises(ValueError, match="nn.Linear"):
        build_optimizer("kfac", _Point(torch.zeros(3)), 0.1)


@pytest.mark.parametrize("name", _with("quad"))
def test_converges_on_ill_conditioned_quadratic(name):
    lr, steps = CONVERGENCE[name]["quad"]
    x = _minimize(name, lr, steps, lambda x: 0.5 * (_A * x**2).sum(), torch.linspace(-1, 1, 20, dtype=F64).reshape(4, 5) + 0.3)
    assert x.abs().max() < 1e-6, f"{name}: max|x| = {x.abs().max():.3g} after {steps} steps at lr {lr}"


@pytest.mark.parametrize("name", _with("rosen"))
def test_converges_on_rosenbrock(name):
    """Rosenbrock (1-x)² + 10 (y-x²)² from (-1.2, 1): minimum at (1, 1). (b = 10, not 100: diagonal
    curvature methods crawl along the b = 100 valley for tens of thousands of steps.)"""
    lr, steps, tol = CONVERGENCE[name]["rosen"]
    x = _minimize(name, lr, steps, lambda x: (1 - x[0]) ** 2 + 10 * (x[1] - x[0] ** 2) ** 2, torch.tensor([-1.2, 1.0], dtype=F64))
    assert (x - 1).abs().max() < tol, f"{name}: {x.tolist()} after {steps} steps at lr {lr}"


def _lsq_problem():
    """y = W* x + b* + noise, 64 samples, 4 features of spread scales: E[x̄x̄ᵀ] has eigenvalues 0.05 … 3.8."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 4, generator=g, dtype=F64) * torch.tensor([2.0, 1.0, 0.5, 0.25], dtype=F64)
    y = x @ torch.randn(4, 2, generator=g, dtype=F64) + 0.5 + 0.1 * torch.randn(64, 2, generator=g, dtype=F64)
    solution = torch.linalg.lstsq(torch.cat([x, torch.ones(64, 1, dtype=F64)], 1), y).solution.T  # [W* | b*]
    return x, y, solution


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_converges_on_linear_least_squares(name):
    lr, steps, tol = CONVERGENCE[name]["lsq"]
    x, y, solution = _lsq_problem()
    torch.manual_seed(0)
    net = torch.nn.Linear(4, 2).double()
    opt = build_optimizer(name, net, lr)
    params = list(net.parameters())
    for _ in range(steps):
        _step(opt, lambda: ((net(x) - y) ** 2).mean(), params)
    err = (torch.cat([net.weight, net.bias[:, None]], 1) - solution).abs().max().item()
    assert err < tol, f"{name}: max|θ-θ*| = {err:.3g} after {steps} steps at lr {lr}"


def _mlp_problem(seed=0):
    g = torch.Generator().manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Linear(2, 16), torch.nn.Tanh(), torch.nn.Linear(16, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1)).double()
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=F64) * 0.5)
    x = torch.rand(64, 2, generator=g, dtype=F64) * 2 - 1
    y = torch.sin(3 * x[:, :1]) * x[:, 1:]
    return net, x, y


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_state_dict_round_trip_continues_identically(name):
    net, x, y = _mlp_problem()
    params = list(net.parameters())
    lr = CONVERGENCE[name]["lsq"][0] * 0.1
    opt = build_optimizer(name, net, lr)
    loss = lambda n: ((n(x) - y) ** 2).mean()  # noqa: E731
    for _ in range(60):  # past ESGD's 50-step warm-up; the next 100 steps cross the refreshes at 101 (K-FAC), 150 (ESGD)
        _step(opt, lambda: loss(net), params)
    buf = io.BytesIO()
    torch.save(opt.state_dict(), buf)
    buf.seek(0)
    twin = copy.deepcopy(net)
    twin_params = list(twin.parameters())
    twin_opt = build_optimizer(name, twin, lr)
    twin_opt.load_state_dict(torch.load(buf))
    for _ in range(100):
        _step(opt, lambda: loss(net), params)
        _step(twin_opt, lambda: loss(twin), twin_params)
    for p, q in zip(params, twin_params):
        assert torch.equal(p, q), f"{name}: resumed run differs"
    assert not torch.equal(params[0], list(_mlp_problem()[0].parameters())[0]), f"{name}: never moved"


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_bad_hyperparameters_rejected_naming_them(name):
    cls, cases = BAD_ARGUMENTS[name]
    for kwargs, words in cases:
        with pytest.raises(ValueError) as err:
            cls([torch.nn.Parameter(torch.zeros(2, 2))], **kwargs)
        assert words in str(err.value), f"{name} {kwargs}: message {str(err.value)!r} does not name {words!r}"


# -- curvature utilities ------------------------------------------------------------------------------

def _small_net():
    """f(θ) = mean((w2 · tanh(W1 x + b1) + b2 - y)²) with θ = (W1, b1, w2, b2), and the same as a
    function of one flat vector for torch.autograd.functional.hessian."""
    g = torch.Generator().manual_seed(3)
    shapes = [(4, 2), (4,), (1, 4), (1,)]
    theta = [torch.randn(s, generator=g, dtype=F64, requires_grad=True) for s in shapes]
    x, y = torch.randn(10, 2, generator=g, dtype=F64), torch.randn(10, 1, generator=g, dtype=F64)

    def f(W1, b1, w2, b2):
        return ((torch.tanh(x @ W1.T + b1) @ w2.T + b2 - y) ** 2).mean()

    def f_flat(v):
        parts, i = [], 0
        for s in shapes:
            n = math.prod(s)
            parts.append(v[i : i + n].reshape(s))
            i += n
        return f(*parts)

    flat = torch.cat([t.detach().flatten() for t in theta])
    return theta, f, torch.autograd.functional.hessian(f_flat, flat)


def _flat(ts):
    return torch.cat([t.flatten() for t in ts])


def test_hvp_matches_autograd_hessian_exactly():
    theta, f, H = _small_net()
    grads = torch.autograd.grad(f(*theta), theta, create_graph=True)
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        vs = [torch.randn(t.shape, generator=g, dtype=F64) for t in theta]
        torch.testing.assert_close(_flat(hvp(grads, theta, vs)), H @ _flat(vs), rtol=1e-12, atol=1e-12)


def test_rademacher_is_plus_minus_one_and_seeded():
    t = torch.empty(1000, dtype=F64)
    a, b = rademacher_like(t, torch.Generator().manual_seed(1)), rademacher_like(t, torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and set(a.unique().tolist()) == {-1.0, 1.0} and abs(a.mean()) < 0.15


def test_hutchinson_diagonals_are_unbiased():
    """Mean of S draws vs the exact value, within 5 standard errors; the per-draw variances are
    Σ_{j≠i} H_ij² (Jacobi) and 2 Σ_{j≠k} H_ij² H_ik² (equilibrated)."""
    theta, f, H = _small_net()
    grads = torch.autograd.grad(f(*theta), theta, create_graph=True)
    S = 2000
    off = H - torch.diag(torch.diag(H))
    var_j = (off**2).sum(1)
    H2 = H**2
    var_e = 2 * (H2.sum(1) ** 2 - (H2**2).sum(1))
    jac = _flat(jacobi_diagonal(grads, theta, samples=S, generator=torch.Generator().manual_seed(0)))
    equ = _flat(equilibrated_diagonal(grads, theta, samples=S, generator=torch.Generator().manual_seed(1)))
    assert ((jac - torch.diag(H)).abs() <= 5 * (var_j / S).sqrt() + 1e-12).all()
    assert ((equ - torch.diag(H @ H)).abs() <= 5 * (var_e / S).sqrt() + 1e-12).all()
    assert not torch.allclose(jac, torch.diag(H @ H), atol=1e-3)  # the two estimators estimate different things


# -- ESGD's schedule and bias correction ------------------------------------------------------------

def test_esgd_needs_create_graph_exactly_on_refresh_steps():
    x = torch.nn.Parameter(torch.ones(3, dtype=F64))
    opt = ESGD([x], lr=1e-3, seed=0)
    flags = []
    for _ in range(450):
        flags.append(opt.needs_create_graph())
        _step(opt, lambda: 0.5 * (x**2).sum(), [x])
    assert {t for t, f in enumerate(flags, 1) if f} == set(range(1, 51)) | {150, 250, 350, 450}
    assert opt.state[x]["hessian_updates"] == 54


def test_esgd_reference_bias_correction_steps_larger_at_t1300():
    """On ½ Σ h_i x_i², (Hv)² = h² for every v, so D is exact; with lr 0 the parameters (and so m̂ = g)
    stay fixed. At t = 1300 there have been 62 refreshes (1–50, 150, …, 1250): the reference's √D̂ is
    √((1-β2^62)/(1-β2^1300)) ≈ 0.287 of the true |h|, a ≈3.48× larger step (DESIGN.md: ≈3.5×)."""
    h = torch.tensor([100.0, 300.0], dtype=F64)
    moves = {}
    for mode in ("reference", "per-update"):
        x = torch.nn.Parameter(torch.ones(2, dtype=F64))
        opt = ESGD([x], lr=0.0, bias_correction=mode, seed=0)
        f = lambda: 0.5 * (h * x**2).sum()  # noqa: E731
        for _ in range(1299):
            _step(opt, f, [x])
        opt.param_groups[0]["lr"] = 1.0
        before = x.detach().clone()
        _step(opt, f, [x])
        moves[mode] = (before - x.detach()).abs()
        assert opt.state[x]["hessian_updates"] == 62
    torch.testing.assert_close(moves["per-update"], torch.ones(2, dtype=F64), rtol=1e-5, atol=0)  # g/|h| = x = 1
    ratio = moves["reference"] / moves["per-update"]
    expected = math.sqrt((1 - 0.999**1300) / (1 - 0.999**62))
    assert abs(expected - 3.5) < 0.05
    torch.testing.assert_close(ratio, torch.full((2,), expected, dtype=F64), rtol=1e-3, atol=0)


@pytest.mark.parametrize("step, rate", [(1, 1 / 50), (25, 0.5), (50, 1.0), (80, 1.0)])
def test_esgd_lr_warmup_ramps_the_step_linearly_then_holds(step, rate):
    """As above (exact D, fixed parameters), with the per-update correction √D̂ = |h| exactly and m̂ = g = h x, so
    step t moves each coordinate by lr_t · h/(h + eps) ≈ lr_t, and lr_t = lr · min(1, t/50)."""
    h = torch.tensor([100.0, 300.0], dtype=F64)
    x = torch.nn.Parameter(torch.ones(2, dtype=F64))
    opt = ESGD([x], lr=0.0, bias_correction="per-update", lr_warmup=50, seed=0)
    f = lambda: 0.5 * (h * x**2).sum()  # noqa: E731
    for _ in range(step - 1):
        _step(opt, f, [x])
    opt.param_groups[0]["lr"] = 1.0
    before = x.detach().clone()
    _step(opt, f, [x])
    torch.testing.assert_close(before - x.detach(), rate * h / (h + 1e-4), rtol=1e-9, atol=0)


def test_esgd_robust_is_esgd_corrected_with_the_ramp():
    opt = build_optimizer("esgd-robust", torch.nn.Linear(2, 2))
    assert isinstance(opt, ESGD) and (opt.bias_correction, opt.lr_warmup, opt.warmup, opt.param_groups[0]["lr"]) == ("per-update", 50, 50, 0.15)


def test_curvature_step_without_graph_is_a_clear_error():
    x = torch.nn.Parameter(torch.ones(3))
    opt = ESGD([x])
    (x**2).sum().backward()
    with pytest.raises(RuntimeError, match="create_graph=True"):
        opt.step()


# -- K-FAC ---------------------------------------------------------------------------------------------

def _kfac_update(net, x, t):
    """θ_before − θ_after of one K-FAC step at lr 1, damping 0, factors from this very batch."""
    opt = KFAC(net, lr=1.0, damping=0.0, update_every=1)
    before = torch.cat([net.weight, net.bias[:, None]], 1).detach().clone()
    opt.zero_grad()
    ((net(x) - t) ** 2).mean().backward()
    grad = torch.cat([net.weight.grad, net.bias.grad[:, None]], 1).clone()
    opt.step()
    return before - torch.cat([net.weight, net.bias[:, None]], 1).detach(), grad


def test_kfac_step_is_the_kronecker_natural_gradient_in_float64():
    """Linear(5, 3): A = E[āāᵀ] (ā with the bias 1), G = E[ggᵀ] (g the per-sample output gradient,
    n × the batch-mean loss's), both formed here directly; the update must be (G ⊗ A)⁻¹ vec[∇W ∇b]
    (row-major vec of the 3 × 6 matrix [W b]) — one dense 18 × 18 solve, no Kronecker shortcut."""
    g = torch.Generator().manual_seed(1)
    net = torch.nn.Linear(5, 3).double()
    x, t = torch.randn(40, 5, generator=g, dtype=F64), torch.randn(40, 3, generator=g, dtype=F64)
    with torch.no_grad():
        r = net(x) - t
    update, grad = _kfac_update(net, x, t)
    a = torch.cat([x, torch.ones(40, 1, dtype=F64)], 1)
    per_sample = 2 * r / r.numel() * 40  # n · ∂ mean((y−t)²)/∂y_i
    A, G = a.T @ a / 40, per_sample.T @ per_sample / 40
    expected = torch.linalg.solve(torch.kron(G, A), grad.flatten()).reshape(3, 6)
    torch.testing.assert_close(update, expected, rtol=1e-8, atol=1e-10)


def test_kfac_step_is_a_scaled_newton_step_on_linear_least_squares():
    """One output: the Gauss-Newton matrix is the Hessian H = 2A (torch.autograd.functional.hessian), and
    the empirical-Fisher factor G = E[g²] = 4 E[r²] is a scalar, so A ⊗ G = (G/2) H: the K-FAC update
    times G/2 is the Newton step H⁻¹∇ to 1e-8, and the rescaled step lands on the least-squares solution."""
    g = torch.Generator().manual_seed(2)
    net = torch.nn.Linear(4, 1).double()
    x, t = torch.randn(30, 4, generator=g, dtype=F64), torch.randn(30, 1, generator=g, dtype=F64)
    theta0 = torch.cat([net.weight, net.bias[:, None]], 1).detach().clone().flatten()
    a = torch.cat([x, torch.ones(30, 1, dtype=F64)], 1)
    loss = lambda th: ((a @ th[:, None] - t) ** 2).mean()  # noqa: E731
    H = torch.autograd.functional.hessian(loss, theta0)
    G = 4 * ((a @ theta0[:, None] - t) ** 2).mean()
    update, grad = _kfac_update(net, x, t)
    newton = torch.linalg.solve(H, grad.flatten())
    torch.testing.assert_close(update.flatten() * G / 2, newton, rtol=1e-8, atol=1e-12)
    torch.testing.assert_close(theta0 - newton, torch.linalg.lstsq(a, t).solution.flatten(), rtol=1e-8, atol=1e-10)


def test_kfac_records_and_refreshes_only_on_refresh_steps():
    net, x, y = _mlp_problem()
    opt = KFAC(net, lr=1e-3, update_every=3)
    params = list(net.parameters())
    w = net[0].weight
    seen, factors = [], []
    for step in range(1, 8):
        opt.zero_grad()
        loss = ((net(x) - y) ** 2).mean()
        loss.backward()
        seen.append(bool(opt._inputs) and bool(opt._outgrads))
        opt.step()
        factors.append(opt.state[w]["G_inv"].clone())  # (A of the first layer depends on x only)
    assert [t for t, s in enumerate(seen, 1) if s] == [1, 4, 7]  # nothing recorded on the other steps
    assert torch.equal(factors[0], factors[2]) and not torch.equal(factors[2], factors[3])
    assert set(opt.state[w]) == {"A", "G", "A_inv", "G_inv"} and opt.state[w]["A"].shape == (3, 3)  # 2 inputs + bias
    with torch.no_grad():  # evaluation passes between steps record nothing
        net(x)
    assert not opt._inputs and all(p.grad is not None for p in params)


def test_kfac_rejects_models_it_cannot_precondition_and_unrecorded_refreshes():
    with pytest.raises(ValueError, match="no nn.Linear"):
        KFAC(_Point(torch.zeros(3)))
    with pytest.raises(TypeError, match="model"):
        KFAC([torch.nn.Parameter(torch.zeros(2, 2))])
    net = torch.nn.Linear(2, 1)
    opt = KFAC(net)
    net.weight.grad, net.bias.grad = torch.ones(1, 2), torch.ones(1)  # gradients that did not come from a pass
    with pytest.raises(RuntimeError, match="loss.backward"):
        opt.step()
