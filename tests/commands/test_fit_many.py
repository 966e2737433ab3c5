"""``mclnf fit-many``: every signal of a folder fitted with stacked (vmap'd) fields — each field the one ``mclnf fit``
fits alone; the outputs and the summary; --resume and --overwrite; bad inputs (exit 2, one line naming the file,
nothing written); two torchrun processes sharing the folder."""

import contextlib
import csv
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import torch
from conftest import DATA, cli, one_line
from safetensors.torch import load_file

from mclnf.runs import load_field
from mclnf.stacked import stacks

FACES = sorted((DATA / "faces_utk").glob("*.jpg"))[:4]
SMALL = ("--resize", "12", "--width", "16", "--depth", "3", "--lr", "1e-3", "--batch-size", "64", "--seed", "3", "--precision", "fp32", "--quiet")


def faces(folder: Path, n: int = 3) -> Path:
    """A folder of the first ``n`` real faces."""
    folder.mkdir(parents=True, exist_ok=True)
    for f in FACES[:n]:
        shutil.copy(f, folder / f.name)
    return folder


def fields(folder: Path) -> dict[str, dict[str, torch.Tensor]]:
    return {p.parent.name: load_file(p) for p in sorted(folder.glob("*/field.safetensors"))}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """fit-many on 3 faces: (input folder, output folder, what it printed)."""
    root = tmp_path_factory.mktemp("fit-many")
    folder, out = faces(root / "faces"), root / "out"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert cli("fit-many", folder, *SMALL, "--steps", 30, "--out", out) == 0
    return folder, out, printed.getvalue()


def test_each_stacked_field_is_the_field_fit_fits_alone(run, tmp_path):
    folder, out, _ = run
    stacked = fields(out)
    assert sorted(stacked) == [f.stem for f in FACES[:3]]
    for f in sorted(folder.iterdir()):
        assert cli("fit", f, *SMALL, "--steps", 30, "--out", tmp_path / f.stem) == 0
        alone = load_file(tmp_path / f.stem / "field.safetensors")
        assert alone.keys() == stacked[f.stem].keys()
        for k in alone:
            torch.testing.assert_close(stacked[f.stem][k], alone[k], rtol=1e-4, atol=1e-5)
        a = json.loads((tmp_path / f.stem / "metrics.json").read_text())["final"]
        b = json.loads((out / f.stem / "metrics.json").read_text())["final"]
        assert abs(a["psnr"] - b["psnr"]) < 1e-3 and abs(a["ssim"] - b["ssim"]) < 1e-4
    # another cut into stacks (2 + 1) gives the same fields; the fields differ from one another (not one field copied)
    assert cli("fit-many", folder, *SMALL, "--steps", 30, "--signals-per-batch", 2, "--out", tmp_path / "by2") == 0
    by2 = fields(tmp_path / "by2")
    for name in stacked:
        for k in stacked[name]:
            torch.testing.assert_close(by2[name][k], stacked[name][k], rtol=1e-4, atol=1e-5)
    first, second = (stacked[f.stem]["layers.0.weight"] for f in FACES[:2])
    assert not torch.allclose(first, second)
    # without --precision, fit-many takes fit's default (bf16 where it is native): equal up to its rounding
    default = tuple(a for a in SMALL if a not in ("--precision", "fp32"))
    assert cli("fit-many", folder, *default, "--steps", 10, "--out", tmp_path / "default") == 0
    assert cli("fit", FACES[0], *default, "--steps", 10, "--out", tmp_path / "fit-default") == 0
    many, alone = (json.loads((tmp_path / d / "metrics.json").read_text()) for d in (f"default/{FACES[0].stem}", "fit-default"))
    assert many["config"]["precision"] == alone["config"]["precision"]
    assert abs(many["final"]["psnr"] - alone["final"]["psnr"]) < 0.05


