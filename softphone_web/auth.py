"""Who may use the HTTP API and the agent sockets: accounts, sessions, roles, limits, audit.

Accounts come from the configuration: every agent signs in as itself (role `agent`)
and `users:` adds supervisors and admins. Passwords are kept as argon2 hashes; a
configuration may give the hash itself (`password_hash`, from `kefu passwd`) or, for
the demo, the password, which is hashed when the core starts and then forgotten.

Hashing is slow on purpose (tens of ms): a plain configured password is hashed the
first time its account signs in, not for every account when the core starts.

A session is a random token (a cookie for the browser, or `Authorization: Bearer`)
held in the core's memory: it ends on logout, after `SESSION_IDLE_S` without use, and
when an admin disables the account — its open sockets are closed at once. Sign-in
failures are limited per client address and account name (`LoginLimiter`), and every
sign-in, sign-out and read of a customer or call record is appended to the audit log
(`<data-dir>/audit.jsonl`, one JSON object a line).
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

Role = Literal["agent", "supervisor", "admin"]
ROLES: tuple[Role, ...] = ("agent", "supervisor", "admin")
SESSION_IDLE_S = 8 * 3600.0
"""A session unused this long has ended (a shift, with breaks)."""
LOGIN_WINDOW_S = 300.0
LOGIN_MAX_FAILURES = 5
"""Failures of one account from one address within the window before sign-in waits."""

_hasher = PasswordHasher()


def hash_password(password: str) -> str:
    return _hasher.hash(password)


@dataclass(slots=True)
class Account:
    user: str
    role: Role
    name: str
    password_hash: str | None
    """argon2; None until a plain configured `password` is first checked."""
    agent: str | None = None
    password: str | None = field(default=None, repr=False)
    """A plain configured password (the demo's), hashed and forgotten at first sign-in."""
    """The agent id this account acts as (role `agent`)."""

    def can(self, role: Role) -> bool:
        """At least `role`: admin > supervisor > agent."""
        return ROLES.index(self.role) >= ROLES.index(role)


@dataclass(slots=True)
class Session:
    token: str
    account: Account
    client: str
    started_at: float
    used_at: float
    customers: set[str] = field(default_factory=set)
    """Customers this session served or searched: the ones an agent may open."""


class Accounts:
    """The accounts that may sign in, and which of them an admin has disabled."""

    def __init__(self, accounts: Iterable[Account]) -> None:
        self._accounts = {a.user: a for a in accounts}
        self.disabled: set[str] = set()

    def get(self, user: str) -> Account | None:
        return self._accounts.get(user)

    def all(self) -> list[Account]:
        return sorted(self._accounts.values(), key=lambda a: a.user)

    def verify(self, user: str, password: str) -> Account | None:
        """The account, if the password is right and the account enabled."""
        account = self._accounts.get(user)
        if account is None:
            _hasher.hash(password)  # the same work as a wrong password: no user probing
            return None
        if account.password_hash is None:
            account.password_hash = hash_password(account.password or "")
            account.password = None
        try:
            _hasher.verify(account.password_hash, password)
        except (VerificationError, InvalidHashError):
            return None
        return None if user in self.disabled else account


class LoginLimiter:
    """Sliding-window limit on failed sign-ins per (client address, account name)."""

    def __init__(
        self,
        max_failures: int = LOGIN_MAX_FAILURES,
        window_s: float = LOGIN_WINDOW_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_failures, self.window_s, self.clock = max_failures, window_s, clock
        self._failures: dict[tuple[str, str], list[float]] = {}

    def retry_after(self, client: str, user: str) -> float:
        """Seconds until this pair may try again (0: now)."""
        recent = self._recent(client, user)
        if len(recent) < self.max_failures:
            return 0.0
        return max(0.0, recent[0] + self.window_s - self.clock())

    def failed(self, client: str, user: str) -> None:
        self._recent(client, user).append(self.clock())

    def succeeded(self, client: str, user: str) -> None:
        self._failures.pop((client, user), None)

    def _recent(self, client: str, user: str) -> list[float]:
        now = self.clock()
        recent = [t for t in self._failures.get((client, user), []) if now - t < self.window_s]
        self._failures[(client, user)] = recent
        return recent


class Sessions:
    """Signed-in sessions by token; `on_end` is told of every session that ends."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._by_token: dict[str, Session] = {}
        self.on_end: list[Callable[[Session], None]] = []

    def start(self, account: Account, client: str) -> Session:
        now = self.clock()
        session = Session(secrets.token_urlsafe(32), account, client, now, now)
        self._by_token[session.token] = session
        return session

    def get(self, token: str | None) -> Session | None:
        """The live session for `token`, touched; None when unknown or idle too long."""
        if not token:
            return None
        session = self._by_token.get(token)
        if session is None:
            return None
        now = self.clock()
        if now - session.used_at > SESSION_IDLE_S:
            self.end(session)
            return None
        session.used_at = now
        return session

    def end(self, session: Session) -> None:
        if self._by_token.pop(session.token, None) is not None:
            for listener in self.on_end:
                listener(session)

    def end_user(self, user: str) -> int:
        """End every session of `user` (account disabled); returns how many."""
        ended = [s for s in self._by_token.values() if s.account.user == user]
        for session in ended:
            self.end(session)
        return len(ended)

    def of_agent(self, agent: str) -> list[Session]:
        return [s for s in self._by_token.values() if s.account.agent == agent]


class AuditLog:
    """Append-only JSON lines: who did what to which record, from where, when."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()

    def write(self, event: str, *, user: str, client: str, **detail: Any) -> None:
        entry = {"at": round(time.time(), 3), "event": event, "user": user, "client": client}
        entry.update(detail)
        line = json.dumps(entry, ensure_ascii=False, default=str)
        with self._lock, self.path.open("a", encoding="utf-8") as out:
            out.write(line + "\n")

    def entries(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        lines = self.path.read_text(encoding="utf-8").splitlines()
        return [json.loads(line) for line in lines if line]
