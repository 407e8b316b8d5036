"""CRM adapters: who answers "who is calling?" and who receives each interaction.

`CrmAdapter` is the interface. `StoreCrm` is the built-in store (the default: look-ups
in kefu's own tables, nothing to write back since the call row *is* the interaction).
`HttpCrm` asks an external CRM over HTTP — URL templates, an auth header, a timeout, a
TTL cache — and falls back to the built-in store whenever that CRM is slow, down or
answering nonsense; after a failure it goes straight to the fallback for
`retry_after_s`, so a dead CRM costs one timeout, not one per call. Every card it gets
is also remembered in the store, so the fallback knows the callers the CRM served.

Its write-back (`write_interaction`) raises `CrmUnavailable` / `CrmRejected`; the
outbox (`crm_link.outbox`) turns those into retries or a parked message.

The CRM's JSON is read by `card_from_json`: a customer object (or a list, first
element) with the `CustomerCard` field names — `customer_id` (or `id`), `name`,
`company`, `tier`, `vip`, `language`, `account_number`, `email`, `owner`, `tags`,
`phones`, `open_tickets` (or `tickets`: `ticket_id`/`id`, `subject`, `priority`,
`status`, `assignee`, `sla_due_at`) — each of which `field_map` can point elsewhere
(`name: contact.full_name`). 404 or an empty list: the CRM does not know the caller.

The HTTP transport is a parameter (httpx2, the maintained httpx), the clock too:
tests run a real HTTP server on loopback (tests/integration/test_crm_http.py).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, Protocol
from urllib.parse import quote

import httpx2 as httpx

from config.crm import HttpCrmSettings
from crm_link.outbox import CrmRejected, CrmUnavailable
from crm_link.phones import caller_candidates
from crm_link.store import PRIORITY_ORDER, CallStore, CustomerCard

log = logging.getLogger(__name__)

_RETRYABLE = {408, 425, 429}


class CrmAdapter(Protocol):
    name: str
    """`store`, `http`: the card's `source` and the outbox's target."""
    writes_back: bool
    """Interactions must be written to it (through the outbox)."""

    def lookup_customer(self, number: str) -> CustomerCard | None: ...

    def lookup_account(self, account: str) -> CustomerCard | None: ...

    def write_interaction(self, interaction: Mapping[str, Any], *, key: str) -> None:
        """Deliver one interaction; `key` is unique per message (idempotency).
        Raises CrmUnavailable (retry later) or CrmRejected (never retry)."""
        ...

    def close(self) -> None: ...


class StoreCrm:
    """The built-in CRM: kefu's own tables."""

    name = "store"
    writes_back = False

    def __init__(self, store: CallStore) -> None:
        self.store = store

    def lookup_customer(self, number: str) -> CustomerCard | None:
        return self.store.lookup("caller", number)

    def lookup_account(self, account: str) -> CustomerCard | None:
        return self.store.lookup("account", account)

    def write_interaction(self, interaction: Mapping[str, Any], *, key: str) -> None:
        """Nothing to do: the call's row is the interaction."""

    def close(self) -> None:
        """The store belongs to whoever opened it."""


