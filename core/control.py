"""Call control of a call an agent is on: hold, resume, blind and attended transfers to
an agent or a queue (the desktop's buttons; `POST /api/calls/{id}/...` in the web API).

Media: hold `Unbridge`s the caller, who hears the queue's music and keeps the call's
recording; a resume, or the next agent, bridges the caller again with the same path, so
one WAV covers the whole call (`wire.events.Unbridge`).

Blind: the queue engine's `Transfer` sends the agent to wrap-up and the call into a
queue afresh, or to a named agent at once (should they not answer, it waits in the
queue for anyone); the caller hears music until the core's ordinary offer path connects
the next agent, who sees who handed the call over in the screen pop.

Attended: the caller is held and a consultation `<call id>~<n>` is enqueued, to a named
agent (who must be free; it ends if they do not answer) or through a queue (where it goes
ahead of customers). The consulted agent's desktop gets the caller's screen pop marked as
a consultation; when they answer, the two agents are bridged. `complete` hands the caller
to them (`ConsultCompleted`), `cancel` drops the consultation and gives the caller back.

Nobody is stranded: the caller hanging up ends a consultation; the agent leaving while
the caller holds hands the call to the consulted agent if they answered, else back to
the queue, ahead of new callers.
"""

from __future__ import annotations

import itertools
import logging
import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from acd import engine as acd
from wire import events as ev

if TYPE_CHECKING:
    from core.app import Call, Core

log = logging.getLogger("kefu.core.control")

CONSULT_PRIORITY = 1000
"""A consultation keeps a customer on hold and an agent waiting: it goes first."""
REQUEUE_PRIORITY = 50
"""Added to a call given back to its queue (its agent left it on hold): it waited once."""


class ControlError(RuntimeError):
    """The call is not in a state for this request; the message says why (HTTP 409)."""


@dataclass
class Consult:
    """The first half of an attended transfer: an agent asks someone else first."""

    consult_id: str
    by: str
    """The agent who has the caller and asked."""
    queue: str
    agent: str | None
    """The agent asked by name; None: whoever the queue offers it to."""
    leg: str | None = None
    """The consulted agent's leg, while it rings or talks."""
    with_agent: str | None = None
    answered: bool = False


