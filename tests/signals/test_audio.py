import math

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import DATA

from mclnf.errors import MclnfError
from mclnf.signals import load_signal
from mclnf.signals.audio import AudioLayout, load_audio
from mclnf.signals.base import Layout

SPEECH = DATA / "librispeech" / "198-209-0000.wav"
COUNTING = DATA / "audio" / "gt_counting.wav"


@pytest.mark.parametrize("path", sorted((DATA / "librispeech").glob("*.wav")), ids=lambda p: p.name)
def test_pcm16_round_trip_is_exact(path, tmp_path):
    original, rate = sf.read(path, dtype="int16", always_2d=True)
    s = load_audio(path)
    assert s.layout == AudioLayout(num_samples=len(original), sample_rate=16000, channels=1, subtype="PCM_16")
    assert s.values.dtype == torch.float32 and s.values.shape == (len(original), 1)
    n = s.layout.num_samples
    lookup = lambda c: s.values[((c[:, 0] + 1) / 2 * (n - 1)).round().long()]  # noqa: E731  a "field" that remembers every sample
    s.layout.save(s.layout.reconstruct(lookup), tmp_path / "out.wav")
    again, again_rate = sf.read(tmp_path / "out.wav", dtype="int16", always_2d=True)
    assert again_rate == rate and sf.info(tmp_path / "out.wav").subtype == "PCM_16"
    np.testing.assert_array_equal(again, original)


def test_float_round_trip_is_exact(tmp_path):
    original, _ = sf.read(COUNTING, dtype="float32", always_2d=True)
    s = load_signal(COUNTING)
    assert s.layout.sample_rate == 44100 and s.layout.subtype == "FLOAT" and s.layout.num_samples == 537936
    s.layout.save(s.layout.to_array(s.values), tmp_path / "out.wav")
    again, rate = sf.read(tmp_path / "out.wav", dtype="float32", always_2d=True)
    assert rate == 44100
    np.testing.assert_array_equal(again, original)


def test_layout_serializes():
    layout = AudioLayout(num_samples=10, sample_rate=8000, channels=2, subtype="PCM_24")
    assert Layout.from_dict(layout.to_dict()) == layout
    assert layout.in_dim == 1 and layout.out_dim == 2


def test_ogg_loads_with_rate_and_length(tmp_path):
    s = load_audio(DATA / "librispeech" / "198-209-0000.hq.ogg")
    assert s.layout.sample_rate == 16000 and s.layout.num_samples == 222561 and s.layout.channels == 1
    assert s.layout.subtype == "FLOAT"  # Vorbis has no WAV subtype: reconstructions are float WAV
    s.layout.save(s.layout.to_array(s.values), tmp_path / "out.wav")
    again, _ = sf.read(tmp_path / "out.wav", dtype="float32", always_2d=True)
    np.testing.assert_array_equal(again, s.values.clamp(-1, 1).numpy())


def test_start_and_duration_cut_the_right_segment():
    full, _ = sf.read(SPEECH, dtype="float32", always_2d=True)
    s = load_audio(SPEECH, start=1.5, duration=0.25)
    assert s.layout.num_samples == 4000
    np.testing.assert_array_equal(s.values.numpy(), full[24000:28000])
    tail = load_audio(SPEECH, start=13.0)  # to the end
    np.testing.assert_array_equal(tail.values.numpy(), full[13 * 16000 :])
    long = load_audio(SPEECH, duration=1000.0)  # clipped at the end
    assert long.layout.num_samples == len(full)


def test_coordinates_span_time():
    s = load_audio(SPEECH, duration=0.5)
    assert s.coords.shape == (8000, 1)
    assert s.coords[0, 0] == -1 and s.coords[-1, 0] == 1
    assert (s.coords[1:, 0] > s.coords[:-1, 0]).all()


