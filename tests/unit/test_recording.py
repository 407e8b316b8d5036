"""Recording files: analysis and the repair of a WAV whose worker died mid-call."""

from __future__ import annotations

import struct
import wave
from pathlib import Path

import numpy as np
import pytest

from recording.storage import analyse, recording_path, repair_wav


def write_tone(path: Path, seconds: float) -> None:
    t = np.arange(int(8000 * seconds)) / 8000
    samples = (np.sin(2 * np.pi * 440 * t) * 8000).astype("<i2")
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(8000)
        wav.writeframes(samples.tobytes())


def test_recording_path_is_dated_by_arrival_in_utc(tmp_path: Path) -> None:
    path = recording_path(tmp_path, "abc", 1795484266.0)  # 2026-11-24 01:37:46 UTC
    assert path == tmp_path / "recordings/2026/11/24/abc.wav"


def test_analyse_reports_duration_and_loudness(tmp_path: Path) -> None:
    path = tmp_path / "tone.wav"
    write_tone(path, 2.0)
    facts = analyse(path)
    assert facts.duration_s == 2.0 and facts.rate == 8000 and facts.channels == 1
    assert 5000 < facts.rms < 6000  # 8000 * sqrt(1/2)


def test_repair_restores_an_unfinished_header(tmp_path: Path) -> None:
    """A crashed recorder leaves sizes of 0: the audio is there, the header unreadable."""
    path = tmp_path / "crashed.wav"
    write_tone(path, 3.0)
    raw = bytearray(path.read_bytes())
    raw[4:8] = struct.pack("<I", 0)
    data = raw.index(b"data")
    raw[data + 4 : data + 8] = struct.pack("<I", 0)
    path.write_bytes(bytes(raw))
    with pytest.raises(wave.Error):
        analyse(path)

    assert repair_wav(path) == 3.0
    facts = analyse(path)
    assert facts.duration_s == 3.0 and facts.rms > 5000


def test_repair_refuses_what_is_not_a_wav(tmp_path: Path) -> None:
    path = tmp_path / "x.wav"
    path.write_bytes(b"not a wave file at all")
    assert repair_wav(path) is None
    assert repair_wav(tmp_path / "missing.wav") is None
