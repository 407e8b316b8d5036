"""`kefu acd replay EVENTS --policy FILE`: what would this policy have done with that day?

Reads a journal (`acd.journal`: the facts the core fed its engine), runs the facts that
do not depend on routing through a fresh engine built from FILE (a kefu config; its
`queues:` and `agents:` are the candidate policy), and prints ASA, service level,
abandon rate and occupancy side by side with the recorded run.

What is taken from the journal, and how (the caller and the workforce do not change
with the policy; everything the policy decided does):
* arrivals (`Enqueue`), callback requests and agent state changes, at their times;
* handle times: an answered call's recorded `CallLeft` minus its `OfferAnswered`;
  a call the candidate answers that was not answered in the recording gets the mean;
* abandons: a `CallLeft` before any answer, at its recorded time, unless the candidate
  answered the call first. A caller answered in the recording is assumed to wait as
  long as the candidate needs (their patience is unknown);
* offers are answered at once (ring time is not a policy matter); offers, answers,
  failures and `Reconcile` in the journal are routing outcomes and are not replayed.
Occupancy is talk time over staffed time (logged in and not away, from the journal's
agent events), the same yardstick for both columns.
"""

from __future__ import annotations

import argparse
import heapq
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from acd import journal
from acd.build import specs_from_settings
from acd.engine import AcdEngine
from acd.events import (
    AcdEvent,
    AgentLoggedIn,
    AgentLoggedOut,
    AgentSetAvailable,
    AgentSetAway,
    CallbackAnswered,
    CallLeft,
    CancelCallback,
    Enqueue,
    ExtendWrapUp,
    OfferAnswered,
    OfferCall,
    Overflow,
    PlaceCallback,
    RequestCallback,
)
from acd.model import IllegalTransition
from config.loader import ConfigError, load

DEFAULT_HANDLE_S = 180.0
"""Handle time for candidate-answered calls when the journal answered none."""


@dataclass(slots=True)
class Metrics:
    arrivals: int = 0
    answered: int = 0
    asa_s: float = 0.0
    service_level: float = 0.0
    abandon_rate: float = 0.0
    occupancy: float = 0.0

    def row(self) -> dict[str, float | int]:
        return {
            "arrivals": self.arrivals,
            "answered": self.answered,
            "asa_s": round(self.asa_s, 2),
            "service_level_pct": round(100 * self.service_level, 1),
            "abandon_pct": round(100 * self.abandon_rate, 1),
            "occupancy_pct": round(100 * self.occupancy, 1),
        }


@dataclass(slots=True)
class Recording:
    """What the journal says happened, per call and per agent."""

    events: list[tuple[AcdEvent, float]]
    arrived: dict[str, tuple[float, str]] = field(default_factory=dict)
    """call -> (time, queue)"""
    answered: dict[str, float] = field(default_factory=dict)
    handle: dict[str, float] = field(default_factory=dict)
    abandoned: dict[str, float] = field(default_factory=dict)
    staffed_s: float = 0.0
    end: float = 0.0

    @classmethod
    def read(cls, events: list[tuple[AcdEvent, float]]) -> Recording:
        rec = cls(events=events)
        staffed_since: dict[str, float] = {}
        callbacks: set[str] = set()
        for event, at in events:
            rec.end = max(rec.end, at)
            if isinstance(event, Enqueue):
                rec.arrived.setdefault(event.call_id, (at, event.queue))
            elif isinstance(event, RequestCallback):
                callbacks.add(event.call_id)
            elif isinstance(event, OfferAnswered | CallbackAnswered):
                rec.answered.setdefault(event.call_id, at)
            elif isinstance(event, CallLeft):
                call = event.call_id
                if call in rec.answered:
                    rec.handle.setdefault(call, at - rec.answered[call])
                elif call in rec.arrived and call not in callbacks:
                    rec.abandoned.setdefault(call, at)
            elif isinstance(event, AgentLoggedIn | AgentSetAvailable):
                if isinstance(event, AgentSetAvailable) or event.available:
                    staffed_since.setdefault(event.agent_id, at)
            elif isinstance(event, AgentSetAway | AgentLoggedOut):
                start = staffed_since.pop(event.agent_id, None)
                if start is not None:
                    rec.staffed_s += at - start
        rec.staffed_s += sum(rec.end - start for start in staffed_since.values())
        return rec

    def mean_handle(self) -> float:
        return sum(self.handle.values()) / len(self.handle) if self.handle else DEFAULT_HANDLE_S


def metrics(
    arrived: dict[str, tuple[float, str]],
    answered: dict[str, float],
    talk_s: float,
    staffed_s: float,
    thresholds: dict[str, float],
) -> Metrics:
    waits = {c: answered[c] - arrived[c][0] for c in answered if c in arrived}
    n = len(arrived)
    m = Metrics(arrivals=n, answered=len(waits))
    if waits:
        m.asa_s = sum(waits.values()) / len(waits)
    if n:
        within = sum(1 for c, w in waits.items() if w <= thresholds.get(arrived[c][1], 20.0))
        m.service_level = within / n
        m.abandon_rate = (n - len(waits)) / n
    m.occupancy = talk_s / staffed_s if staffed_s > 0 else 0.0
    return m


