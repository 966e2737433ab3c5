"""Task streams: every split partitions its signal exactly, regions tile the domain, route agrees."""

import math

import numpy as np
import pytest
import torch
from conftest import DATA

from mclnf.errors import MclnfError
from mclnf.signals import Signal
from mclnf.signals.audio import load_audio
from mclnf.signals.image import ImageLayout, load_image
from mclnf.signals.occupancy import load_occupancy
from mclnf.signals.tasks import Task, route, split_signal
from mclnf.signals.video import load_video

FACE = DATA / "celeba_align" / "000001.jpg"


@pytest.fixture(scope="module")
def face180():
    """The paper's CelebA setup: a 178×178 centre crop padded by one zero pixel → 180×180."""
    s = load_image(FACE, crop=(178, 178))
    x = torch.nn.functional.pad(s.layout.to_array(s.values).permute(2, 0, 1), (1, 1, 1, 1)).permute(1, 2, 0)
    layout = ImageLayout(height=180, width=180, channels=3)
    return Signal("face180", layout, layout.coords(), x.reshape(-1, 3).contiguous())


@pytest.fixture(scope="module")
def odd_image():
    return load_image(FACE, resize=23)  # 23×19: odd both ways


@pytest.fixture(scope="module")
def video():
    return load_video(DATA / "video" / "bikes.mp4", frames=11, resize=16)


@pytest.fixture(scope="module")
def audio():
    return load_audio(DATA / "librispeech" / "198-209-0000.wav", duration=0.1)  # 1600 samples


@pytest.fixture(scope="module")
def bunny():
    return load_occupancy(DATA / "meshes" / "bunny_cr.obj", points=1500, eval_points=600, seed=0)


def check_partition(signal, tasks, eval_too=True):
    assert [t.index for t in tasks] == list(range(len(tasks)))
    idx = torch.cat([t.sample_index for t in tasks])
    assert torch.equal(idx.sort().values, torch.arange(len(signal))), "samples lost or duplicated"
    ev = torch.cat([t.eval_sample_index for t in tasks])
    assert torch.equal(ev.sort().values, torch.arange(len(signal.eval_coords)))
    for t in tasks:
        assert isinstance(t, Signal) and t.layout is signal.layout and t.name == f"{signal.name}#task{t.index}"
        assert t.sample_index.dtype == torch.long and t.eval_sample_index.dtype == torch.long
        assert torch.equal(t.coords, signal.coords[t.sample_index]) and torch.equal(t.values, signal.values[t.sample_index])
        assert torch.equal(t.eval_coords, signal.eval_coords[t.eval_sample_index])
        assert torch.equal(t.eval_values, signal.eval_values[t.eval_sample_index])
        plain = t.signal
        assert type(plain) is Signal and torch.equal(plain.coords, t.coords) and plain.name == t.name
        assert len(t.region) == signal.coords.shape[1]


def check_routing(signal, tasks):
    """Every task's own samples route to it, and the regions tile [-1, 1]^d (edges shared exactly)."""
    for t in tasks:
        assert torch.equal(route(t.coords, tasks), torch.full((len(t),), t.index))
        assert torch.equal(route(t.eval_coords, tasks), torch.full((len(t.eval_coords),), t.index))
        for (lo, hi), c in zip(t.region, t.coords.T.double()):
            assert lo < hi and ((c > lo) | (c == -1)).all() and (c <= hi).all()
    total = sum(np.prod([hi - lo for lo, hi in t.region]) for t in tasks)
    assert total == pytest.approx(2.0 ** signal.coords.shape[1])


