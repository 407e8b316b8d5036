"""Scripted SIPp walks (`tests/support/walk.py`) against the real pjsua2 media worker.

The worker is driven over a private mosquitto exactly as in `test_worker.py` (whose
helpers this reuses); the walk dials the worker's SIP port directly. What the worker
reports (digits, a recording that vosk recognises) is what an IVR would act on.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from pathlib import Path

import pytest

from pbx.procs import ManagedProcess
from recording.speech import SpeechModel
from tests.integration.test_worker import (
    Bus,
    WorkerProc,
    bus,
    ready,
    wait_exit,
    wav_stats,
)
from tests.support.walk import (
    AwaitBye,
    Hangup,
    Press,
    Say,
    Step,
    Wait,
    run_walk,
    speak,
    start_walk,
)
from wire.events import (
    Answer,
    DtmfReceived,
    LegAnswered,
    LegEnded,
    LegIncoming,
    LegRecorded,
    Record,
)
from wire.events import (
    Hangup as HangupLeg,
)

pytestmark = pytest.mark.integration

OPTIONS = ["영업", "환불", "상담원"]  # sales, refund, an agent: reliable with espeak Korean


async def answer(b: Bus) -> str:
    inc = await b.event(LegIncoming)
    assert (inc.caller, inc.did) == ("5557000", "1000")
    await b.ok(Answer(leg=inc.leg))
    await b.event(LegAnswered, leg=inc.leg)
    return str(inc.leg)


async def answered_walk(
    b: Bus, w: WorkerProc, tmp: Path, steps: list[Step]
) -> tuple[ManagedProcess, str]:
    walk = start_walk("walk", tmp, steps, f"127.0.0.1:{w.sip_port}", caller="5557000")
    return walk, await answer(b)


def finish_walk(walk: ManagedProcess) -> None:
    code = wait_exit(walk, 10)
    walk.stop()
    assert code == 0, f"sipp walk failed:\n{walk.log_tail(40)}"


def test_walk_presses_digits_in_order(tmp_path: Path, broker: int, worker: WorkerProc) -> None:
    """A walk presses 1, then 2 3 # with gaps: the worker reports exactly those, in order."""
    gap_ms = 400
    steps: list[Step] = [
        Wait(1000),
        Press("1"),
        Wait(800),
        Press("23#", gap_ms=gap_ms),
        Wait(500),
        Hangup(),
    ]

    async def scenario() -> None:
        async with bus(broker) as b:
            await ready(b, worker)
            target = f"127.0.0.1:{worker.sip_port}"
            walk = asyncio.create_task(
                asyncio.to_thread(run_walk, steps, target, tmp_path, caller="5557000")
            )
            leg = await answer(b)
            arrived: list[float] = []
            for digit in "123#":
                dtmf = await b.event(DtmfReceived, leg=leg, digit=digit, within=5)
                assert dtmf.method == "rfc2833"
                arrived.append(time.monotonic())
            ended = await b.event(LegEnded, leg=leg, within=5)
            result = await walk
            assert result.ok, result.output
            assert ended.by == "remote"
            digits = [e.digit for e in b.events if isinstance(e, DtmfReceived)]
            assert digits == ["1", "2", "3", "#"]
            # The digits of one Press are a digit's turn (160 ms) plus the gap apart.
            for before, after in itertools.pairwise(arrived[1:]):
                assert abs(after - before - (0.16 + gap_ms / 1000)) < 0.15, arrived

    asyncio.run(scenario())


def test_walk_says_a_korean_phrase_that_is_recognised(
    tmp_path: Path, broker: int, worker: WorkerProc
) -> None:
    """A walk says 영업 into a running recording; vosk picks it from the menu's phrases."""
    said = speak("영업", tmp_path / "said.wav")
    path = tmp_path / "heard.wav"
    # The recording starts right after the answer and its silence clock runs from its
    # start: the phrase must come well within silence_s (1.5 s) of it.
    steps: list[Step] = [Wait(1000), Say(said), AwaitBye(max_ms=15_000)]

    async def scenario() -> None:
        async with bus(broker) as b:
            await ready(b, worker)
            walk, leg = await answered_walk(b, worker, tmp_path, steps)
            try:
                await b.ok(Record(leg=leg, record_id="menu", path=str(path), max_s=6,
                                  silence_s=1.5, beep=False))  # fmt: skip
                rec = await b.event(LegRecorded, leg=leg, within=10)
                await b.ok(HangupLeg(leg=leg))  # the walk waits for this BYE
                ended = await b.event(LegEnded, leg=leg)
            finally:
                finish_walk(walk)
            assert ended.by == "local"
            # Silence after the phrase ends it: ~1 s before + ~1.2 s phrase + 1.5 s.
            assert rec.stopped_by == "silence", rec
            assert 3.0 <= rec.duration_s <= 4.5, rec
            rms = wav_stats(str(path))[3]
            assert rms > 200, f"recording is (nearly) silent: RMS {rms:.1f}"
            result = SpeechModel().recognize(path, OPTIONS)
            assert result.text == "영업", result

    asyncio.run(scenario())


def test_a_walk_awaiting_a_bye_that_never_comes_fails(
    tmp_path: Path, broker: int, worker: WorkerProc
) -> None:
    """AwaitBye(max_ms=1500) and the far end stays: the walk hangs up itself and fails."""

    async def scenario() -> None:
        async with bus(broker) as b:
            await ready(b, worker)
            walk, leg = await answered_walk(b, worker, tmp_path, [Wait(300), AwaitBye(1500)])
            answered_at = time.monotonic()
            try:
                ended = await b.event(LegEnded, leg=leg, within=6)
                ended_at = time.monotonic()
                code = wait_exit(walk, 10)
            finally:
                walk.stop()
            assert ended.by == "remote"
            assert 1.6 <= ended_at - answered_at <= 2.5, ended_at - answered_at
            assert code == 1, walk.log_tail(40)

    asyncio.run(scenario())