def simulate(rec: Recording, engine: AcdEngine) -> tuple[dict[str, float], float, int]:
    """Run the policy-independent facts through `engine`; (answered at, talk s, skipped)."""
    mean = rec.mean_handle()
    answered: dict[str, float] = {}
    talk = 0.0
    skipped = 0
    # (time, order, event, ours): journal facts keep their order; our follow-ups after
    pending: list[tuple[float, int, AcdEvent, bool]] = []
    for order, (event, at) in enumerate(rec.events):
        if isinstance(event, CallLeft):
            if event.call_id in rec.answered:
                continue  # the end of a recorded conversation: the handle time says it
        elif not isinstance(
            event,
            Enqueue
            | AgentLoggedIn
            | AgentLoggedOut
            | AgentSetAvailable
            | AgentSetAway
            | ExtendWrapUp
            | RequestCallback
            | CancelCallback,
        ):
            continue  # offers, answers, failures, reconciles: outcomes of routing
        pending.append((at, order, event, False))
    heapq.heapify(pending)
    order = len(rec.events)

    def later(at: float, event: AcdEvent) -> None:
        nonlocal order
        order += 1
        heapq.heappush(pending, (at, order, event, True))

    while True:
        deadline = engine.next_deadline()
        if pending and (deadline is None or pending[0][0] <= deadline):
            now, _, event, ours = heapq.heappop(pending)
            if isinstance(event, CallLeft) and not ours and event.call_id in answered:
                continue  # a recorded abandon of a call the candidate answered in time
            try:
                engine.handle(event, now=now)
            except (IllegalTransition, KeyError, ValueError):
                skipped += 1  # e.g. "away" while the candidate has the agent on a call
        elif deadline is not None:
            now = deadline
            engine.handle_timer(now=now)
        else:
            break
        while (cmd := engine.next_command()) is not None:
            if isinstance(cmd, OfferCall | PlaceCallback):
                handle = rec.handle.get(cmd.call_id, mean)
                answer: AcdEvent = (
                    OfferAnswered(call_id=cmd.call_id)
                    if isinstance(cmd, OfferCall)
                    else CallbackAnswered(call_id=cmd.call_id)
                )
                engine.handle(answer, now=now)
                answered[cmd.call_id] = now
                talk += handle
                later(now + handle, CallLeft(call_id=cmd.call_id))
            elif isinstance(cmd, Overflow) and cmd.target_kind == "callback":
                later(now, CallLeft(call_id=cmd.call_id))  # the caller hangs up to wait
    return answered, talk, skipped


def _read_journal(path: Path) -> list[tuple[AcdEvent, float]]:
    out: list[tuple[AcdEvent, float]] = []
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if line.strip():
                try:
                    out.append(journal.load(line))
                except journal.JournalError as exc:
                    raise journal.JournalError(f"{path}:{number}: {exc}") from None
    return out


def _table(rows: list[tuple[str, str, str]]) -> str:
    headers = ("metric", "recorded", "candidate")
    widths = [max(len(r[i]) for r in [headers, *rows]) for i in range(3)]
    lines = [" | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))]
    lines.append("-+-".join("-" * w for w in widths))
    lines += [" | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="kefu acd replay",
        description="Re-run a recorded ACD journal through a candidate routing policy.",
    )
    parser.add_argument("events", type=Path, help="journal: one JSON event per line")
    parser.add_argument(
        "--policy", type=Path, required=True, help="kefu config whose queues/agents to try"
    )
    parser.add_argument("--seed", type=int, default=0, help="for weighted_random")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        settings = load(args.policy)
        events = _read_journal(args.events)
    except (ConfigError, journal.JournalError) as exc:
        print(f"kefu acd replay: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"kefu acd replay: {args.events}: {exc.strerror}", file=sys.stderr)
        return 2
    rec = Recording.read(events)
    queues, agents = specs_from_settings(settings)
    thresholds = {q.name: q.service_level.threshold_s for q in queues}
    recorded = metrics(
        rec.arrived, rec.answered, sum(rec.handle.values()), rec.staffed_s, thresholds
    )
    answered, talk, skipped = simulate(rec, AcdEngine(queues, agents, seed=args.seed))
    candidate = metrics(rec.arrived, answered, talk, rec.staffed_s, thresholds)
    if args.json:
        print(
            json.dumps(
                {"recorded": recorded.row(), "candidate": candidate.row(), "skipped": skipped}
            )
        )
        return 0
    a, b = recorded.row(), candidate.row()
    labels = {
        "arrivals": "arrivals",
        "answered": "answered",
        "asa_s": "ASA (s)",
        "service_level_pct": "service level (%)",
        "abandon_pct": "abandoned (%)",
        "occupancy_pct": "occupancy (%)",
    }
    print(_table([(label, str(a[k]), str(b[k])) for k, label in labels.items()]))
    if skipped:
        print(f"{skipped} recorded agent events did not apply to the candidate's state")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
