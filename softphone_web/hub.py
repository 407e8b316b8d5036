"""Agent sockets: what the core pushes to each signed-in agent's browser.

The core calls `publish(agent, message)` from its event loop when something concerns
that agent (a call offered — the screen pop —, answered, ended, a state change);
every socket the agent has open gets it, in order, through its own queue, so a slow
browser never holds the core up (a socket whose queue overflows is closed). A session
that ends (logout, account disabled) closes its sockets at once.

The screen pop must land before the agent's phone rings: the core waits on
`popped(agent, call_id)` before it dials the agent, for at most a few tens of
milliseconds, so a stuck browser cannot delay a call. A socket whose page says it
confirms pops (the desktop sends `{"type": "hello", "shows_pops": true}`, then
`{"type": "shown", "call_id": ...}` once the pop is in its DOM) counts when the page has
shown it; any other socket when the frame was written (`sent`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("kefu.web")

QUEUE_LIMIT = 256
"""Messages waiting for one socket before it is considered dead and closed."""
CLOSE_SESSION_ENDED = 4001
CLOSE_TOO_SLOW = 4008


@dataclass(eq=False)
class Subscriber:
    agent: str
    token: str
    queue: asyncio.Queue[dict[str, Any] | None] = field(
        default_factory=lambda: asyncio.Queue(QUEUE_LIMIT)
    )
    close_code: int = 1000
    queued: int = 0
    written: int = 0
    progress: asyncio.Event = field(default_factory=asyncio.Event)
    """Set when the sender wrote a frame or the page showed a pop (see `Hub.popped`)."""
    shows_pops: bool = False
    shown: set[str] = field(default_factory=set)
    """Calls whose pop the page confirmed it shows (the last few)."""


class Hub:
    def __init__(self) -> None:
        self._subs: dict[str, set[Subscriber]] = {}

    def subscribe(self, agent: str, token: str) -> Subscriber:
        sub = Subscriber(agent, token)
        self._subs.setdefault(agent, set()).add(sub)
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        subs = self._subs.get(sub.agent)
        if subs is not None:
            subs.discard(sub)
            if not subs:
                del self._subs[sub.agent]

    def connected(self, agent: str) -> int:
        return len(self._subs.get(agent, ()))

    def publish(self, agent: str, message: dict[str, Any]) -> int:
        """Queue `message` (stamped with `sent_at`) for every socket of `agent`."""
        message = {**message, "sent_at": time.time()}
        delivered = 0
        for sub in list(self._subs.get(agent, ())):
            try:
                sub.queue.put_nowait(message)
                sub.queued += 1
                delivered += 1
            except asyncio.QueueFull:
                log.warning("agent %s socket too slow: closing it", agent)
                self.close(sub, CLOSE_TOO_SLOW)
        return delivered

    def sent(self, sub: Subscriber) -> None:
        """The socket's sender wrote one more frame to the browser."""
        sub.written += 1
        sub.progress.set()

    def page_says(self, sub: Subscriber, message: dict[str, Any]) -> None:
        """A message from the agent's page: it confirms pops, or it shows one now."""
        if message.get("type") == "hello":
            sub.shows_pops = bool(message.get("shows_pops"))
        elif message.get("type") == "shown" and isinstance(message.get("call_id"), str):
            if len(sub.shown) >= 64:
                sub.shown.clear()  # only the call being offered matters
            sub.shown.add(message["call_id"])
            sub.progress.set()

    async def popped(self, agent: str, call_id: str, timeout_s: float) -> bool:
        """Wait until every open socket of `agent` has the pop of `call_id`: shown by a
        page that confirms pops, written to any other socket. False if that took longer
        than `timeout_s` (then stop waiting)."""
        targets = [(sub, sub.queued) for sub in self._subs.get(agent, ())]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s

        def done(sub: Subscriber, upto: int) -> bool:
            if sub not in self._subs.get(agent, ()):
                return True  # closed meanwhile: nobody to wait for
            return call_id in sub.shown if sub.shows_pops else sub.written >= upto

        for sub, upto in targets:
            while not done(sub, upto):
                sub.progress.clear()
                remaining = deadline - loop.time()
                if remaining <= 0:
                    return False
                try:
                    await asyncio.wait_for(sub.progress.wait(), remaining)
                except TimeoutError:
                    return False
        return True

    def close_session(self, token: str) -> None:
        for subs in list(self._subs.values()):
            for sub in list(subs):
                if sub.token == token:
                    self.close(sub, CLOSE_SESSION_ENDED)

    def close(self, sub: Subscriber, code: int = 1000) -> None:
        """Unsubscribe and wake the socket's sender with the end marker."""
        sub.close_code = code
        self.unsubscribe(sub)
        while not sub.queue.empty():  # make room for the end marker
            sub.queue.get_nowait()
        sub.queue.put_nowait(None)
