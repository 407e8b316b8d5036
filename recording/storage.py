"""Where recordings live and what is in them.

`<data-dir>/recordings/YYYY/MM/DD/<call-id>.wav`, dated by the call's arrival (UTC).
`analyse` reads a finished WAV (as pjsua2 writes it: mono, 16-bit) for duration and
loudness, which the tests and the record of the call use.
"""

from __future__ import annotations

import wave
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np


def recording_path(data_dir: Path, call_id: str, arrived_at: float) -> Path:
    day = datetime.fromtimestamp(arrived_at, tz=UTC)
    return data_dir / "recordings" / f"{day:%Y/%m/%d}" / f"{call_id}.wav"


@dataclass(frozen=True)
class WavFacts:
    duration_s: float
    rate: int
    channels: int
    rms: float
    """Root mean square of the samples, 0..32767."""


def analyse(path: Path) -> WavFacts:
    with wave.open(str(path), "rb") as wav:
        rate, channels, width = wav.getframerate(), wav.getnchannels(), wav.getsampwidth()
        frames = wav.readframes(wav.getnframes())
    if width != 2:
        raise ValueError(f"{path}: expected 16-bit samples, got {8 * width}-bit")
    samples = np.frombuffer(frames, dtype="<i2").astype(np.float64)
    rms = float(np.sqrt(np.mean(samples**2))) if samples.size else 0.0
    return WavFacts(
        duration_s=samples.size / channels / rate, rate=rate, channels=channels, rms=rms
    )
