"""Prompt audio: text rendered once with espeak-ng to 8 kHz mono WAV and cached, the
operator's own WAV files, and a built-in music-on-hold tune.

The cache key is a hash of (voice, text, format), so editing a prompt's text renders
it anew and unchanged prompts are never rendered twice. Workers only ever see paths.
"""

from __future__ import annotations

import functools
import hashlib
import math
import shutil
import subprocess
import tempfile
import wave
from pathlib import Path
from typing import Protocol

import numpy as np


class Prompt(Protocol):
    """A configured prompt (`config.schema.Prompt` or an IVR flow's `ivr.schema.Prompt`)."""

    @property
    def text(self) -> str | None: ...
    @property
    def file(self) -> Path | None: ...
    @property
    def voice(self) -> str | None: ...


DEFAULT_VOICE = "en-us"

RATE = 8000
_FORMAT = "v1-8k-mono-s16"


class PromptError(RuntimeError):
    """A prompt cannot be rendered; the message says which and why."""


@functools.cache
def espeak_voices() -> frozenset[str] | None:
    """What `espeak-ng -v` accepts (languages, voice names, files); None: no espeak-ng.

    Passed to `config.loader.load(voices=...)` so a prompt in a voice espeak-ng lacks
    fails the configuration, not the first call that would hear it."""
    if shutil.which("espeak-ng") is None:
        return None
    done = subprocess.run(
        ["espeak-ng", "--voices"], capture_output=True, text=True, timeout=10, check=False
    )
    voices: set[str] = set()
    for line in done.stdout.splitlines()[1:]:
        cols = line.split()
        if len(cols) >= 5:
            voices |= {cols[1].lower(), cols[3].lower(), cols[4].lower(),
                       cols[4].rsplit("/", 1)[-1].lower()}  # fmt: skip
    return frozenset(voices)


def render_text(text: str, voice: str, cache_dir: Path) -> Path:
    key = hashlib.sha256(f"{_FORMAT}\0{voice}\0{text}".encode()).hexdigest()[:20]
    out = cache_dir / f"tts-{key}.wav"
    if out.is_file():
        return out
    if shutil.which("espeak-ng") is None or shutil.which("sox") is None:
        raise PromptError("espeak-ng and sox are needed to render prompt text (apt: espeak-ng sox)")
    cache_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache_dir) as tmp:
        raw = Path(tmp) / "raw.wav"
        converted = Path(tmp) / "out.wav"
        speak = subprocess.run(
            ["espeak-ng", "-v", voice, "-s", "150", "-w", str(raw), text],
            capture_output=True,
            check=False,
        )
        if speak.returncode != 0 or not raw.is_file():
            raise PromptError(
                f"espeak-ng failed for voice {voice!r}: {speak.stderr.decode().strip()}"
            )
        convert = subprocess.run(
            ["sox", str(raw), "-r", str(RATE), "-c", "1", "-b", "16", str(converted)],
            capture_output=True,
            check=False,
        )
        if convert.returncode != 0:
            raise PromptError(
                f"sox could not convert prompt audio: {convert.stderr.decode().strip()}"
            )
        converted.replace(out)  # atomic: a concurrent reader never sees half a file
    return out


def music_on_hold(cache_dir: Path) -> Path:
    """A gentle 16-second arpeggio loop, synthesised (no licensed music shipped)."""
    out = cache_dir / f"moh-{_FORMAT}.wav"
    if out.is_file():
        return out
    cache_dir.mkdir(parents=True, exist_ok=True)
    notes = [261.63, 329.63, 392.0, 523.25, 392.0, 329.63, 293.66, 349.23]
    bars: list[np.ndarray] = []
    for bar in range(4):
        for i, freq in enumerate(notes):
            t = np.arange(int(RATE * 0.5)) / RATE
            shift = 2 ** ((bar % 2) * -2 / 12)
            tone = np.sin(2 * math.pi * freq * shift * t) + 0.3 * np.sin(
                4 * math.pi * freq * shift * t
            )
            envelope = np.exp(-3.5 * t) * (1 - np.exp(-60 * t))
            bars.append(tone * envelope * (0.9 if i % 4 == 0 else 0.7))
    samples = (np.concatenate(bars) * 0.25 * 32767).astype("<i2")
    tmp = out.with_suffix(".tmp")
    with wave.open(str(tmp), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(RATE)
        wav.writeframes(samples.tobytes())
    tmp.replace(out)
    return out


def resolve(prompt: Prompt, cache_dir: Path, base_dir: Path) -> Path:
    """The WAV file for a configured prompt (rendering text if needed)."""
    if prompt.file is not None:
        path = prompt.file if prompt.file.is_absolute() else base_dir / prompt.file
        if not path.is_file():
            raise PromptError(f"no such WAV file: {path}")
        return path.resolve()
    assert prompt.text is not None
    return render_text(prompt.text, prompt.voice or DEFAULT_VOICE, cache_dir).resolve()
