"""Where recordings live and what is in them.

`<data-dir>/recordings/YYYY/MM/DD/<call-id>.wav`, dated by the call's arrival (UTC).
`analyse` reads a finished WAV (as pjsua2 writes it: mono, 16-bit) for duration and
loudness, which the tests and the record of the call use. `repair_wav` finishes the
header of a recording whose worker died mid-call (pjsua2 writes the RIFF and data
sizes only when the recorder is closed, so such a file reads as 0 s).
"""

from __future__ import annotations

import struct
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


def repair_wav(path: Path) -> float | None:
    """Set the RIFF and data chunk sizes from the file's length; the audio is intact.

    Returns the duration in seconds, or None when the file is not a PCM WAV at all."""
    try:
        with open(path, "r+b") as f:
            head = f.read(12)
            if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
                return None
            size = f.seek(0, 2)
            offset, byte_rate = 12, 0
            while offset + 8 <= size:
                f.seek(offset)
                chunk_id, chunk_size = struct.unpack("<4sI", f.read(8))
                if chunk_id == b"fmt ":
                    fmt = f.read(16)
                    byte_rate = struct.unpack("<I", fmt[8:12])[0]
                elif chunk_id == b"data":
                    data_size = size - offset - 8
                    data_size -= data_size % 2  # whole 16-bit samples only
                    f.seek(offset + 4)
                    f.write(struct.pack("<I", data_size))
                    f.seek(4)
                    f.write(struct.pack("<I", offset + 8 + data_size - 8))
                    return data_size / byte_rate if byte_rate else None
                offset += 8 + chunk_size + (chunk_size % 2)
    except OSError:
        return None
    return None