@pytest.mark.parametrize("tasks", [1, 4, 5, 10])
def test_image_strips_partition_and_route(face180, odd_image, tasks):
    for s in (face180, odd_image):
        ts = split_signal(s, None, tasks)
        check_partition(s, ts)
        check_routing(s, ts)
        h, w = s.layout.height, s.layout.width
        widths = [len(t) // h for t in ts]
        assert all(len(t) == h * wd for t, wd in zip(ts, widths)) and sum(widths) == w and max(widths) - min(widths) <= 1


def test_paper_strips_are_180_by_45(face180):
    ts = split_signal(face180, "patches", 4)
    xs = torch.linspace(-1, 1, 180)
    for i, t in enumerate(ts):
        assert len(t) == 180 * 45
        assert torch.equal(t.coords[:, 0].unique(), xs[45 * i : 45 * (i + 1)])  # 45 consecutive columns
        assert torch.equal(t.coords[:, 1].unique(), xs)  # full height
        img = t.values.reshape(180, 45, 3)
        assert torch.equal(img, face180.layout.to_array(face180.values)[:, 45 * i : 45 * (i + 1)])
        assert t.region[1] == (-1.0, 1.0) and t.lattice is None
        assert t.eval_layout.grid_shape == (180, 45)  # SSIM of a strip is that of the 180×45 image
        assert t.metrics(t.values)["ssim"] == pytest.approx(1.0, abs=1e-4) and t.metrics(0.9 * t.values)["psnr"] == pytest.approx(-10 * math.log10((0.1 * t.values).square().mean().item()), abs=1e-3)
    assert ts[0].region[0][0] == -1 and ts[-1].region[0][1] == 1
    for a, b in zip(ts, ts[1:]):
        assert a.region[0][1] == b.region[0][0]  # shared border, no gap or overlap
        assert a.coords[:, 0].max() < a.region[0][1] < b.coords[:, 0].min()


@pytest.mark.parametrize("grid", [(2, 2), (3, 2), (2, 5), (5, 1), (1, 1)])
def test_image_patch_grids(odd_image, grid):
    rows, cols = grid
    ts = split_signal(odd_image, "patches", rows * cols, grid=grid)
    check_partition(odd_image, ts)
    check_routing(odd_image, ts)
    full = odd_image.layout.to_array(odd_image.values)
    hs = [len(t.coords[:, 1].unique()) for t in ts]
    ws = [len(t.coords[:, 0].unique()) for t in ts]
    assert max(hs) - min(hs) <= 1 and max(ws) - min(ws) <= 1
    # task r·cols + c is a rectangle: row block r, column block c
    r0 = 0
    for r in range(rows):
        c0 = 0
        for c in range(cols):
            t = ts[r * cols + c]
            h, w = hs[r * cols + c], ws[r * cols + c]
            assert torch.equal(t.values.reshape(h, w, -1), full[r0 : r0 + h, c0 : c0 + w])
            c0 += w
        r0 += h


@pytest.mark.parametrize("n", [180, 23])
def test_resolution_split_by_pixel_parity(n):
    s = load_image(FACE, crop=(178, 178), resize=n)
    full = s.layout.to_array(s.values)
    ts = split_signal(s, "resolution", 4)
    check_partition(s, ts)
    offsets = [((0, 2), (0, 2)), ((0, 2), (1, 2)), ((1, 2), (0, 2)), ((1, 2), (1, 2))]
    for t, lat in zip(ts, offsets):
        (a, _), (b, _) = lat
        assert t.lattice == lat and t.region == ((-1.0, 1.0), (-1.0, 1.0))
        sub = full[a::2, b::2]
        assert torch.equal(t.values.reshape(sub.shape), sub)
        for col in (0, 1):  # whole image at half resolution
            assert t.coords[:, col].min() <= -1 + 2 / (n - 1) + 1e-6 and t.coords[:, col].max() >= 1 - 2 / (n - 1) - 1e-6
    sizes = [len(t) for t in ts]
    if n % 2 == 0:
        assert sizes == [(n // 2) ** 2] * 4
    else:
        assert sizes == [12 * 12, 12 * 11, 11 * 12, 11 * 11]  # tasks differ by at most one row/column
    for t in ts:  # routing by lattice: every sample to its own task, its sub-image a real image for SSIM
        assert torch.equal(route(t.coords, ts), torch.full((len(t),), t.index))
        assert t.eval_layout.grid_shape == full[t.lattice[0][0] :: 2, t.lattice[1][0] :: 2].shape[:2]
        assert t.metrics(t.values)["psnr"] == float("inf") and t.metrics(t.values)["ssim"] == pytest.approx(1.0, abs=1e-4)


def test_resolution_split_general_square(odd_image):
    ts = split_signal(odd_image, "resolution", 9)
    check_partition(odd_image, ts)
    assert ts[5].lattice == ((1, 3), (2, 3))
    assert len(ts[0]) == 8 * 7 and len(ts[8]) == 7 * 6  # 23×19 with stride 3
    assert len(split_signal(odd_image, "resolution", 1)) == 1


@pytest.mark.parametrize("tasks", [1, 4, 5, 10, 11])
def test_video_time_chunks(video, tasks):
    ts = split_signal(video, None, tasks)
    check_partition(video, ts)
    check_routing(video, ts)
    frame = video.layout.height * video.layout.width
    frames = [len(t) // frame for t in ts]
    assert sum(frames) == 11 and max(frames) - min(frames) <= 1
    t_axis = torch.linspace(-1, 1, 11)
    start = 0
    for t, f in zip(ts, frames):
        assert torch.equal(t.coords[:, 2].unique(), t_axis[start : start + f])  # consecutive frames
        assert t.region[0] == (-1.0, 1.0) and t.region[1] == (-1.0, 1.0)
        assert t.eval_layout.grid_shape == (f, video.layout.height, video.layout.width)
        start += f


@pytest.mark.parametrize("tasks", [1, 4, 5, 10, 7])
def test_audio_time_segments(audio, tasks):
    ts = split_signal(audio, "time", tasks)
    check_partition(audio, ts)
    check_routing(audio, ts)
    assert torch.equal(torch.cat([t.sample_index for t in ts]), torch.arange(len(audio)))  # consecutive, in order
    sizes = [len(t) for t in ts]
    assert max(sizes) - min(sizes) <= 1
    assert [t.eval_layout.num_samples for t in ts] == sizes and all(t.eval_layout.sample_rate == 16000 for t in ts)


@pytest.mark.parametrize("tasks,grid", [(1, None), (4, None), (5, None), (10, None), (4, (2, 2, 1)), (8, (2, 2, 2)), (3, (1, 1, 3))])
def test_occupancy_space_blocks(bunny, tasks, grid):
    ts = split_signal(bunny, None, tasks, grid=grid)
    check_partition(bunny, ts)
    check_routing(bunny, ts)  # training and held-out points route to their own block
    g = grid or (tasks, 1, 1)
    for t in ts:
        for pts in (t.coords, t.eval_coords):  # every point lies in its block
            for (lo, hi), c in zip(t.region, pts.T.double()):
                assert ((c > lo) | (c == -1)).all() and (c <= hi).all()
        for a, (lo, hi) in enumerate(t.region):
            assert hi - lo == pytest.approx(2 / g[a])


def test_route_conventions():
    layout = ImageLayout(height=2, width=4, channels=1)
    s = Signal("tiny", layout, layout.coords(), torch.rand(8, 1))
    ts = split_signal(s, "patches", 2)
    border = ts[0].region[0][1]
    assert border == 0.0  # midpoint between x = -1/3 and x = 1/3
    probe = torch.tensor([[border, 0.0], [-1.0, -1.0], [1.0, 1.0], [-5.0, 0.0], [5.0, 3.0], [-1e-7, 0.0], [1e-7, 0.0]])
    assert route(probe, ts).tolist() == [0, 0, 1, 0, 1, 0, 1]  # border → lower index; outside → nearest
    assert route(torch.zeros(0, 2), ts).shape == (0,)
    with pytest.raises(MclnfError, match="dimension 2"):
        route(torch.zeros(3, 3), ts)
    with pytest.raises(MclnfError, match="no tasks"):
        route(probe, [])


def test_task_is_a_signal_the_loop_can_use(face180):
    t = split_signal(face180, "patches", 4)[2]
    assert isinstance(t, Task) and t.kind == "image" and len(t) == 180 * 45
    assert t.eval_coords is t.coords  # grids evaluate on their training samples
    assert t.signal.eval_values is t.signal.values


def test_errors_name_the_option(odd_image, video, audio, bunny):
    with pytest.raises(MclnfError, match="--split blocks: unknown split"):
        split_signal(odd_image, "blocks", 4)
    with pytest.raises(MclnfError, match="--split resolution: not applicable to audio.*time"):
        split_signal(audio, "resolution", 4)
    with pytest.raises(MclnfError, match="--split time: not applicable to image"):
        split_signal(odd_image, "time", 4)
    with pytest.raises(MclnfError, match="--split patches: not applicable to occupancy"):
        split_signal(bunny, "patches", 4)
    for bad in (0, -2):
        with pytest.raises(MclnfError, match=f"--tasks {bad}: must be an integer of at least 1"):
            split_signal(audio, None, bad)
    with pytest.raises(MclnfError, match="20 pieces along an axis of only 19 columns.*empty"):
        split_signal(odd_image, "patches", 20)
    with pytest.raises(MclnfError, match="12 pieces along an axis of only 11 frames.*empty"):
        split_signal(video, "time", 12)
    with pytest.raises(MclnfError, match="1601 pieces along an axis of only 1600 samples"):
        split_signal(audio, "time", 1601)
    with pytest.raises(MclnfError, match="--grid 2 3: 6 blocks but --tasks 4"):
        split_signal(odd_image, "patches", 4, grid=(2, 3))
    with pytest.raises(MclnfError, match="--grid 2 2 2: 8 blocks but --tasks 4"):
        split_signal(bunny, "space", 4, grid=(2, 2, 2))
    with pytest.raises(MclnfError, match=r"--grid 4: the patches split needs 2 positive integers \(rows, cols\)"):
        split_signal(odd_image, "patches", 4, grid=(4,))
    with pytest.raises(MclnfError, match="--grid 0 4 1: the space split needs 3"):
        split_signal(bunny, "space", 4, grid=(0, 4, 1))
    with pytest.raises(MclnfError, match="--grid 4: only the patches and space splits take a grid"):
        split_signal(audio, "time", 4, grid=(4,))
    with pytest.raises(MclnfError, match="--tasks 5: the resolution split needs a perfect square"):
        split_signal(odd_image, "resolution", 5)
    with pytest.raises(MclnfError, match="--tasks 400: stride 20 is larger than the image"):
        split_signal(odd_image, "resolution", 400)
    with pytest.raises(MclnfError, match="holds no training points.*--points"):
        split_signal(bunny, "space", 1000)
    few = Signal("few", bunny.layout, bunny.coords, bunny.values, bunny.eval_coords[:3], bunny.eval_values[:3])
    with pytest.raises(MclnfError, match=r"--tasks 8: block \d .* holds no held-out points.*--eval-points"):
        split_signal(few, "space", 8, grid=(2, 2, 2))
