"""The occupancy grid (empty-space skipping): cell indexing, the masked field, the refresh rule, rendering
equal to the full renderer where the skipped cells are empty, and ``mclnf fit --occupancy-grid``."""

import json
import math

import pytest
import torch
import torch.nn.functional as F
from conftest import DATA, cli, one_line

from mclnf.signals import load_signal
from mclnf.signals.occupancy_grid import DECAY, OccupancyGrid

LEGO = DATA / "nerf" / "lego_100.npz"
SMALL = ("--resize", "16", "--samples", "8", "--width", "32", "--depth", "3", "--quiet")


@pytest.fixture(scope="module")
def lego():
    return load_signal(LEGO, resize=16, samples=32)


def ball(inputs: torch.Tensor, radius: float = 0.3) -> torch.Tensor:
    """A field: dense (σ = softplus(20) ≈ 20) inside a ball of the field's input cube, empty (σ ≈ 1e-13) outside; colour from the position."""
    inside = inputs[:, :3].norm(dim=-1) < radius
    sigma = torch.where(inside, 20.0, -30.0)
    return torch.cat([sigma[:, None], inputs[:, :3] * 3], -1)


def test_cells_index_x_fastest_and_mark_outside(lego):
    grid = OccupancyGrid(lego.layout, 4)
    x = torch.tensor([[-1.0, -1.0, -1.0], [-0.26, -1.0, -1.0], [-1.0, -0.49, -1.0], [0.99, 0.99, 0.99], [1.0, 0.0, 0.0], [0.0, -1.01, 0.0]])
    # cell (i, j, k) = floor((x + 1) · 4/2) per axis → i + 4 j + 16 k; the upper face x = 1 is outside
    assert grid.cells(x).tolist() == [0, 1, 4, 63, -1, -1]


def test_skip_evaluates_only_occupied_cells_and_blanks_the_rest(lego):
    grid = OccupancyGrid(lego.layout, 2)
    grid.occupied = torch.tensor([True, False] * 4)  # cells with i = 0 (x < 0) occupied
    calls = []

    def field(inputs):
        calls.append(len(inputs))
        return inputs[:, :4] * 2

    x = torch.tensor([[-0.5, 0.1, 0.2, 0.3, 0.4], [0.5, 0.1, 0.2, 0.3, 0.4], [2.0, 0.0, 0.0, 0.1, 0.1]])  # occupied, empty, outside the cube
    out = grid.skip(field)(x)
    assert calls == [2]
    assert torch.equal(out[0], x[0, :4] * 2) and torch.equal(out[2], x[2, :4] * 2)
    assert out[1].tolist() == list(lego.layout.blank)


def test_a_chunk_of_empty_space_calls_no_field(lego):
    grid = OccupancyGrid(lego.layout, 2)
    grid.occupied[:] = False

    def field(inputs):
        raise AssertionError("the field must not be called")

    out = grid.skip(field)(torch.full((3, 5), -0.5))
    assert out.tolist() == [list(lego.layout.blank)] * 3


def test_refresh_is_the_decayed_maximum_of_sampled_opacity(lego):
    grid = OccupancyGrid(lego.layout, 16, warmup=1000)
    grid.steps = 16
    grid.density.fill_(0.005)
    grid.refresh(ball)
    sigma_inside = F.softplus(torch.tensor(20.0)).item()
    r = 16
    centres = (torch.stack(torch.meshgrid(*[torch.arange(r)] * 3, indexing="ij"), -1).flip(-1).reshape(-1, 3) + 0.5) * (2 / r) - 1
    deep = centres.norm(dim=-1) < 0.3 - math.sqrt(3) / r  # cells wholly inside the ball
    far = centres.norm(dim=-1) > 0.3 + math.sqrt(3) / r  # wholly outside
    assert torch.allclose(grid.density[deep], torch.tensor(sigma_inside * grid.spacing))
    assert torch.allclose(grid.density[far], torch.tensor(0.005 * DECAY))  # decayed; the new sample's σδ ≈ 1e-14 is smaller
    assert grid.spacing == pytest.approx(2 * lego.layout.bound / 32)
    assert grid.occupied[deep].all() and not grid.occupied[far].any()  # threshold min(0.01, mean): 0.01 here


def test_rendering_with_skipping_equals_the_full_renderer_where_skipped_cells_are_empty(lego):
    r = 16
    grid = OccupancyGrid(lego.layout, r)
    lower = torch.stack(torch.meshgrid(*[torch.arange(r)] * 3, indexing="ij"), -1).flip(-1).reshape(-1, 3) * (2 / r) - 1
    nearest = torch.minimum(torch.maximum(torch.zeros(3), lower), lower + 2 / r)  # each cell's point nearest the ball's centre
    grid.occupied = nearest.norm(dim=-1) < 0.3  # exactly the cells the ball reaches into
    assert 0 < grid.fraction < 0.05
    rays = lego.eval_coords[::7][:2000]
    full = lego.layout.render(ball, rays, jitter=False)
    skipped = lego.layout.render(grid.skip(ball), rays, jitter=False)
    assert full["acc"].max() > 0.9  # some rays do hit the ball
    for key in ("rgb", "depth", "acc"):
        torch.testing.assert_close(skipped[key], full[key], atol=1e-6, rtol=0)


def test_fit_with_a_grid_records_it_and_resumes_exactly(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    grid = ("--occupancy-grid", "16", "--steps", "40", "--eval-every", "20")
    assert cli("fit", LEGO, *SMALL, *grid, "--out", a) == 0
    record = json.loads((a / "metrics.json").read_text())
    assert record["config"]["occupancy_grid"] == 16
    assert [p["step"] for p in record["curve"]] == [20, 40] and all(0 < p["occupied"] <= 1 for p in record["curve"])
    assert cli("fit", LEGO, *SMALL, *grid[:2], "--steps", "20", "--eval-every", "20", "--out", b) == 0
    assert cli("fit", LEGO, *SMALL, *grid, "--out", b, "--resume") == 0
    assert json.loads((b / "metrics.json").read_text())["final"] == record["final"]


def test_a_grid_for_anything_but_a_scene_is_refused(tmp_path, capsys):
    image = DATA / "kodak" / "kodim01.png"
    assert cli("fit", image, "--occupancy-grid", "64", "--out", tmp_path / "x") == 2
    assert one_line(capsys.readouterr().err) == f"mclnf fit: error: --occupancy-grid: does not apply to image signals ({image})"
    assert cli("fit", LEGO, *SMALL, "--occupancy-grid", "1", "--out", tmp_path / "y") == 2
    assert "--occupancy-grid 1: the grid's resolution must be between 2 and 512" in capsys.readouterr().err
    assert not (tmp_path / "y").exists()
