"""Agent sockets: what the core pushes to each signed-in agent's browser.

The core calls `publish(agent, message)` from its event loop when something concerns
that agent (a call offered — the screen pop —, answered, ended, a state change);
every socket the agent has open gets it, in order, through its own queue, so a slow
browser never holds the core up (a socket whose queue overflows is closed). A session
that ends (logout, account disabled) closes its sockets at once.
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
                delivered += 1
            except asyncio.QueueFull:
                log.warning("agent %s socket too slow: closing it", agent)
                self.close(sub, CLOSE_TOO_SLOW)
        return delivered

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
