"""``--device`` on every command that computes, checked once (:func:`mclnf.runtime.check_device`): a device this
machine lacks is one line naming the option, exit status 2, nothing written."""

import pytest
import torch
from conftest import cli, one_line

from mclnf.errors import MclnfError
from mclnf.runtime import check_device

COMMANDS = {
    "fit": ("fit", "camera"),
    "meta-train": ("meta-train", "lfw_subset"),
    "meta-test": ("meta-test", "runs/none", "lfw_subset"),
    "cl-bench": ("cl-bench", "mnist-permutations"),
    "render": ("render", "runs/none"),
}


@pytest.mark.parametrize("command", list(COMMANDS))
@pytest.mark.parametrize("device, message", [("cuda", "CUDA is not available"), ("cuda:99", "not available"), ("mps", "not supported"), ("gpu", "not a device name")])
def test_an_absent_device_is_one_line(command, device, message, tmp_path, capsys):
    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    out = tmp_path / "out"
    assert cli(*COMMANDS[command], "--device", device, *(() if command == "render" else ("--out", out))) == 2
    err = one_line(capsys.readouterr().err)
    assert err.startswith(f"mclnf {command}: error: --device {device}: ") and message in err
    assert not out.exists()


def test_the_check():
    assert check_device("cpu") == torch.device("cpu")
    with pytest.raises(MclnfError, match=r"^--device cuda:x: not a device name \(cpu, cuda or cuda:N\)$"):
        check_device("cuda:x")
    if not torch.cuda.is_available():
        with pytest.raises(MclnfError, match=r"^--device cuda: CUDA is not available \(this torch \(.*\) is built without CUDA\); use --device cpu$"):
            check_device("cuda")
