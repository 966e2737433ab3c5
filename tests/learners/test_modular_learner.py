"""The one modular learner: from a random or a meta-learned initialization, a one-region task trained as a
standalone field gives what the masked modular field gives, and modules start from the shared θ₀."""

import torch
from conftest import DATA

from mclnf.fields import Field, FieldConfig
from mclnf.learners import LearnerOptions
from mclnf.learners.modular import Modular
from mclnf.signals.image import load_image
from mclnf.signals.tasks import split_signal
from mclnf.train import learn_task

FACE = DATA / "celeba_align" / "000001.jpg"
CONFIG = FieldConfig(2, 3, width=32, depth=3)


def stream():
    signal = load_image(FACE, crop=(178, 178), resize=32)
    return signal, split_signal(signal, "patches", 4)


def test_a_module_trained_alone_equals_the_masked_modular_field():
    signal, tasks = stream()
    opts = LearnerOptions(optimizer="sgd", lr=0.1, batch_size=64, module_width=32)
    alone = Modular.for_signal(signal, tasks, CONFIG, opts)
    masked = Modular.for_signal(signal, tasks, CONFIG, opts)
    masked.points_routed = False  # as for scenes split in space: every task through the masked modular field
    for task in tasks[:3]:
        learn_task(alone, task, 20, progress=False)
        assert sum(p.numel() for g in alone.optimizer.param_groups for p in g["params"]) == Field(CONFIG).num_params  # one module's
        learn_task(masked, task, 20, progress=False)
        assert sum(p.numel() for g in masked.optimizer.param_groups for p in g["params"]) == (task.index + 1) * Field(CONFIG).num_params
    assert alone.model.num_modules == masked.model.num_modules == 3
    for k, v in alone.model.state_dict().items():
        torch.testing.assert_close(v, masked.model.state_dict()[k], rtol=1e-4, atol=1e-5)
    before = masked.model.module(0).state_dict()
    learn_task(masked, tasks[3], 5, progress=False)
    assert all(torch.equal(v, masked.model.module(0).state_dict()[k]) for k, v in before.items())  # masked modules stay bit-exact
    x = tasks[0].coords
    torch.testing.assert_close(alone.predict(x), alone.model.module(0)(x))  # strip 0's points go to module 0


def test_every_module_starts_from_the_meta_learned_init():
    signal, tasks = stream()
    torch.manual_seed(7)
    theta0 = Field(CONFIG).state_dict()
    learner = Modular.for_signal(signal, tasks, CONFIG, LearnerOptions(optimizer="sgd", lr=1e-2, batch_size=64, module_width=32), init=theta0)
    for task in tasks[:2]:
        learner.before_task(task)
        k, module = learner.alone
        assert k == task.index and all(torch.equal(v, theta0[n]) for n, v in module.state_dict().items())
        learn_task(learner, task, 3, progress=False)
    assert not torch.equal(learner.model.module(1).state_dict()["layers.0.weight"], theta0["layers.0.weight"])
    assert all(torch.equal(v, theta0[n]) for n, v in learner.init.state_dict().items())  # θ₀ itself never moves


def test_the_fim_loss_paper_form_accumulates_each_tasks_fisher_and_starts_afresh():
    """--fim-form paper: after k steps of a task its Fisher holds k batches' samples; the next task starts from none;
    the normalized form carries nothing."""
    signal, tasks = stream()
    paper = Modular.for_signal(signal, tasks, CONFIG, LearnerOptions(optimizer="sgd", lr=0.1, batch_size=64, fim_lambda=1.0, fim_form="paper"))
    learn_task(paper, tasks[0], 5, progress=False)
    assert float(paper.fisher_sums[-1]) == 5 * 64
    paper.before_task(tasks[1])
    assert paper.fisher_sums is None
    learn_task(paper, tasks[1], 2, progress=False)
    assert float(paper.fisher_sums[-1]) == 2 * 64
    normalized = Modular.for_signal(signal, tasks, CONFIG, LearnerOptions(optimizer="sgd", lr=0.1, batch_size=64, fim_lambda=1.0))
    learn_task(normalized, tasks[0], 3, progress=False)
    assert normalized.fisher_sums is None
