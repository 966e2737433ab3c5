"""Meta-learning on a scene's blocks of views (lego): the dataset, the meta-gradient through volume
rendering (float64, against finite differences), the FIM weights of rays, and the CLI end to end."""

import dataclasses

import pytest
import torch
from conftest import DATA, cli
from torch.func import functional_call, grad, vmap

from mclnf.fields import FieldConfig
from mclnf.learners import MetaOptions, meta_method
from mclnf.losses import PER_SAMPLE, fim_weights
from mclnf.signals.datasets import load_dataset

LEGO = DATA / "nerf" / "lego_100.npz"


@pytest.fixture(scope="module")
def blocks():
    return load_dataset(str(LEGO), {"resize": 6, "samples": 6, "scene_bound": 1.5}, block_views=4)


def test_a_scene_is_cut_into_blocks_of_adjacent_views_split_70_30(blocks):
    assert len(blocks.train) + len(blocks.test) == 87 // 4  # 87 training views (every 8th held out), 21 whole blocks
    assert len(blocks.test) == round(0.3 * 21)
    assert not set(blocks.train_files) & set(blocks.test_files)
    L = blocks.layout
    assert L.block_views == 4 and all(s.layout == L for s in blocks.train + blocks.test)
    for s in blocks.train:
        assert s.coords.shape == (4 * 36, 6) and s.eval_coords is s.coords  # a block is judged on its own views
    # adjacent in azimuth: any two cameras of a block are less than a quarter turn apart
    up = torch.tensor(L.up)
    for s in blocks.train:
        cams = L.locate(s.coords[::36])
        flat = torch.nn.functional.normalize(cams - (cams @ up)[:, None] * up, dim=1)
        assert float((flat @ flat.T).min()) > 0


def make(layout, **opts):
    field = FieldConfig(5, 4, width=8, depth=3, activation="gaussian", sigma=0.5)
    m = meta_method(dataclasses.replace(layout, jitter=False), field, MetaOptions(**{"inner_steps": 2, "inner_lr": 0.05, "tasks": 2, **opts}))
    m.template.double()
    return m, {k: v.double().requires_grad_() for k, v in m.init_params(0).items()}


@pytest.mark.parametrize("method", ["mol", "mcl-nf"])
def test_second_order_meta_gradient_through_rendering_matches_finite_differences(blocks, method):
    m, theta = make(blocks.layout, method=method, task_batch=10)
    values = blocks.values("train")[:2].double()
    coords = blocks.coords("train")[:2].double()
    subset = m.task_subset(0, 1)
    assert subset.shape == (2, 10)
    count = 2 * (2 if method == "mcl-nf" else 1)
    obj, _, _ = m.objective(theta, values, count, coords=coords, subset=subset)
    g = torch.autograd.grad(obj, list(theta.values()))
    torch.manual_seed(1)
    v = [torch.randn_like(p) for p in theta.values()]
    eps = 1e-5

    def value(sign):
        shifted = {k: (p + sign * eps * d).detach() for (k, p), d in zip(theta.items(), v)}
        return float(m.objective(shifted, values, count, coords=coords, subset=subset)[0])

    fd = (value(1) - value(-1)) / (2 * eps)
    analytic = sum(float((gi * d).sum()) for gi, d in zip(g, v))
    assert analytic == pytest.approx(fd, rel=1e-6, abs=1e-10)


def test_task_subsets_are_distinct_real_samples_fixed_by_seed_and_step(blocks):
    m, _ = make(blocks.layout, task_batch=50)
    a, b = m.task_subset(0, 3), m.task_subset(0, 3)
    assert torch.equal(a, b) and not torch.equal(a, m.task_subset(0, 4))
    counts = m.mask.sum(1).long()
    for t in range(2):
        assert len(set(a[t].tolist())) == 50 and int(a[t].max()) < int(counts[t])
    assert make(blocks.layout, task_batch=10_000)[0].task_subset(0, 1) is None  # a batch larger than the tasks: all samples


def test_fim_weights_of_rays_match_brute_force_per_ray_gradients(blocks):
    m, theta = make(blocks.layout)
    params = {k: v.detach() for k, v in theta.items()}
    rays, target = blocks.train[0].coords[:12].double(), blocks.train[0].values[:12].double()
    layout = m.layout
    # per-ray gradients, one ray at a time
    ell = lambda p, r, y: PER_SAMPLE["mse"](layout.observe(lambda x: functional_call(m.template, p, (x,)), r[None]), y[None])[0]  # noqa: E731
    per_ray = vmap(grad(ell), in_dims=(None, 0, 0))(params, rays, target)
    damping, q, P = 1e-3, 0.0, 0
    # per layer, [weight | bias] columns (the bias's input is 1), as fim_weights forms them
    for i in range(3):
        g = torch.cat([per_ray[f"layers.{i}.weight"], per_ray[f"layers.{i}.bias"][..., None]], -1).square()  # (N, out, in + 1)
        f = g.mean(0)
        f = f + damping * f.mean() + torch.finfo(f.dtype).tiny
        q = q + (g / f).sum((1, 2))
        P += f.numel()
    want = 1 + 2.0 * q / P
    # the same from one forward with taps
    S = layout.samples
    taps = [params[f"layers.{i}.bias"].expand(12 * S, -1) for i in range(len(m.template.layers))]  # per-sample biases

    def losses(taps):
        box = []
        pred = layout.observe(lambda x: (out := functional_call(m.template, params, (x,), {"taps": taps}), box.append(out[1]))[0][0], rays)
        e = PER_SAMPLE["mse"](pred, target)
        return e, box[0]

    _, back, inputs = torch.func.vjp(losses, taps, has_aux=True)
    deltas = back(torch.ones(12, dtype=torch.float64))[0]
    got = fim_weights(inputs, deltas, 2.0, "diagonal", group=S)
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)
    assert float(got.mean()) == pytest.approx(1 + 2.0, rel=1e-2)  # mean w ≈ 1 + λ (exact undamped)


def test_meta_train_and_meta_test_a_scene_from_the_cli(tmp_path, capsys):
    run = tmp_path / "run"
    common = ["--resize", "8", "--samples", "8", "--block-views", "6", "--width", "16", "--depth", "3", "--tasks", "2"]
    assert cli("meta-train", LEGO, *common, "--method", "mcl-nf-fim", "--meta-grad", "emcl", "--outer-steps", "4", "--meta-batch", "2", "--task-batch", "32", "--out", run, "--quiet") == 0
    record = __import__("json").loads((run / "meta_train.json").read_text())
    assert record["kind"] == "radiance" and record["signals"] == {"train": 10, "test": 4}
    assert record["config"]["task_batch"] == 32 and record["config"]["activation"] == "relu-pe"
    capsys.readouterr()
    assert cli("meta-test", run, LEGO, "--steps", "1", "2", "--signals", "1", "--baselines", "cl", "--batch-size", "64", "--quiet") == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| mcl-nf-fim (emcl) |") or line.startswith("| cl |")]
    assert len(rows) == 4  # Table 1 and the compute table
    psnr = float(rows[0].split("|")[2])
    assert 5 < psnr < 40
    assert (run / "meta-test" / "cl_step2.png").is_file() and (run / "meta-test" / "table.md").is_file()