def test_outputs_and_summary(run, capsys):
    folder, out, printed = run
    rows = list(csv.DictReader((out / "summary.csv").open()))
    assert [r["signal"] for r in rows] == [f.name for f in FACES[:3]]
    assert list(rows[0]) == ["signal", "psnr", "ssim", "seconds"]
    lines = printed.splitlines()
    assert lines[0] == "| signal | PSNR | SSIM | seconds |"
    for r in rows:
        record = json.loads((out / Path(r["signal"]).stem / "metrics.json").read_text())
        assert record["signal"] == str(folder / r["signal"]) and record["steps"] == 30 and record["kind"] == "image"
        assert float(r["psnr"]) == pytest.approx(record["final"]["psnr"]) and 10 < float(r["psnr"]) < 60
        assert float(r["seconds"]) == pytest.approx(record["wall_time_s"]) and record["wall_time_s"] > 0
        assert record["stack"]["signals"] == 3
        assert any(line.startswith(f"| {r['signal']} | {float(r['psnr']):.2f} | ") for line in lines)
        assert iio.imread(out / Path(r["signal"]).stem / "reconstruction.png").shape == (12, 12, 3)
    assert lines[-2].startswith("3 signals (3 fitted now) on 1 process, 3 per step:")
    assert lines[-1] == f"outputs in {out}"
    # the manifest lists every file written; a signal's field renders as a fit run's does
    listed = set(json.loads((out / "run.json").read_text())["files"])
    written = {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file() and p.name != "run.json"}
    assert written <= listed
    field, layout = load_field(out / FACES[0].stem)
    assert (layout.height, layout.width) == (12, 12)
    # config.yaml repeats the run
    assert cli("fit-many", "--config", out / "config.yaml", "--out", out.parent / "again", "--quiet") == 0
    assert fields(out.parent / "again").keys() == fields(out).keys()
    for name, t in fields(out.parent / "again").items():
        assert all(torch.equal(t[k], fields(out)[name][k]) for k in t)


def test_resume_fits_only_the_signals_not_done_and_overwrite_removes_only_the_runs_files(tmp_path, capsys):
    folder, out = faces(tmp_path / "faces", 2), tmp_path / "out"
    assert cli("fit-many", folder, *SMALL, "--steps", 10, "--out", out) == 0
    before = {n: (out / n / "metrics.json").read_bytes() for n in (FACES[0].stem, FACES[1].stem)}
    shutil.copy(FACES[2], folder / FACES[2].name)  # a new signal, and one whose fit did not finish
    (out / FACES[1].stem / "metrics.json").unlink()
    capsys.readouterr()
    assert cli("fit-many", folder, *SMALL, "--steps", 10, "--out", out, "--resume", "--signals-per-batch", 1) == 0
    printed = capsys.readouterr().out
    assert "3 signals (2 fitted now, 1 done before)" in printed
    assert (out / FACES[0].stem / "metrics.json").read_bytes() == before[FACES[0].stem]  # skipped
    assert (out / FACES[1].stem / "metrics.json").is_file() and (out / FACES[2].stem / "field.safetensors").is_file()
    assert len(list(csv.DictReader((out / "summary.csv").open()))) == 3
    # a changed option that changes the fields is refused on --resume
    assert cli("fit-many", folder, *SMALL, "--steps", 20, "--out", out, "--resume") == 2
    assert "was run with --steps 10, not 20" in one_line(capsys.readouterr().err)
    # a folder holding a run: refused without --overwrite; --overwrite keeps what the run did not write
    assert cli("fit-many", folder, *SMALL, "--steps", 10, "--out", out) == 2
    assert "--overwrite" in one_line(capsys.readouterr().err)
    (out / "notes.txt").write_text("mine")
    (out / FACES[0].stem / "notes.txt").write_text("mine too")
    (folder / FACES[2].name).unlink()
    assert cli("fit-many", folder, *SMALL, "--steps", 10, "--out", out, "--overwrite") == 0
    assert (out / "notes.txt").read_text() == "mine" and (out / FACES[0].stem / "notes.txt").read_text() == "mine too"
    assert not (out / FACES[2].stem).exists()  # the old run's outputs of a signal no longer in the folder are gone
    assert len(list(csv.DictReader((out / "summary.csv").open()))) == 2


