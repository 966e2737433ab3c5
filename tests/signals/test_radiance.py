"""Rays, volume rendering and radiance signals on the real lego scene."""

import math

import pytest
import torch
from conftest import DATA

from mclnf.errors import MclnfError
from mclnf.fields import Field, FieldConfig
from mclnf.losses import mse
from mclnf.signals import load_signal
from mclnf.signals.radiance import axes_center, look_at
from mclnf.signals.rays import box_segment, camera_rays, cell_borders, composite, sample_pdf, stratified
from mclnf.signals.tasks import route, split_signal

LEGO = DATA / "nerf" / "lego_100.npz"


def test_camera_rays_match_hand_computed_rays():
    # a camera at (1, 2, 3) turned 90° about the world z axis: camera x → world y, camera y → world −x, camera z → world z
    c2w = torch.tensor([[0.0, -1, 0, 1], [1, 0, 0, 2], [0, 0, 1, 3], [0, 0, 0, 1]])
    origins, dirs = camera_rays(2, 4, 2.0, c2w)  # H = 2, W = 4, f = 2
    assert origins.shape == dirs.shape == (8, 3)
    assert torch.equal(origins, torch.tensor([1.0, 2, 3]).expand(8, 3))
    # pixel (row 0, column 0): camera direction ((0.5 − 2)/2, −(0.5 − 1)/2, −1) = (−0.75, 0.25, −1)
    # world = R @ d = (−0.25, −0.75, −1)
    assert torch.allclose(dirs[0], torch.tensor([-0.25, -0.75, -1.0]))
    # pixel (row 1, column 3): ((3.5 − 2)/2, −(1.5 − 1)/2, −1) = (0.75, −0.25, −1) → (0.25, 0.75, −1)
    assert torch.allclose(dirs[7], torch.tensor([0.25, 0.75, -1.0]))
    # row-major order: pixel (row 0, column 1) is ray 1
    assert torch.allclose(dirs[1], torch.tensor([-0.25, -0.25, -1.0]))


def test_identity_camera_looks_down_minus_z_through_pixel_centres():
    _, dirs = camera_rays(3, 3, 1.0, torch.eye(4))
    assert torch.allclose(dirs[4], torch.tensor([0.0, 0.0, -1.0]))  # the centre pixel
    assert torch.allclose(dirs[0], torch.tensor([-1.0, 1.0, -1.0]))  # top left: up and to the left


def test_box_segment_clips_to_the_cube_and_to_near_far():
    o = torch.tensor([[0.0, 0.0, 5.0], [0.0, 0.0, 5.0], [3.0, 0.0, 5.0]])
    d = torch.tensor([[0.0, 0.0, -1.0], [0.0, 0.0, -2.0], [0.0, 0.0, -1.0]])
    t0, t1 = box_segment(o, d, torch.zeros(3), 1.0, near=0.0, far=100.0)
    assert torch.allclose(t0[:2], torch.tensor([4.0, 2.0])) and torch.allclose(t1[:2], torch.tensor([6.0, 3.0]))
    assert t0[2] == t1[2]  # misses the cube: an empty segment
    t0, t1 = box_segment(o[:1], d[:1], torch.zeros(3), 1.0, near=4.5, far=5.5)
    assert float(t0) == 4.5 and float(t1) == 5.5


def test_compositing_weights_sum_to_at_most_one_and_match_the_product_formula():
    torch.manual_seed(0)
    sigma = torch.rand(5, 16, dtype=torch.float64) * 3
    t = torch.sort(torch.rand(5, 16, dtype=torch.float64) * 4 + 2).values
    delta = cell_borders(t, torch.full((5,), 2.0, dtype=torch.float64), torch.full((5,), 6.0, dtype=torch.float64)).diff(dim=-1)
    norm = torch.rand(5, dtype=torch.float64) + 0.5
    rgb = torch.rand(5, 16, 3, dtype=torch.float64)
    out = composite(sigma, rgb, t, delta, norm, background=1.0)
    assert torch.allclose(delta.sum(-1), torch.full((5,), 4.0, dtype=torch.float64))  # the cells tile [t0, t1]
    alpha = 1 - torch.exp(-sigma * delta * norm[:, None])
    T = torch.cumprod(torch.cat([torch.ones(5, 1, dtype=torch.float64), 1 - alpha[:, :-1]], 1), 1)
    assert torch.allclose(out["w"], T * alpha, atol=1e-12)
    assert bool((out["acc"] <= 1).all()) and bool((out["w"] >= 0).all())
    assert torch.allclose(out["acc"], 1 - torch.prod(1 - alpha, 1), atol=1e-12)
    assert torch.allclose(out["rgb"], (out["w"][..., None] * rgb).sum(1) + (1 - out["acc"])[:, None], atol=1e-12)