class CallControl:
    """Hold, resume and transfers for the core (one per `Core`, on its event loop)."""

    def __init__(self, core: Core) -> None:
        self.core = core
        self.consults: dict[str, str] = {}
        """consultation id -> the call it is about (for the queue engine's commands)"""
        self._ids = itertools.count(1)

    # ------------------------------------------------------------------ requests

    def hold(self, call_id: str, *, agent: str | None) -> dict[str, Any]:
        call = self._call(call_id, agent)
        if call.held:
            raise ControlError("the caller is already on hold")
        self._hold(call)
        self._tell(call, "held")
        return self.view(call)

    def resume(self, call_id: str, *, agent: str | None) -> dict[str, Any]:
        call = self._call(call_id, agent)
        if not call.held:
            raise ControlError("the caller is not on hold")
        if call.consult is not None:
            raise ControlError("a consultation is going on: complete or cancel it first")
        assert call.agent_leg is not None
        self._bridge(call, call.agent_leg)
        self._tell(call, "resumed")
        return self.view(call)

    def transfer(
        self,
        call_id: str,
        *,
        agent: str | None,
        to_agent: str | None = None,
        to_queue: str | None = None,
    ) -> dict[str, Any]:
        """Blind: the agent leaves at once; the call goes to `to_agent` or `to_queue`."""
        call = self._call(call_id, agent)
        if call.consult is not None:
            raise ControlError("a consultation is going on: complete or cancel it first")
        queue = self._queue_for(call, to_agent, to_queue)
        self._engine(
            acd.Transfer(
                call_id=call.call_id,
                queue=queue,
                caller=call.caller,
                agent=to_agent,
                priority=call.priority,
                language=call.language or None,
            )
        )
        self._hand_to_queue(call, queue, to_agent=to_agent, mode="blind")
        return self.view(call)

    def consult(
        self,
        call_id: str,
        *,
        agent: str | None,
        to_agent: str | None = None,
        to_queue: str | None = None,
    ) -> dict[str, Any]:
        """Attended: hold the caller and ring `to_agent` (or the best of `to_queue`)."""
        call = self._call(call_id, agent)
        if call.consult is not None:
            raise ControlError("a consultation is already going on")
        queue = self._queue_for(call, to_agent, to_queue)
        by = call.agent
        assert by is not None
        consult_id = f"{call.call_id}~{next(self._ids)}"
        self._engine(
            acd.Enqueue(
                call_id=consult_id,
                queue=queue,
                caller=by,
                priority=CONSULT_PRIORITY,
                agent=to_agent,
            )
        )
        call.consult = Consult(consult_id=consult_id, by=by, queue=queue, agent=to_agent)
        self.consults[consult_id] = call.call_id
        if not call.held:
            self._hold(call)
        log.info("call %s: %s consults %s", call.call_id, by, to_agent or f"queue {queue}")
        self._tell(call, "consulting", to_agent=to_agent, queue=queue)
        self.core._pump()
        return self.view(call)

    def complete(self, call_id: str, *, agent: str | None) -> dict[str, Any]:
        """Attended, second half: the consulted agent takes the caller."""
        call = self._call(call_id, agent)
        c = call.consult
        if c is None:
            raise ControlError("there is no consultation to complete")
        if not c.answered:
            raise ControlError(f"{c.with_agent or 'queue ' + c.queue} has not answered yet")
        self._complete(call)
        return self.view(call)

    def cancel(self, call_id: str, *, agent: str | None) -> dict[str, Any]:
        """Drop the consultation; the agent has the caller back."""
        call = self._call(call_id, agent)
        if call.consult is None:
            raise ControlError("there is no consultation to cancel")
        self._drop(call, "cancelled")
        assert call.agent_leg is not None
        self._bridge(call, call.agent_leg)
        self._tell(call, "resumed")
        self.core._pump()
        return self.view(call)

    def targets(self, agent: str | None) -> dict[str, Any]:
        """Who a call can go to: the other agents with their state, and the queues."""
        settings = self.core.settings
        return {
            "agents": [
                {"agent": a.spec.agent_id, "name": settings.agents[a.spec.agent_id].name
                 or a.spec.agent_id, "state": a.state.value}
                for a in self.core.acd.agents()
                if a.spec.agent_id != agent
            ],
            "queues": [
                {"queue": name, "waiting": len(self.core.acd.waiting(name))}
                for name in settings.queues
            ],
        }  # fmt: skip

    def view(self, call: Call) -> dict[str, Any]:
        c = call.consult
        return {
            "call_id": call.call_id,
            "agent": call.agent,
            "queue": call.queue,
            "held": call.held,
            "consult": (
                {"agent": c.with_agent or c.agent, "queue": c.queue, "answered": c.answered}
                if c is not None
                else None
            ),
            "handoffs": call.handoffs,
        }

    # ------------------------------------------------------------------ engine commands

    def on_acd(self, cmd: acd.AcdCommand) -> None:
        """A queue-engine command about a consultation (see `Core._do_acd`)."""
        consult_id = getattr(cmd, "call_id", "")
        call = self.core.calls.get(self.consults.get(consult_id, ""))
        c = call.consult if call is not None else None
        if call is None or c is None or c.consult_id != consult_id:
            return
        if isinstance(cmd, acd.OfferCall):
            self._ring(call, c, cmd.agent_id)
        elif isinstance(cmd, acd.CancelOffer):
            # rang out, or the agent went away meanwhile
            leg, c.leg, c.with_agent = c.leg, None, None
            if leg is not None and leg in self.core.legs:
                self.core._send(call.worker, ev.Hangup(leg=leg))
            if c.agent is not None:
                self._drop(call, f"{c.agent} did not answer")
            else:
                self._tell(call, "consult_waiting", queue=c.queue)
        elif isinstance(cmd, acd.Overflow) and cmd.target_kind != "queue":
            self.consults.pop(consult_id, None)
            call.consult = None
            self._tell(call, "consult_ended", reason=f"nobody can take it in {c.queue}")

    def _ring(self, call: Call, c: Consult, agent_id: str) -> None:
        core = self.core
        leg = uuid.uuid4().hex
        c.leg, c.with_agent = leg, agent_id
        core.legs[leg] = (call.call_id, "consult")
        pop = core.screen_pop(call, "consult")
        pop["consult_from"] = c.by
        core.ring_agent(
            call, leg, agent_id, pop, caller_id=c.by,
            wanted=lambda: call.consult is not None and call.consult.leg == leg,
            on_fail=lambda _r: self._not_placed(call, leg),
        )  # fmt: skip

    def _not_placed(self, call: Call, leg: str) -> None:
        c = call.consult
        if self.core.legs.pop(leg, None) is None or c is None or c.leg != leg:
            return
        c.leg, c.with_agent = None, None
        self._engine_quietly(
            acd.OfferFailed(call_id=c.consult_id, reason="not_placed", agent_at_fault=False)
        )
        if c.agent is not None:
            self._drop(call, f"{c.agent}'s phone could not be reached")
        self.core._pump()

    # ------------------------------------------------------------------ media events

    def consult_answered(self, call: Call, leg: str) -> None:
        core = self.core
        c = call.consult
        if c is None or c.leg != leg or call.caller_ended:
            core._send(call.worker, ev.Hangup(leg=leg))
            return
        try:
            core._acd(acd.OfferAnswered(call_id=c.consult_id))
        except acd.IllegalTransition:
            core._send(call.worker, ev.Hangup(leg=leg))
            return
        c.answered = True
        assert c.with_agent is not None
        core.web.hub.publish(c.with_agent, {"type": "consult_connected",
                                            "call_id": call.call_id, "with": c.by})  # fmt: skip
        if call.agent_leg is None or call.agent_leg not in core.legs:
            self._complete(call)  # the first agent already left: the caller is theirs
            return
        core._send(
            call.worker,
            ev.Bridge(a=call.agent_leg, b=leg, hangup_together=False),
            on_fail=lambda _r, call=call: self._drop(call, "the agents could not be connected"),
        )
        self._tell(call, "consult_answered", agent=c.with_agent)

    def consult_leg_ended(self, call: Call, e: ev.LegEnded) -> None:
        c = call.consult
        if c is None or e.leg != c.leg:
            self.core._maybe_finish(call)  # a dropped consultation's leg
            return
        agent = c.with_agent
        c.leg, c.with_agent = None, None
        if c.answered:
            self._drop(call, f"{agent} left the consultation")
        else:
            self._engine_quietly(
                acd.OfferFailed(
                    call_id=c.consult_id,
                    reason="no_answer" if e.by != "error" else "failed",
                    agent_at_fault=e.by != "error",
                )
            )
            if c.agent is not None:
                self._drop(call, f"{agent} did not answer")
            else:
                self._tell(call, "consult_waiting", queue=c.queue)
        self.core._maybe_finish(call)
        self.core._pump()

    def agent_left(self, call: Call) -> bool:
        """The agent's leg ended while the caller was on hold or being transferred:
        hand the caller on rather than leave them on music. False: not our case."""
        if call.caller_ended or not (call.held or call.consult is not None):
            return False
        c = call.consult
        if c is not None and c.answered:
            self._complete(call)
        else:
            if c is not None:
                self._drop(call, f"{c.by} left")
            try:
                self._engine(
                    acd.Transfer(
                        call_id=call.call_id,
                        queue=call.queue or "",
                        caller=call.caller,
                        priority=call.priority + REQUEUE_PRIORITY,
                        language=call.language or None,
                    )
                )
            except ControlError as exc:
                log.error("call %s: cannot give the caller back to a queue: %s", call.call_id, exc)
                call.hangup_side = call.hangup_side or "agent"
                self.core._send(call.worker, ev.Hangup(leg=call.call_id))
                return True
            self._hand_to_queue(call, call.queue or "", to_agent=None, mode="agent left")
        self.core._pump()
        return True

    def caller_gone(self, call: Call) -> None:
        """The caller hung up: a consultation about them has no point any more."""
        if call.consult is not None:
            self._drop(call, "the caller hung up")

    # ------------------------------------------------------------------ helpers

    def _call(self, call_id: str, agent: str | None) -> Call:
        call = self.core.calls.get(call_id)
        if call is None or call.ended_at is not None:
            raise KeyError(f"no call {call_id!r} in progress")
        if agent is not None and call.agent != agent:
            raise PermissionError("not your call")
        if call.is_callback:
            raise ControlError("a callback cannot be held or transferred")
        if call.caller_ended:
            raise ControlError("the caller has hung up")
        if not call.connected or call.agent_leg is None:
            raise ControlError("the call is not connected to an agent")
        return call

    def _queue_for(self, call: Call, to_agent: str | None, to_queue: str | None) -> str:
        """The queue a transfer goes through: the one named, or the call's own."""
        if (to_agent is None) == (to_queue is None):
            raise ValueError("name either an agent or a queue to transfer to")
        settings = self.core.settings
        if to_agent is not None and to_agent not in settings.agents:
            raise ControlError(f"unknown agent {to_agent!r}")
        if to_queue is not None and to_queue not in settings.queues:
            raise ControlError(f"unknown queue {to_queue!r}")
        return to_queue or call.queue or ""

    def _engine(self, event: acd.AcdEvent) -> None:
        try:
            self.core._acd(event)
        except acd.IllegalTransition as exc:
            raise ControlError(str(exc)) from None
        except KeyError as exc:
            raise ControlError(str(exc.args[0])) from None

    def _engine_quietly(self, event: acd.AcdEvent) -> None:
        try:
            self.core._acd(event)
        except (acd.IllegalTransition, KeyError) as exc:
            log.warning("queue engine refused %s: %s", type(event).__name__, exc)

    def _hold(self, call: Call) -> None:
        core = self.core
        core._send(call.worker, ev.Unbridge(leg=call.call_id))
        core._send(call.worker, ev.Play(leg=call.call_id, play_id="hold",
                                        files=(self._moh(call.queue),), loop=True))  # fmt: skip
        call.held = True

    def _bridge(self, call: Call, leg: str) -> None:
        core = self.core
        core._send(
            call.worker,
            ev.Bridge(a=call.call_id, b=leg, record_path=call.recording or "",
                      hangup_together=not call.keep_caller),
            on_fail=lambda _r, call=call: core._bridge_failed(call),
        )  # fmt: skip
        call.held = False

    def _moh(self, queue: str | None) -> str:
        files = self.core.prompt_files
        return files.get(f"queue.{queue}.moh") or next(
            path for key, path in sorted(files.items()) if key.endswith(".moh")
        )

    def _hand_to_queue(self, call: Call, queue: str, *, to_agent: str | None, mode: str) -> None:
        """The agent is off the call (the queue engine knows already); the caller waits
        with music for the next agent, through the ordinary offer path."""
        core = self.core
        by, old_leg = call.agent, call.agent_leg
        assert by is not None
        self._handoff(call, by, to_agent=to_agent, to_queue=None if to_agent else queue,
                      mode=mode)  # fmt: skip
        if not call.held:
            core._send(call.worker, ev.Unbridge(leg=call.call_id))
        core._send(call.worker, ev.Play(leg=call.call_id, play_id="moh",
                                        files=(self._moh(queue),), loop=True))  # fmt: skip
        call.held = False
        call.connected = False
        call.waiting = True
        call.agent = call.agent_leg = None
        call.queue = queue
        call.entered_queue_at = time.time()
        if old_leg is not None and old_leg in core.legs:
            core._send(call.worker, ev.Hangup(leg=old_leg))
        core.web.hub.publish(by, {"type": "ended", "call_id": call.call_id,
                                  "hangup_side": "transferred"})  # fmt: skip
        core._save(call)  # the row exists now: the first agent can wrap up
        core._pump()

    def _complete(self, call: Call) -> None:
        core = self.core
        c = call.consult
        assert c is not None and c.leg is not None and c.with_agent is not None
        self._engine_quietly(acd.ConsultCompleted(call_id=call.call_id, consult_id=c.consult_id))
        by, old_leg = call.agent, call.agent_leg
        assert by is not None
        if old_leg is not None and old_leg in core.legs:
            core._send(call.worker, ev.Unbridge(leg=c.leg))
            core._send(call.worker, ev.Hangup(leg=old_leg))
        self.consults.pop(c.consult_id, None)
        call.consult = None
        core.legs[c.leg] = (call.call_id, "agent")
        call.agent, call.agent_leg = c.with_agent, c.leg
        self._handoff(call, by, to_agent=c.with_agent, to_queue=None, mode="attended")
        self._bridge(call, c.leg)
        log.info("call %s: %s handed the caller to %s", call.call_id, by, c.with_agent)
        core.web.hub.publish(by, {"type": "ended", "call_id": call.call_id,
                                  "hangup_side": "transferred"})  # fmt: skip
        core.web.hub.publish(c.with_agent, core.screen_pop(call, "transferred"))
        core._save(call)

    def _drop(self, call: Call, reason: str) -> None:
        """End the consultation (its agent's leg too); the caller stays on hold."""
        core = self.core
        c = call.consult
        if c is None:
            return
        call.consult = None
        self.consults.pop(c.consult_id, None)
        self._engine_quietly(acd.CallLeft(call_id=c.consult_id))
        if c.leg is not None and c.leg in core.legs:
            if c.answered:
                core._send(call.worker, ev.Unbridge(leg=c.leg), on_fail=lambda _r: None)
            core._send(call.worker, ev.Hangup(leg=c.leg))
        log.info("call %s: consultation %s ended (%s)", call.call_id, c.consult_id, reason)
        self._tell(call, "consult_ended", reason=reason)
        if c.with_agent is not None:
            ended = {"type": "consult_ended", "call_id": call.call_id, "reason": reason}
            core.web.hub.publish(c.with_agent, ended)

    def _handoff(
        self, call: Call, by: str, *, to_agent: str | None, to_queue: str | None, mode: str
    ) -> None:
        call.handoffs.append(
            {"at": round(time.time() - call.arrived_at, 1), "from": by, "to_agent": to_agent,
             "to_queue": to_queue, "mode": mode}
        )  # fmt: skip

    def _tell(self, call: Call, kind: str, **detail: Any) -> None:
        if call.agent is not None:
            self.core.web.hub.publish(call.agent, {"type": kind, "call_id": call.call_id, **detail})