class HttpCrm:
    """A CRM with an HTTP API, the built-in store behind it (see the module docstring)."""

    name = "http"

    def __init__(
        self,
        settings: HttpCrmSettings,
        store: CallStore,
        *,
        transport: httpx.BaseTransport | None = None,
        clock: Callable[[], float] = time.monotonic,
        remember: bool = True,
    ) -> None:
        self.settings = settings
        self.store = store
        self.fallback = StoreCrm(store)
        self.remember = remember
        self.writes_back = settings.interaction_url is not None
        self._clock = clock
        headers = {"Accept": "application/json", **settings.headers}
        authorization = settings.authorization()
        if authorization:
            headers["Authorization"] = authorization
        self._client = httpx.Client(
            headers=headers,
            timeout=httpx.Timeout(settings.timeout_s),
            transport=transport,
            follow_redirects=True,
        )
        self._cache: dict[tuple[str, str], tuple[float, CustomerCard | None]] = {}
        self._lock = threading.Lock()
        self._down_until = 0.0
        self.failures = 0
        """Look-ups answered by the fallback because the CRM failed (for health pages)."""

    # ------------------------------------------------------------------ look-ups

    def lookup_customer(self, number: str) -> CustomerCard | None:
        candidates = caller_candidates(number, self.store.region)
        if not candidates:
            return None  # not a phone number: nothing to ask anyone
        e164 = candidates[0]
        url = self.settings.customer_url.format(
            number=quote(e164, safe=""), digits=e164.lstrip("+"), raw=quote(number.strip(), safe="")
        )
        return self._lookup(("number", e164), url, lambda: self.fallback.lookup_customer(number))

    def lookup_account(self, account: str) -> CustomerCard | None:
        account = account.strip()
        if not account:
            return None
        if self.settings.account_url is None:
            return self.fallback.lookup_account(account)
        url = self.settings.account_url.format(account=quote(account, safe=""))
        return self._lookup(
            ("account", account), url, lambda: self.fallback.lookup_account(account)
        )

    def _lookup(
        self, key: tuple[str, str], url: str, fallback: Callable[[], CustomerCard | None]
    ) -> CustomerCard | None:
        now = self._clock()
        with self._lock:
            cached = self._cache.get(key)
            if cached is not None and cached[0] > now:
                return cached[1]
            down = now < self._down_until
        if down:
            self.failures += 1
            return fallback()
        try:
            card = self._fetch(url)
        except CrmUnavailable as exc:
            with self._lock:
                if self._clock() >= self._down_until:
                    log.warning("CRM look-up failed, using the built-in store: %s", exc)
                self._down_until = self._clock() + self.settings.retry_after_s
            self.failures += 1
            return fallback()
        with self._lock:
            self._down_until = 0.0
            if self.settings.cache_ttl_s > 0 and self.settings.cache_size > 0:
                if len(self._cache) >= self.settings.cache_size:
                    self._evict(now)
                self._cache[key] = (now + self.settings.cache_ttl_s, card)
        if card is not None and self.remember:
            try:
                self.store.remember(card, at=datetime.now(UTC))
            except Exception:
                log.exception("CRM card of %s not copied to the built-in store", card.customer_id)
        return card

    def _evict(self, now: float) -> None:
        for key in [k for k, (expires, _) in self._cache.items() if expires <= now]:
            del self._cache[key]
        while len(self._cache) >= self.settings.cache_size:
            del self._cache[next(iter(self._cache))]  # the oldest entry

    def _fetch(self, url: str) -> CustomerCard | None:
        try:
            response = self._client.get(url)
        except httpx.HTTPError as exc:  # timeouts, refused connections, protocol errors
            raise CrmUnavailable(f"GET {_redact(url)}: {type(exc).__name__}: {exc}") from exc
        if response.status_code == 404:
            return None
        if response.status_code != 200:
            raise CrmUnavailable(f"GET {_redact(url)}: HTTP {response.status_code}")
        try:
            data = response.json()
        except ValueError as exc:
            raise CrmUnavailable(f"GET {_redact(url)}: not JSON") from exc
        try:
            return card_from_json(data, self.settings.field_map, source=self.name)
        except (TypeError, ValueError) as exc:
            raise CrmUnavailable(f"GET {_redact(url)}: unreadable customer: {exc}") from exc

    def clear_cache(self) -> None:
        with self._lock:
            self._cache.clear()

    # ------------------------------------------------------------------ write-back

    def write_interaction(self, interaction: Mapping[str, Any], *, key: str) -> None:
        if self.settings.interaction_url is None:
            return
        url = self.settings.interaction_url.format(
            call_id=quote(str(interaction.get("call_id", "")), safe="")
        )
        try:
            response = self._client.post(
                url, json=dict(interaction), headers={"Idempotency-Key": key}
            )
        except httpx.HTTPError as exc:
            raise CrmUnavailable(f"POST {_redact(url)}: {type(exc).__name__}: {exc}") from exc
        status = response.status_code
        if 200 <= status < 300:
            return
        detail = f"POST {_redact(url)}: HTTP {status} {response.text[:200]!r}"
        if status >= 500 or status in _RETRYABLE:
            raise CrmUnavailable(detail)
        raise CrmRejected(detail)

    def close(self) -> None:
        self._client.close()


def card_from_json(
    data: Any, field_map: Mapping[str, str] | None = None, *, source: str = "http"
) -> CustomerCard | None:
    """A `CustomerCard` from a CRM's JSON (see the module docstring); None for an empty
    answer. Raises ValueError when there is no customer id or name."""
    if isinstance(data, list):
        if not data:
            return None
        data = data[0]
    if not isinstance(data, dict):
        raise ValueError(f"expected an object, got {type(data).__name__}")
    fields = dict(field_map or {})

    def get(name: str, *aliases: str) -> Any:
        if name in fields:
            return _path(data, fields[name])
        for key in (name, *aliases):
            if key in data:
                return data[key]
        return None

    customer_id = get("customer_id", "id")
    name = get("name")
    if customer_id in (None, "") or not name:
        raise ValueError("no customer_id or name")
    raw_tickets = get("open_tickets", "tickets") or []
    if not isinstance(raw_tickets, list):
        raise ValueError("tickets must be a list")
    tickets = [_ticket(t) for t in raw_tickets if isinstance(t, dict)]
    tickets = [t for t in tickets if t["status"] != "closed"]
    tickets.sort(key=lambda t: (-PRIORITY_ORDER.get(t["priority"], 0), t["sla_due_at"] or "~"))
    preferred = next((t["assignee"] for t in tickets if t["assignee"]), "")
    return CustomerCard(
        customer_id=str(customer_id),
        name=str(name),
        company=_str(get("company")),
        tier=_str(get("tier")) or "standard",
        vip=_bool(get("vip")),
        language=_str(get("language")),
        ticket_priority=tickets[0]["priority"] if tickets else "",
        open_tickets=tickets,
        account_number=_str(get("account_number")),
        email=_str(get("email")),
        owner=_str(get("owner")),
        tags=_list(get("tags")),
        phones=_list(get("phones", "phone")),
        preferred_agent=preferred,
        source=source,
    )


def _ticket(raw: Mapping[str, Any]) -> dict[str, str]:
    return {
        "ticket_id": _str(raw.get("ticket_id", raw.get("id"))),
        "subject": _str(raw.get("subject")),
        "priority": _str(raw.get("priority")).lower() or "normal",
        "status": _str(raw.get("status")).lower() or "open",
        "assignee": _str(raw.get("assignee")),
        "sla_due_at": _str(raw.get("sla_due_at")),
    }


def _path(data: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(data, dict) or part not in data:
            return None
        data = data[part]
    return data


def _str(value: Any) -> str:
    return "" if value is None else str(value)


def _bool(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in {"1", "true", "yes", "y", "vip"}
    return bool(value)


def _list(value: Any) -> list[str]:
    if value is None or value == "":
        return []
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    if isinstance(value, list):
        return [str(v) for v in value if v not in (None, "")]
    return [str(value)]


def _redact(url: str) -> str:
    """Query strings can carry tokens; logs get the path only."""
    return url.split("?", 1)[0]
