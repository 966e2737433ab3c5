"""Online classifiers: EMCL's proximal step and closed-form meta-gradient, GEM/A-GEM projections,
La-MAML's update, the metrics and the evaluation, on hand-made problems (float64) and real MNIST."""

import numpy as np
import pytest
import torch
from conftest import DATA
from scipy.optimize import minimize

from mclnf.commands.cl_bench import accuracy, method_options, run_one
from mclnf.eval.metrics import backward_transfer
from mclnf.fields.classifiers import mlp
from mclnf.learners import ONLINE_LEARNERS, LearnerOptions
from mclnf.learners.emcl import EMCL, Importance, inner_step
from mclnf.learners.lamaml import LaMAML
from mclnf.learners.projection import agem_project, gem_project
from mclnf.losses import head_loss
from mclnf.signals.classification import ClassTask, mnist_permutations
from mclnf.train import learn_task

torch.set_default_dtype(torch.float32)


def test_prox_step_is_the_minimizer_of_eq14():
    """θ' = argmin_θ (1/2γ)‖θ − θ̂‖² + (λ/2) Σ h (θ − θ₀)², θ̂ = θ − β∇ℓ: its gradient vanishes there."""
    g = torch.Generator().manual_seed(0)
    theta, grad, theta0 = (torch.randn(50, generator=g, dtype=torch.float64) for _ in range(3))
    h = torch.rand(50, generator=g, dtype=torch.float64) * 3
    beta, lam, gamma = 0.15, 10.0, 0.3
    new = inner_step(theta0, h, beta, lam, gamma)(theta, grad).requires_grad_()
    hat = theta - beta * grad
    objective = (new - hat).square().sum() / (2 * gamma) + lam / 2 * (h * (new - theta0).square()).sum()
    (d,) = torch.autograd.grad(objective, new)
    assert d.abs().max() < 1e-12
    # and every other point is worse (strongly convex)
    assert all(float(objective.detach()) < float((p - hat).square().sum() / (2 * gamma) + lam / 2 * (h * (p - theta0).square()).sum())
               for p in (new.detach() + 1e-3 * torch.randn(50, generator=g, dtype=torch.float64) for _ in range(5)))  # fmt: skip


def test_ablation_steps():
    theta, grad, theta0, h = torch.tensor([1.0]), torch.tensor([2.0]), torch.tensor([0.5]), torch.tensor([4.0])
    assert float(inner_step(theta0, h, 0.1, 10.0, 0.3, pgd=False)(theta, grad)) == pytest.approx(1 - 0.1 * (2 + 10 * 4 * 0.5))
    assert float(inner_step(theta0, h, 0.1, 10.0, 0.3, reg=False)(theta, grad)) == pytest.approx(1 - 0.1 * 2 / (1 + 0.3 * 10 * 4))


