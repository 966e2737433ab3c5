"""The one training loop: batch order, evaluation schedule, the optimizer protocol, divergence."""

import pytest
import torch

from mclnf.errors import DivergedError
from mclnf.optim import build_optimizer, needs_create_graph
from mclnf.sampling import EpochSampler
from mclnf.train import log_spaced_steps, train


def test_log_spaced_steps():
    assert log_spaced_steps(5000) == [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 5000]
    assert log_spaced_steps(8) == [1, 2, 4, 8]
    assert log_spaced_steps(1) == [1]


def test_epoch_sampler_visits_every_sample_once_per_epoch():
    coords = torch.arange(103, dtype=torch.float32)[:, None]
    s = EpochSampler(coords, coords * 2, batch_size=10, seed=3)
    assert s.per_epoch == 10  # the last partial batch (3 samples) is dropped
    epoch = torch.cat([s(step)[0] for step in range(1, 11)]).flatten()
    assert len(epoch) == 100 and len(set(epoch.tolist())) == 100
    x, y = s(4)
    torch.testing.assert_close(y, 2 * x)
    second = torch.cat([s(step)[0] for step in range(11, 21)]).flatten()
    assert not torch.equal(epoch, second)  # a new order every epoch


def test_epoch_sampler_depends_only_on_seed_and_step():
    coords = torch.randn(1000, 2)
    a, b = EpochSampler(coords, coords, 64, seed=0), EpochSampler(coords, coords, 64, seed=0)
    for step in (1, 2, 40, 17):  # any order of calls, as after a resume
        assert torch.equal(a(step)[0], b(step)[0])
    assert not torch.equal(a(1)[0], EpochSampler(coords, coords, 64, seed=1)(1)[0])


def test_full_batch_when_batch_exceeds_signal():
    coords = torch.randn(5, 2)
    x, _ = EpochSampler(coords, coords, 512, seed=0)(7)
    assert torch.equal(x, coords)


def _regression():
    torch.manual_seed(0)
    x = torch.randn(256, 4)
    y = x @ torch.tensor([[1.0], [-2.0], [0.5], [3.0]])
    model = torch.nn.Linear(4, 1)
    return model, x, y


def test_train_reduces_loss_and_reports_evaluations_with_training_time():
    model, x, y = _regression()
    opt = build_optimizer("adam", model, 0.05)
    seen = []
    elapsed = train(opt, lambda a, b: (model(a) - b).square().mean(), EpochSampler(x, y, 32, 0), 200,
                    eval_steps=log_spaced_steps(200), on_eval=lambda *e: seen.append(e), progress=False)
    assert [s for s, _, _ in seen] == log_spaced_steps(200)
    assert seen[-1][1] < 1e-3 * seen[0][1]
    times = [t for _, _, t in seen]
    assert times == sorted(times) and times[-1] == elapsed > 0


class _HessianAwareSGD(torch.optim.SGD):
    """A real optimizer that uses the protocol: it asks for a differentiable gradient and checks it got one."""

    def needs_create_graph(self):
        return True

    def step(self, closure=None):
        for g in self.param_groups:
            for p in g["params"]:
                assert p.grad.requires_grad, "the loop did not honour needs_create_graph"
        return super().step(closure)


def test_loop_honours_needs_create_graph():
    model, x, y = _regression()
    opt = _HessianAwareSGD(model.parameters(), lr=0.01)
    assert needs_create_graph(opt) and not needs_create_graph(torch.optim.Adam(model.parameters()))
    train(opt, lambda a, b: (model(a) - b).square().mean(), EpochSampler(x, y, 32, 0), 3, progress=False)
    assert all(p.grad is None for p in model.parameters())  # the graph-holding gradients are released


def test_divergence_stops_before_a_non_finite_update():
    model, x, y = _regression()
    opt = build_optimizer("sgd", model, 10.0)  # far beyond 2/L: diverges
    good = []

    def on_eval(step, loss, t):
        good.append({k: v.clone() for k, v in model.state_dict().items()})

    with pytest.raises(DivergedError, match=r"loss became (nan|inf) at step \d+.*last good checkpoint \(step \d+\)") as e:
        train(opt, lambda a, b: (model(a) - b).square().mean(), EpochSampler(x, y, 32, 0), 10_000,
              eval_steps=range(1, 10_001), on_eval=on_eval, progress=False)
    assert e.value.last_good_step == e.value.step - 1
    assert all(torch.isfinite(v).all() for v in good[-1].values())