def test_multichannel_keeps_channels(tmp_path):
    data = np.random.default_rng(0).uniform(-0.5, 0.5, (1000, 2)).astype(np.float32)
    sf.write(tmp_path / "st.flac", data, 8000, subtype="PCM_16")
    s = load_audio(tmp_path / "st.flac")
    assert s.values.shape == (1000, 2) and s.layout.subtype == "PCM_16" and s.layout.out_dim == 2
    s.layout.save(s.layout.to_array(s.values), tmp_path / "out.wav")
    np.testing.assert_array_equal(sf.read(tmp_path / "out.wav", dtype="int16")[0], sf.read(tmp_path / "st.flac", dtype="int16")[0])


def test_psnr():
    s = load_audio(SPEECH, duration=1.0)
    assert s.layout.metrics(s.values, s.values)["psnr"] > 100
    noise = 0.01 * torch.randn(s.values.shape, generator=torch.Generator().manual_seed(0))
    pred = s.values + noise
    mse = ((pred.clamp(-1, 1) - s.values) ** 2).mean().item()
    assert s.layout.metrics(pred, s.values)["psnr"] == pytest.approx(10 * math.log10(4.0 / mse), abs=1e-3)
    assert s.layout.metrics(s.values + 5.0, s.values)["psnr"] > 0  # clipped to full scale


def test_pesq_clean_vs_noisy():
    s = load_audio(SPEECH, duration=3.0)
    assert s.layout.metrics(s.values, s.values)["pesq"] > 4.0
    noisy = s.values + 0.3 * torch.randn(s.values.shape, generator=torch.Generator().manual_seed(0))
    assert s.layout.metrics(noisy, s.values)["pesq"] < 2.5


def test_pesq_resamples_other_rates():
    s = load_audio(COUNTING, duration=3.0)
    assert s.layout.metrics(s.values, s.values)["pesq"] > 4.0


@pytest.mark.parametrize("values", [torch.zeros(16000, 1), 0.1 * torch.randn(1000, 1)], ids=["silent", "short"])
def test_pesq_undefined_is_none(values):
    m = AudioLayout(num_samples=len(values), sample_rate=16000, channels=1).metrics(values, values)
    assert m["pesq"] is None and m["psnr"] > 100


def test_missing_file(tmp_path):
    with pytest.raises(MclnfError, match="nope.wav: no such file"):
        load_audio(tmp_path / "nope.wav")


def test_wrong_suffix(tmp_path):
    (tmp_path / "a.mp3").write_bytes(b"ID3")
    with pytest.raises(MclnfError, match=r"a\.mp3: unsupported format \.mp3"):
        load_audio(tmp_path / "a.mp3")


def test_corrupt_file(tmp_path):
    (tmp_path / "bad.wav").write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(MclnfError, match=r"bad\.wav: cannot read audio"):
        load_audio(tmp_path / "bad.wav")


def test_empty_file(tmp_path):
    sf.write(tmp_path / "empty.wav", np.zeros((0, 1), np.float32), 16000)
    with pytest.raises(MclnfError, match=r"empty\.wav"):
        load_audio(tmp_path / "empty.wav")


def test_nan_samples(tmp_path):
    sf.write(tmp_path / "nan.wav", np.array([[0.0], [np.nan], [0.5]], np.float32), 16000, subtype="FLOAT")
    with pytest.raises(MclnfError, match=r"nan\.wav: .*NaN"):
        load_audio(tmp_path / "nan.wav")


def test_bad_start_and_duration():
    with pytest.raises(MclnfError, match=r"--start 20.*beyond the end of .*198-209-0000\.wav \(13\.910 s\)"):
        load_audio(SPEECH, start=20.0)
    with pytest.raises(MclnfError, match="--start -1.0: must not be negative"):
        load_audio(SPEECH, start=-1.0)
    for bad in (0.0, -2.0):
        with pytest.raises(MclnfError, match=f"--duration {bad}: must be a positive"):
            load_audio(SPEECH, duration=bad)