def test_closed_form_meta_gradient_is_the_gradient_at_the_inner_minimizer():
    """On L(θ) = ½θᵀAθ − bᵀθ: λh(θ₀ − θ*) equals the autograd gradient, with respect to θ₀, of the
    regularized objective's minimum min_θ L(θ) + (λ/2)Σh(θ − θ₀)² (and ∇L(θ*)); EMCL's proximal steps
    converge to that θ* when γ = β, and with γ ≠ β to the minimizer for λγ/β."""
    g = torch.Generator().manual_seed(1)
    M = torch.randn(6, 6, generator=g, dtype=torch.float64)
    A, b = M @ M.T / 6 + 0.1 * torch.eye(6, dtype=torch.float64), torch.randn(6, generator=g, dtype=torch.float64)
    h = torch.rand(6, generator=g, dtype=torch.float64) + 0.2
    theta0 = torch.randn(6, generator=g, dtype=torch.float64, requires_grad=True)

    def minimizer(lam):  # differentiable in θ₀
        return torch.linalg.solve(A + lam * torch.diag(h), b + lam * h * theta0)

    lam, theta_star = 2.0, minimizer(2.0)
    envelope = 0.5 * theta_star @ A @ theta_star - b @ theta_star + lam / 2 * (h * (theta_star - theta0).square()).sum()
    (autograd,) = torch.autograd.grad(envelope, theta0)
    closed = lam * h * (theta0 - theta_star).detach()
    torch.testing.assert_close(closed, autograd, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(closed, (A @ theta_star - b).detach(), rtol=1e-10, atol=1e-12)
    for beta, gamma in ((0.1, 0.1), (0.1, 0.3)):
        step, theta = inner_step(theta0.detach(), h, beta, lam, gamma), theta0.detach().clone()
        for _ in range(5000):
            theta = step(theta, A @ theta - b)
        torch.testing.assert_close(theta, minimizer(lam * gamma / beta).detach(), rtol=1e-9, atol=1e-10)


def test_importance_average_and_meta_rates():
    imp = Importance(eta=0.9)
    imp.update([torch.tensor([1.0, 3.0])])
    imp.update([torch.tensor([3.0, 1.0])])
    h = imp.h[0]
    torch.testing.assert_close(h, torch.tensor([1.2, 2.8]))  # 0.9·old + 0.1·new
    torch.testing.assert_close(imp.normalized()[0], h / 2.0)


def emcl_learner(**options) -> EMCL:
    task = ClassTask(0, torch.zeros(1, 1), torch.zeros(1, dtype=torch.long), torch.zeros(1, 1), torch.zeros(1, dtype=torch.long))
    learner = EMCL([task], LearnerOptions(**options), lambda: torch.nn.ParameterList([torch.nn.Parameter(torch.tensor([1.0, 1.0]))]), "ce", head_loss(None))
    learner.before_task(task)
    return learner


def test_meta_step_with_inverse_rates():
    """θ₀ ← θ₀ − α ⊙ g with α = α₀ r / ĥ (eq. 8 without compounding): with g = λĥ(θ₀ − θ_k) (eq. 10) ĥ
    cancels, and θ₀ moves α₀ r λ of the way to θ_k whatever the importance — past it when α₀ r λ > 1."""
    learner = emcl_learner(emcl_lr=0.3, emcl_r=2.0)
    h = [torch.tensor([0.5, 4.0])]
    learner.rates = learner.meta_rates(h)
    torch.testing.assert_close(learner.rates[0], torch.tensor([0.3 * 2 / 0.5, 0.3 * 2 / 4.0]))
    (p,) = learner.model.parameters()
    theta_k, lam = torch.tensor([0.0, 2.0]), 10.0
    p.grad = lam * h[0] * (p.detach() - theta_k)
    learner.update()
    torch.testing.assert_close(p.detach(), torch.tensor([1.0 + 6.0 * (0.0 - 1.0), 1.0 + 6.0 * (2.0 - 1.0)]))  # α₀ r λ = 6 times θ_k − θ₀


def test_compounded_rates_over_many_updates():
    """Eq. 8 as printed, α^j = (r / ĥ^j) α^{j−1}: a parameter whose ĥ stays below r gets a rate that grows
    geometrically, one above r a rate that vanishes; only ĥ ≡ r keeps α₀. Alg. 1 steps with α^j (line 9)
    after computing α^{j+1} (line 8). The inverse reading gives α₀ r / ĥ at every step."""
    learner, inverse = emcl_learner(emcl_lr=0.3, emcl_r=1.0, emcl_meta_rate="compound"), emcl_learner(emcl_lr=0.3, emcl_r=1.0)
    h = [torch.tensor([0.5, 1.0, 2.0])]
    for j in range(40):
        rates = learner.meta_rates(h)[0]
        torch.testing.assert_close(rates, 0.3 * torch.tensor([2.0, 1.0, 0.5]) ** j)
        torch.testing.assert_close(inverse.meta_rates(h)[0], 0.3 * torch.tensor([2.0, 1.0, 0.5]))
    assert rates[0] > 1e10 and rates[2] < 1e-10  # after 40 meta steps: 3·10¹¹ and 3·10⁻¹³


def test_emcl_learner_meta_gradient():
    """The learner's surrogate: value = loss of the batch at θ₀, gradient = λĥ(θ₀ − θ_k) with θ_k from
    the inner steps written out."""
    torch.manual_seed(0)
    x, labels = torch.randn(4, 5), torch.tensor([0, 1, 2, 1])
    y = torch.stack([labels, torch.zeros_like(labels)], 1)
    task = ClassTask(0, x, labels, x, labels)
    opts = LearnerOptions(batch_size=2, emcl_lambda=2.0, emcl_gamma=0.5, emcl_inner_lr=0.1)
    learner = EMCL([task], opts, lambda: torch.nn.Linear(5, 3), "ce", head_loss(None))
    learner.before_task(task)
    theta0 = [p.detach().clone() for p in learner.model.parameters()]
    value = learner.loss(x, y)
    value.backward()
    W, c = theta0
    assert float(value) == pytest.approx(float(torch.nn.functional.cross_entropy(x @ W.T + c, labels)), rel=1e-6)
    h = learner.importance.normalized()
    steps = [inner_step(t0, hi, 0.1, 2.0, 0.5) for t0, hi in zip(theta0, h)]
    fast = [t.clone() for t in theta0]
    order = torch.randperm(2, generator=torch.Generator().manual_seed(0)).tolist()  # the learner's first draw
    for i in order:
        rows = [i, 2, 3]  # the incoming sample with the "replayed" rows after the first batch_size
        f = [t.clone().requires_grad_() for t in fast]
        grads = torch.autograd.grad(torch.nn.functional.cross_entropy(x[rows] @ f[0].T + f[1], labels[rows]), f)
        fast = [s(t, g) for s, t, g in zip(steps, fast, grads)]
    for p, t0, hi, tk in zip(learner.model.parameters(), theta0, h, fast):
        torch.testing.assert_close(p.grad, 2.0 * hi * (t0 - tk), rtol=1e-5, atol=1e-7)


def brute_force_projection(g, G, margin=0.0):
    res = minimize(lambda z: 0.5 * np.sum((z - g) ** 2), g, jac=lambda z: z - g,
                   constraints=[{"type": "ineq", "fun": lambda z: G @ z, "jac": lambda z: G}], method="SLSQP", options={"ftol": 1e-14, "maxiter": 500})  # fmt: skip
    return res.x


def test_gem_projection_is_the_closest_feasible_gradient():
    rng = np.random.default_rng(0)
    G = rng.normal(size=(3, 12))
    g = -G.sum(0) + 0.3 * rng.normal(size=12)  # violates the constraints
    assert (G @ g < 0).any()
    out = gem_project(torch.tensor(g), torch.tensor(G), margin=0.0, eps=0.0).numpy()
    assert (G @ out >= -1e-9).all()
    np.testing.assert_allclose(out, brute_force_projection(g, G), atol=1e-6)
    ok = G.sum(0)  # no violation: unchanged
    np.testing.assert_array_equal(gem_project(torch.tensor(ok), torch.tensor(G)).numpy(), ok)


def test_agem_projection():
    g, r = torch.tensor([1.0, -2.0, 0.5]), torch.tensor([0.0, 1.0, 1.0])
    out = agem_project(g, r)
    assert float(out @ r) == pytest.approx(0.0, abs=1e-7)
    torch.testing.assert_close(out, g - (g @ r) / (r @ r) * r)
    torch.testing.assert_close(agem_project(-g, r), -g)  # ⟨g, r⟩ ≥ 0: unchanged


def test_lamaml_update_learns_rates_first():
    """La-MAML's update (α ← α − η∇α, then θ ← θ − max(α, 0) ⊙ ∇θ with the new α), through the learner."""
    w = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    task = ClassTask(0, torch.zeros(1, 1), torch.zeros(1, dtype=torch.long), torch.zeros(1, 1), torch.zeros(1, dtype=torch.long))
    learner = LaMAML([task], LearnerOptions(lamaml_lr=0.5, lamaml_clip=100.0), lambda: torch.nn.ParameterList([w]), "ce", head_loss(None))
    (a,) = learner.lrs
    with torch.no_grad():
        a.copy_(torch.tensor([0.1, 0.05]))
    learner.before_task(task)
    w.grad, a.grad = torch.tensor([1.0, -1.0]), torch.tensor([0.1, 0.2])
    learner.update()
    torch.testing.assert_close(a.detach(), torch.tensor([0.05, -0.05]))
    torch.testing.assert_close(w.detach(), torch.tensor([1.0 - 0.05, 2.0]))  # the negative rate clipped at 0


def test_lamaml_meta_loss_written_out():
    """La-MAML's meta-loss with the inner gradient clamped (the reference code discards its clamp)."""
    torch.manual_seed(0)
    x, labels = torch.randn(3, 4), torch.tensor([0, 2, 1])
    y = torch.stack([labels, torch.zeros_like(labels)], 1)
    task = ClassTask(0, x, labels, x, labels)
    learner = LaMAML([task], LearnerOptions(batch_size=1, lamaml_clip=1e-3, lamaml_alpha=0.2), lambda: torch.nn.Linear(4, 3), "ce", head_loss(None))
    W, c = (p.detach().clone().requires_grad_() for p in learner.model.parameters())
    value = learner.loss(x, y)
    gW, gc = torch.autograd.grad(torch.nn.functional.cross_entropy(x[:1] @ W.T + c, labels[:1]), (W, c))
    assert gW.abs().max() > 1e-2  # beyond the clamp
    fast = (W - gW.clamp(-1e-3, 1e-3) * 0.2, c - gc.clamp(-1e-3, 1e-3) * 0.2)
    assert float(value) == pytest.approx(float(torch.nn.functional.cross_entropy(x @ fast[0].T + fast[1], labels)), rel=1e-6)


def test_head_loss_is_cross_entropy_within_the_head():
    heads = torch.tensor([[True, True, False, False], [False, False, True, True]])
    logits = torch.randn(3, 4)
    y = torch.tensor([[1, 0], [2, 1], [3, 1]])
    expected = torch.stack([torch.nn.functional.cross_entropy(logits[i, heads[t]][None], torch.tensor([int(label) - 2 * int(t)])) for i, (label, t) in enumerate(y)]).mean()
    torch.testing.assert_close(head_loss(heads)(logits, y), expected)


def test_acc_and_bwt_on_a_hand_made_matrix():
    R = [[90.0, 10.0, 10.0], [70.0, 80.0, 10.0], [60.0, 50.0, 95.0]]
    assert backward_transfer(R) == pytest.approx(((60 - 90) + (50 - 80)) / 2)  # ÷ (T − 1), not T
    assert sum(R[-1]) / 3 == pytest.approx(205 / 3)


def test_accuracy_counts_every_test_sample():
    """A classifier right on the last test sample only scores 1/M (La-MAML's loop skipped it)."""
    model = torch.nn.Linear(2, 2)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
        model.bias.zero_()
    test_x = torch.tensor([[1.0, 0.0]] * 4 + [[0.0, 1.0]])
    task = ClassTask(0, test_x, torch.zeros(5, dtype=torch.long), test_x, torch.tensor([1, 1, 1, 1, 1]))
    learner = ONLINE_LEARNERS["sgd"]([task], LearnerOptions(), lambda: model, "ce", head_loss(None))
    assert accuracy(learner, task, None) == pytest.approx(20.0)
    heads = torch.tensor([[False, True]])  # within a head of class 1 only, everything is right
    assert accuracy(learner, task, heads) == pytest.approx(100.0)


@pytest.fixture(scope="module")
def three_tasks():
    return mnist_permutations(DATA / "mnist", tasks=3, per_task=300)


def test_replay_draws_only_past_tasks(three_tasks):
    opts = method_options("mnist-permutations", "er", 0, {"glances": 1})
    learner = ONLINE_LEARNERS["er"](three_tasks.tasks, opts, lambda: mlp(), "ce", head_loss(None))
    learn_task(learner, three_tasks.tasks[0], 30, progress=False)
    learn_task(learner, three_tasks.tasks[1], 30, progress=False)
    x, y = learner.batches(three_tasks.tasks[2])(1)
    assert len(x) == 20 and (y[:10, 1] == 2).all() and (y[10:, 1] < 2).all()
    assert set(learner.buffer.y[:, 1].tolist()) == {0, 1}  # a copy per task end, not an alias of the stream


def test_memory_methods_forget_less_than_sgd(three_tasks):
    """One pass over 3 permuted-MNIST tasks (300 samples each, the benchmark's settings otherwise): the
    methods with a memory keep far more of task 1 than online SGD."""
    first = {m: run_one(three_tasks, m, method_options("mnist-permutations", m, 0, {"mer_batches": 2}))["R"][-1][0] for m in ONLINE_LEARNERS if m != "ewc"}
    assert all(first[m] > first["sgd"] + 10 for m in first if m != "sgd"), first


def test_gem_memory_gradients_vmapped_equal_one_task_at_a_time(three_tasks):
    opts = method_options("mnist-permutations", "gem", 0, {"buffer_size": 30})
    learner = ONLINE_LEARNERS["gem"](three_tasks.tasks, opts, lambda: mlp(), "ce", head_loss(None))
    for task in three_tasks.tasks:
        learner.after_task(task)
    loop = torch.stack([learner.memory_gradient(x, y) for x, y in learner.memory.tasks])
    assert loop.shape == (3, 89_610)
    torch.testing.assert_close(learner.references(), loop, rtol=1e-5, atol=1e-7)


def test_emcl_default_readings_are_the_documented_ones():
    """docs/cl-bench.md names, for each open passage, its option and in bold the default reading."""
    import dataclasses
    import re
    from pathlib import Path

    from mclnf.learners.base import OnlineOptions

    doc = (Path(__file__).parents[2] / "docs" / "cl-bench.md").read_text()
    bullets = {m.group(1): m.group(2) for m in re.finditer(r"\(`--(emcl-[a-z-]+)`[^)]*\)(.*?)(?=\n\* |\n\n)", doc, re.S)}
    readings = ("emcl_eta", "emcl_r", "emcl_meta_rate", "emcl_scale", "emcl_gradient_step", "emcl_replay", "emcl_meta_grad")
    defaults = {f.name: f.default for f in dataclasses.fields(OnlineOptions)}
    for name in readings:
        text = bullets[name.replace("_", "-")]
        bold = re.search(r"\*\*(.+?)\*\*", text).group(1)
        value = defaults[name]
        assert (f"{value:g}" if isinstance(value, float) else f"`{value}`") in bold, (name, bold)
