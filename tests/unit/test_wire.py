"""The one encoder: every wire type survives a round trip, and the AsyncAPI doc names them all."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from wire import codec, events

SAMPLES: list[object] = [
    events.LegIncoming(worker=3, leg="l1", sip_call_id="abc@x", caller="5551", did="1000"),
    events.LegRinging(worker=3, leg="l2"),
    events.LegAnswered(worker=3, leg="l1"),
    events.DtmfReceived(worker=3, leg="l1", digit="#", method="info"),
    events.PlaybackFinished(worker=3, leg="l1", play_id="p", interrupted=True),
    events.LegEnded(worker=3, leg="l1", by="remote", sip_code=200, reason="Normal",
                    rtp=events.RtpCounters(rx_packets=10, tx_packets=9, rx_lost=1)),
    events.RecordingFinished(worker=3, leg="l1", path="/r.wav", duration_s=4.5),
    events.LegRecorded(worker=3, leg="l1", record_id="vm1", path="/vm/1.wav", duration_s=2.5,
                       stopped_by="terminator"),
    events.WorkerStatus(worker=3, up=True, pid=9, sip_port=5102, legs=2, max_legs=4),
    events.Answer(leg="l1"),
    events.Play(leg="l1", play_id="p", files=("a.wav", "b.wav"), loop=False, barge_in=True),
    events.StopPlay(leg="l1"),
    events.Record(leg="l1", record_id="vm1", path="/vm/1.wav", max_s=60.0, terminators="#*",
                  beep=False, silence_s=3.0),
    events.StopRecord(leg="l1"),
    events.Dial(leg="l2", uri="sip:1001@127.0.0.1:5060", caller_id="5551", related_leg="l1"),
    events.Bridge(a="l1", b="l2", record_path="/r.wav"),
    events.Unbridge(leg="l1"),
    events.Hangup(leg="l1", sip_code=486),
    events.CommandResult(ok=False, error="unknown leg"),
    events.CallQueued(call_id="c", queue="sales", caller="5551", position=2),
    events.CallOffered(call_id="c", queue="sales", agent="alice"),
    events.CallAnswered(call_id="c", queue="sales", agent="alice", wait_s=3.5),
    events.CallEnded(call_id="c", queue="sales", agent="alice", hangup_side="caller"),
    events.CallOverflowed(call_id="c", queue="sales", reason="max_wait", target_kind="queue",
                          target="support"),
    events.AgentStateChanged(agent="alice", state="away", reason="no_answer"),
]  # fmt: skip


@pytest.mark.parametrize("sample", SAMPLES, ids=lambda s: type(s).__name__)
def test_round_trip(sample: object) -> None:
    assert codec.decode(codec.encode(sample)) == sample


def test_every_wire_type_has_a_sample_and_is_documented() -> None:
    types = {
        n for n, o in vars(events).items() if dataclasses.is_dataclass(o) and isinstance(o, type)
    }
    assert types - {"RtpCounters"} == {type(s).__name__ for s in SAMPLES}
    doc = yaml.safe_load((Path(codec.__file__).parent / "asyncapi.yaml").read_text())
    documented = {m for ch in doc["channels"].values() for m in ch["messages"]}
    assert types - {"CommandResult", "RtpCounters"} <= documented


def test_topics() -> None:
    assert codec.topic_for(SAMPLES[0]) == "kefu/v1/worker/3/event/leg_incoming"
    by_type = {type(s): s for s in SAMPLES}
    assert codec.topic_for(by_type[events.WorkerStatus]) == "kefu/v1/worker/3/status"
    assert codec.topic_for(by_type[events.LegRecorded]) == "kefu/v1/worker/3/event/leg_recorded"
    assert codec.topic_for(SAMPLES[-1]) == "kefu/v1/cc/agent_state_changed"
    with pytest.raises(codec.WireError):
        codec.topic_for(events.Answer(leg="x"))


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"not json", "not JSON"),
        (b"[1]", "expected a JSON object"),
        (b'{"type": "Nope"}', "unknown message type 'Nope'"),
        (b'{"type": "Answer"}', "Answer: "),
    ],
)
def test_bad_payloads_are_clear_errors(payload: bytes, message: str) -> None:
    with pytest.raises(codec.WireError, match=message):
        codec.decode(payload)