def test_bad_inputs_are_one_line_naming_the_file_and_write_nothing(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("no signals here")
    mixed_size = faces(tmp_path / "sizes", 2)
    iio.imwrite(mixed_size / "small.png", iio.imread(FACES[2])[:100, :150])
    mixed_kind = faces(tmp_path / "kinds", 1)
    shutil.copy(DATA / "librispeech" / sorted(p.name for p in (DATA / "librispeech").glob("*.wav"))[0], mixed_kind / "zz.wav")
    corrupt = faces(tmp_path / "corrupt", 2)
    (corrupt / "broken.png").write_bytes(b"not an image at all")
    meshes = tmp_path / "meshes"
    meshes.mkdir()
    shutil.copy(DATA / "meshes" / "bunny_cr.obj", meshes)
    cases = [
        ((empty,), f"{empty}: no signal files in the folder"),
        ((tmp_path / "nothing",), "no such folder"),
        ((FACES[0],), "not a folder"),
        ((mixed_size, "--resize", "0"), f"{mixed_size / 'small.png'}: height 100, width 150, where {FACES[0].name} has height 200, width 200"),
        ((mixed_kind,), f"{mixed_kind / 'zz.wav'}: audio, not image as {FACES[0].name}"),
        ((corrupt,), f"{corrupt / 'broken.png'}: cannot read image"),
        ((meshes,), "occupancy signals do not share their samples"),
        ((faces(tmp_path / "ok", 1), "--duration", "1"), "--duration: does not apply to image signals"),
        ((faces(tmp_path / "ok", 1), "--signals-per-batch", "0"), "--signals-per-batch 0: must be a positive integer"),
        ((faces(tmp_path / "ok", 1), "--optimizer", "esgd"), "invalid choice: 'esgd'"),
    ]
    for args, message in cases:
        out = tmp_path / "out"
        assert cli("fit-many", *args, "--steps", 2, "--out", out, "--quiet") == 2, args
        assert message in one_line(capsys.readouterr().err), (args, message)
        assert not out.exists(), args


def test_stacks_are_even_cuts():
    assert [len(s) for s in stacks(list(range(10)), 4)] == [4, 3, 3]
    assert stacks(list(range(3)), 8) == [[0, 1, 2]] and stacks([], 4) == []
    assert sum(stacks(list(range(7)), 2), []) == list(range(7))


def test_two_processes_split_the_folder_and_match_one(run, tmp_path):
    folder, out, _ = run
    torchrun = Path(sys.executable).parent / "torchrun"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    two = tmp_path / "two"
    r = subprocess.run([str(torchrun), "--standalone", "--nproc_per_node=2", "-m", "mclnf", "fit-many", str(folder), *SMALL, "--steps", "30", "--out", str(two)],
                       capture_output=True, text=True, env=env, timeout=300)  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.count("| signal |") == 1 and "on 2 processes" in r.stdout  # the first process alone prints the summary
    processes = {json.loads((two / f.stem / "metrics.json").read_text())["process"] for f in FACES[:3]}
    assert processes == {0, 1}
    one, both = fields(out), fields(two)
    for name in one:
        for k in one[name]:
            torch.testing.assert_close(both[name][k], one[name][k], rtol=1e-4, atol=1e-5)
    assert len(list(csv.DictReader((two / "summary.csv").open()))) == 3
    listed = set(json.loads((two / "run.json").read_text())["files"])
    assert {f"{FACES[1].stem}/field.safetensors", f"{FACES[1].stem}/metrics.json"} <= listed  # written by the second process
    assert np.isfinite([float(r["psnr"]) for r in csv.DictReader((two / "summary.csv").open())]).all()