def test_a_single_opaque_sample_gives_its_colour_and_depth():
    sigma = torch.zeros(1, 8, dtype=torch.float64)
    sigma[0, 3] = 1e6
    rgb = torch.rand(1, 8, 3, dtype=torch.float64)
    t = torch.linspace(2, 6, 8, dtype=torch.float64)[None]
    out = composite(sigma, rgb, t, torch.full_like(t, 0.5), torch.ones(1, dtype=torch.float64))
    assert torch.allclose(out["rgb"][0], rgb[0, 3], atol=1e-12)
    assert float(out["depth"][0]) == pytest.approx(float(t[0, 3]), abs=1e-12)
    assert float(out["acc"][0]) == pytest.approx(1.0, abs=1e-12)
    empty = composite(torch.zeros(1, 8, dtype=torch.float64), rgb, t, torch.full_like(t, 0.5), torch.ones(1, dtype=torch.float64), background=1.0)
    assert torch.equal(empty["rgb"], torch.ones(1, 3, dtype=torch.float64))  # nothing there: the white background


def test_stratified_samples_lie_in_their_strata():
    t0, t1 = torch.tensor([2.0, 3.0]), torch.tensor([6.0, 3.5])
    t = stratified(t0, t1, 4, jitter=True)
    width = (t1 - t0) / 4
    lo = t0[:, None] + width[:, None] * torch.arange(4)
    assert bool(((t >= lo) & (t <= lo + width[:, None])).all())
    assert torch.allclose(stratified(t0, t1, 4, jitter=False), lo + width[:, None] / 2)


def test_hierarchical_samples_follow_the_weights():
    torch.manual_seed(0)
    borders = torch.linspace(0, 4, 5)[None]  # four cells of width 1
    weights = torch.tensor([[0.0, 0.0, 1.0, 0.0]])
    t = sample_pdf(borders, weights, 1000, jitter=True)
    inside = ((t >= 2) & (t <= 3)).float().mean()
    assert float(inside) > 0.99  # the only cell with weight (the 1e-5 floor leaves the rest ≈ 0)
    assert bool((t.diff(dim=-1) >= 0).all())


def test_axes_center_and_look_at():
    # cameras on a circle looking at (1, 2, 3): their axes meet there
    target = torch.tensor([1.0, 2.0, 3.0])
    poses = torch.stack([look_at(target + 4 * torch.tensor([math.cos(a), math.sin(a), 0.5]), target, torch.tensor([0.0, 0.0, 1.0])) for a in (0.0, 2.0, 4.0)])
    assert torch.allclose(axes_center(poses), target, atol=1e-4)
    _, dirs = camera_rays(1, 1, 1.0, poses[0])
    assert torch.allclose(torch.nn.functional.normalize(dirs[0], dim=0), torch.nn.functional.normalize(target - poses[0, :3, 3], dim=0), atol=1e-6)


@pytest.fixture(scope="module")
def lego():
    return load_signal(LEGO, resize=50, samples=32, scene_bound=1.5, holdout=5)  # every 5th view: each quadrant holds some


def test_lego_loads_as_rays_and_pixels(lego):
    L = lego.layout
    assert (L.height, L.width, L.in_dim, L.out_dim) == (50, 50, 5, 4)
    assert lego.coords.shape == (80 * 2500, 6) and lego.eval_coords.shape == (20 * 2500, 6)
    assert L.focal == pytest.approx(138.8889 / 2, rel=1e-4)
    # NeRF-synthetic cameras look at the origin from about 4 units away: the centre is the origin
    assert max(abs(c) for c in L.center) < 1e-3
    # every training ray's camera is outside the 1.5 box
    assert bool((L.locate(lego.coords).abs().amax(1) > 1).all())


