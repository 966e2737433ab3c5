"""Audio: WAV/FLAC/OGG files → t ↦ amplitudes in [-1, 1] (one value per channel)."""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from math import gcd
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from scipy.signal import resample_poly
from torch import Tensor
from torchmetrics.functional.image import peak_signal_noise_ratio

from mclnf.errors import MclnfError
from mclnf.signals.base import GridLayout, Signal, check_readable

SUFFIXES = (".wav", ".flac", ".ogg")
PESQ_RATE = 16000


def pesq_wb(pred: np.ndarray, target: np.ndarray, sample_rate: int) -> float | None:
    """Wide-band PESQ of mono signals after resampling to 16 kHz; ``None`` where PESQ is undefined.

    PESQ needs at least 1/4 s of audio and some detectable speech; for shorter or silent signals
    it has no value, and this returns ``None`` rather than failing. (Imported here: only this metric needs ``pesq``'s C
    extension, and torchmetrics offers its PESQ only where that is installed.)
    """
    import pesq as pesq_backend
    from torchmetrics.functional.audio import perceptual_evaluation_speech_quality

    if sample_rate != PESQ_RATE:
        g = gcd(PESQ_RATE, sample_rate)
        pred, target = (resample_poly(x, PESQ_RATE // g, sample_rate // g) for x in (pred, target))
    pred, target = (torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)) for x in (pred, target))
    try:
        with np.errstate(invalid="ignore", divide="ignore"):  # pesq divides by the peak of silent input
            return float(perceptual_evaluation_speech_quality(pred, target, PESQ_RATE, "wb"))
    except (pesq_backend.BufferTooShortError, pesq_backend.NoUtterancesError):
        return None


def wav_frames(path: Path) -> tuple[int, int] | None:
    """(declared, readable) sample frames of a RIFF/RIFX WAV file: the ``data`` chunk's size in its header and the
    part of it the file holds, in frames of the ``fmt `` chunk's block size; ``None`` where the header does not
    declare a length (streaming writers' 0 or 0xFFFFFFFF, RF64) or is too damaged to say (soundfile judges those).

    libsndfile silently shortens a WAV whose data chunk runs past the end of the file, so a truncated file
    (an interrupted copy or download) would load as a shorter signal; this is what finds it out.
    """
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(12)
        if len(head) < 12 or head[:4] not in (b"RIFF", b"RIFX") or head[8:12] != b"WAVE":
            return None
        order = "<" if head[:4] == b"RIFF" else ">"
        block = None
        while True:
            chunk = f.read(8)
            if len(chunk) < 8:
                return None
            cid, length = chunk[:4], struct.unpack(order + "I", chunk[4:])[0]
            if cid == b"fmt ":
                fmt = f.read(length)
                if len(fmt) < 14:
                    return None
                block = struct.unpack(order + "H", fmt[12:14])[0]
                if length % 2:
                    f.seek(1, 1)
            elif cid == b"data":
                if not block or length in (0, 0xFFFFFFFF):
                    return None
                return length // block, min(length, size - f.tell()) // block
            else:
                f.seek(length + length % 2, 1)


@dataclass(frozen=True)
class AudioLayout(GridLayout):
    """``subtype`` is the WAV subtype reconstructions are written with (that of the source where WAV has it)."""

    num_samples: int
    sample_rate: int
    channels: int
    subtype: str = "FLOAT"

    kind = "audio"
    grid_fields = ("num_samples",)
    suffix = ".wav"

    @property
    def duration(self) -> float:
        return self.num_samples / self.sample_rate

    def metrics(self, pred: Tensor, target: Tensor) -> dict[str, float | None]:
        """PSNR (full scale [-1, 1], data range 2) and wide-band PESQ of the channel mean (``None`` if undefined)."""
        pred = pred.detach().float().cpu().clamp(-1, 1)
        target = target.detach().float().cpu()
        return {
            "psnr": float(peak_signal_noise_ratio(pred, target, data_range=2.0)),
            "pesq": pesq_wb(pred.mean(1).double().numpy(), target.mean(1).double().numpy(), self.sample_rate),
        }

    def save(self, native: Tensor, path: Path) -> None:
        data = torch.as_tensor(native).detach().float().cpu().clamp(-1, 1).reshape(-1, self.channels).numpy()
        sf.write(path, data, self.sample_rate, subtype=self.subtype, format="WAV")


def load_audio(path: str | os.PathLike, start: float | None = None, duration: float | None = None) -> Signal:
    """Load a WAV/FLAC/OGG file as a :class:`Signal` with values (N, channels) in [-1, 1].

    ``start`` and ``duration`` (seconds) cut a segment; integer PCM is scaled by soundfile, so
    PCM_16 → float32 → PCM_16 is exact. A WAV file shorter than its header declares (truncated) is
    refused (:func:`wav_frames`); a truncated FLAC is refused by soundfile's decoder error. OGG has no
    declared length, so a truncated OGG loads as the part that is there.
    """
    p = check_readable(path, SUFFIXES)
    if start is not None and start < 0:
        raise MclnfError(f"--start {start}: must not be negative")
    if duration is not None and not duration > 0:
        raise MclnfError(f"--duration {duration}: must be a positive number of seconds")
    try:
        with sf.SoundFile(p) as f:
            rate, channels, total, subtype = f.samplerate, f.channels, f.frames, f.subtype
            frames = wav_frames(p) if f.format == "WAV" else None
            if frames is not None and frames[1] < frames[0]:
                raise MclnfError(f"{p}: truncated WAV file: its header declares {frames[0]:,} sample frames but the file holds only {frames[1]:,}")
            first = round((start or 0.0) * rate)
            if total == 0:
                raise MclnfError(f"{p}: no audio samples (the file is empty)")
            if first >= total:
                raise MclnfError(f"--start {start}: beyond the end of {p} ({total / rate:.3f} s)")
            count = -1 if duration is None else max(1, round(duration * rate))
            if first:
                f.seek(first)
            data = f.read(count, dtype="float32", always_2d=True)
    except (RuntimeError, sf.SoundFileError) as e:  # LibsndfileError for corrupt or unknown content
        raise MclnfError(f"{p}: cannot read audio ({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
    if data.shape[0] == 0:
        raise MclnfError(f"{p}: no audio samples" + (" in the requested segment" if start or duration else ""))
    if not np.isfinite(data).all():
        raise MclnfError(f"{p}: the audio contains NaN or infinite samples")
    if not sf.check_format("WAV", subtype):  # e.g. VORBIS: reconstructions are float WAV
        subtype = "FLOAT"
    layout = AudioLayout(num_samples=data.shape[0], sample_rate=rate, channels=channels, subtype=subtype)
    return Signal(name=str(path), layout=layout, coords=layout.coords(), values=torch.from_numpy(np.ascontiguousarray(data)))
