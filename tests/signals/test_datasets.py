"""Meta-learning datasets: the built-in ``skimage_patches`` against the photos it is cut from, and a folder of videos cut into clips."""

from pathlib import Path

import numpy as np
import skimage.data
import torch
from conftest import DATA

from mclnf.signals.datasets import PATCH_PHOTOS, load_dataset


def test_skimage_patches_are_every_tile_of_the_photos_split_by_photo():
    ds = load_dataset("skimage_patches", {})
    every = ds.train + ds.test
    expected = sum((np.asarray(getattr(skimage.data, p)()).shape[0] // 64) * (np.asarray(getattr(skimage.data, p)()).shape[1] // 64) for p in PATCH_PHOTOS)
    assert len(every) == expected == 664
    assert len({s.name for s in every}) == 664 and all(s.values.shape == (4096, 1) for s in every)
    photo = lambda s: s.name.split("@")[0]  # noqa: E731
    train_photos, test_photos = {photo(s) for s in ds.train}, {photo(s) for s in ds.test}
    assert not train_photos & test_photos and len(test_photos) == round(0.3 * len(PATCH_PHOTOS))  # 70/30 over photos, seeded
    assert len({photo(s) for s in ds.test[: len(test_photos)]}) == len(test_photos)  # the first held-out patches span the photos


def test_a_patch_is_its_tile_in_gray():
    """camera (gray) and astronaut (colour, ITU-R 601 luma as --gray), tile at row 64, column 128, brute force."""
    signals = {s.name: s for s in (lambda d: d.train + d.test)(load_dataset("skimage_patches", {}))}
    camera = skimage.data.camera()[64:128, 128:192].astype(np.float32) / 255
    astronaut = skimage.data.astronaut()[64:128, 128:192].astype(np.float32) / 255 @ np.array([0.299, 0.587, 0.114], np.float32)
    for name, tile in (("camera@64,128", camera), ("astronaut@64,128", astronaut)):
        torch.testing.assert_close(signals[name].values.reshape(64, 64), torch.from_numpy(tile), rtol=0, atol=1e-6)


def test_signals_sampled_alike_share_one_coordinate_grid():
    """2,000 faces at 180² would otherwise hold 2,000 equal grids (494 MiB); the values stay each signal's own."""
    ds = load_dataset("skimage_patches", {})
    every = ds.train + ds.test
    assert all(s.coords is every[0].coords and s.eval_coords is every[0].coords for s in every)
    assert len({s.values.data_ptr() for s in every}) == len(every)
    torch.testing.assert_close(every[0].coords[[0, -1]], torch.tensor([[-1.0, -1.0], [1.0, 1.0]]))


def test_held_out_clips_take_the_files_in_turn(tmp_path):
    """asl_gestures' Matroska files cut into 20-frame clips at the paper's 112 × 112 (480² centre crop): the first meta-test
    clips span the held-out files, so ``meta-test --signals N`` is not N clips of one file."""
    folder = DATA / "video" / "asl_gestures"
    (tmp_path / "train.txt").write_text("again.mkv\n")
    (tmp_path / "test.txt").write_text("bird.mkv\nbook.mkv\n")
    lists = (str(tmp_path / "train.txt"), str(tmp_path / "test.txt"))
    ds = load_dataset(str(folder), {"crop": (480, 480), "resize": 112}, lists=lists, clip=20)
    assert ds.layout.grid_shape == (20, 112, 112) and [Path(f).name for f in ds.test_files] == ["bird.mkv", "book.mkv"]
    clips = [Path(s.name).name for s in ds.test]
    assert clips == ["bird.mkv@0", "book.mkv@0", "bird.mkv@20", "book.mkv@20", "bird.mkv@40", "book.mkv@40", "book.mkv@60", "book.mkv@80"]  # 63 and 109 frames
    assert all(Path(s.name).name.startswith("again.mkv@") for s in ds.train)