def test_a_short_fit_on_real_lego_views_lowers_the_photometric_loss(lego):
    torch.manual_seed(0)
    field = Field(FieldConfig(in_dim=5, out_dim=4, width=64, depth=4, activation="relu-pe", pe_frequencies=6))
    opt = torch.optim.Adam(field.parameters(), lr=5e-3)
    views = lego.coords[: 4 * 2500], lego.values[: 4 * 2500]  # four real views
    probe = torch.randperm(len(views[0]), generator=torch.Generator().manual_seed(1))[:2000]
    with torch.no_grad():
        before = float(mse(lego.layout.observe(field, views[0][probe]), views[1][probe]))
    g = torch.Generator().manual_seed(0)
    for _ in range(150):
        idx = torch.randint(len(views[0]), (512,), generator=g)
        opt.zero_grad()
        mse(lego.layout.observe(field, views[0][idx]), views[1][idx]).backward()
        opt.step()
    with torch.no_grad():
        after = float(mse(lego.layout.observe(field, views[0][probe]), views[1][probe]))
    assert after < 0.5 * before, (before, after)
    assert after < 0.03


def test_space_split_groups_views_by_camera_and_routes_samples_to_their_block(lego):
    tasks = split_signal(lego, "space", 4, grid=(2, 2, 1))
    L = lego.layout
    assert sum(len(t) for t in tasks) == len(lego)
    for t in tasks:
        assert len(t) % 2500 == 0 and len(t.eval_values) % 2500 == 0  # whole views
        cam = L.locate(t.coords)
        (x0, x1), (y0, y1), _ = t.region
        assert bool(((cam[:, 0] > x0 - 1e-6) | (x0 == -1)).all() and ((cam[:, 0] <= x1) | (x1 == 1)).all())
        assert bool(((cam[:, 1] > y0 - 1e-6) | (y0 == -1)).all() and ((cam[:, 1] <= y1) | (y1 == 1)).all())
    # samples along a ray: each goes to exactly the module of the block that holds it
    o, d = lego.coords[:64, :3], lego.coords[:64, 3:]
    t = torch.linspace(L.near, L.far, 50)
    points = L.field_inputs(o[:, None] + t[None, :, None] * d[:, None], d[:, None].expand(-1, 50, -1)).reshape(-1, 5)
    inside = points[:, :3].abs().amax(1) <= 1
    idx = route(points[inside, :3], tasks)
    expected = (points[inside, 0] > 0).long() * 2 + (points[inside, 1] > 0).long()  # C order of the (2, 2, 1) grid, x slowest
    assert torch.equal(idx, expected)


def test_radiance_errors_name_the_option():
    with pytest.raises(MclnfError, match="--samples 1"):
        load_signal(LEGO, samples=1)
    with pytest.raises(MclnfError, match="--scene-bound -1"):
        load_signal(LEGO, scene_bound=-1.0)
    with pytest.raises(MclnfError, match="held-out views"):
        split_signal(load_signal(LEGO, resize=10, holdout=50), "space", 4, grid=(2, 2, 1))  # 2 held-out views for 4 blocks


def test_modular_space_blocks_learn_alone_and_the_others_stay_bit_exact(lego):
    from mclnf.learners import CONTINUAL_LEARNERS, LearnerOptions
    from mclnf.train import learn_task

    tasks = split_signal(lego, "space", 4, grid=(2, 2, 1))
    config = FieldConfig(in_dim=5, out_dim=4, width=32, depth=3, activation="relu-pe", pe_frequencies=4)
    learner = CONTINUAL_LEARNERS["modular"].for_signal(lego, tasks, config, LearnerOptions(lr=1e-3, batch_size=64))
    learn_task(learner, tasks[0], 3, progress=False)
    learn_task(learner, tasks[1], 3, progress=False)
    after_two = {k: v.detach().clone() for k, v in learner.model.state_dict().items()}
    # the rays of task 2 cross every block, but only its module may move
    learn_task(learner, tasks[2], 3, progress=False)
    now = learner.model.state_dict()
    for k, v in after_two.items():
        assert torch.equal(now[k][:2], v[:2]), k  # modules 0 and 1: bit-exact
    assert not torch.equal(now["layers.0.weight"][2], learner.init.layers[0].weight.reshape(now["layers.0.weight"][2].shape))
    # a block no task has reached renders as empty space: a ray through it alone shows the white background
    assert learner.model.num_modules == 3
    ray = torch.tensor([[0.75, 0.75, 4.0, 0.0, 0.0, -1.0]])  # down the z axis inside block 3 (x > 0, y > 0)
    with torch.no_grad():
        assert torch.allclose(learner.forward(ray)[0], torch.ones(3), atol=1e-6)
        assert not torch.allclose(learner.forward(ray * torch.tensor([-1.0, -1, 1, 1, 1, 1]))[0], torch.ones(3), atol=1e-3)  # block 0: learned
