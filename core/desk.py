"""The agent desktop's CRM work: find and open customers, create and change them, their
tickets, the wrap-up after a call, and the call history — everything the web API asks
of the built-in CRM, off the event loop.

`Desk` sits between the routes (`softphone_web.app`, which decides who may do what and
writes the audit log) and the store (`crm_link.store`, blocking SQLAlchemy). Every
method here is a coroutine that hands its SQL to the core's one SQL thread (`sql`, an
executor with a single worker: the core's saves of a call and the desk's writes to the
same row must not race). `live` tells it about calls the core still holds in memory:
a wrap-up waits for the hang-up, and a caller linked to a new customer while the call is
up has no row yet — the link is kept here and written as soon as the core has saved
the row (at the next desk operation on calls, the wrap-up at the latest).
A transferred call (`core.control`) has several agents: one who handed it on wraps up
their part while it goes on — their notes are added under their name, and the call's
disposition and wrap-up time are its last agent's.

Write-back: an external CRM (`crm_link.crm.CrmLink`) receives interactions through the
outbox, so whatever changes a call's interaction — the wrap-up, a ticket opened on or
linked to the call, the caller linked to a customer — queues that call again. Customers
and tickets themselves are *not* sent: the adapter interface (`crm_link.adapters.
CrmAdapter`) only delivers interactions, and an HTTP CRM is configured with look-up and
interaction URLs only; with an external CRM, that CRM stays the master of its customers
(a customer created here is kept in the built-in store, which the HTTP adapter falls
back to when the CRM is away).

Errors say what was wrong: KeyError (no such call, customer or ticket), PermissionError
(another agent's call), ValueError and its kinds from the store (`BadPhone`, `PhoneTaken`,
`AccountTaken`, `OpenTickets`; a call still up; a new ticket for an unknown caller).
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Executor
from datetime import UTC, datetime
from typing import Any, Protocol, TypeVar

from crm_link.crm import CrmLink
from crm_link.store import CallStore

log = logging.getLogger("kefu.desk")

T = TypeVar("T")


class LiveCall(Protocol):
    """What the desk reads of a call the core holds (`core.app.Call`)."""

    @property
    def agent(self) -> str | None: ...

    @property
    def ended_at(self) -> float | None: ...

    @property
    def handoffs(self) -> list[dict[str, Any]]: ...


def handed_over_by(handoffs: Iterable[dict[str, Any]]) -> set[str]:
    """The agents who had the call before it was transferred (their part is over)."""
    return {str(h["from"]) for h in handoffs if h.get("from")}


def _utc_now() -> datetime:
    return datetime.now(UTC)


class Desk:
    def __init__(
        self,
        store: CallStore,
        crm: CrmLink,
        sql: Executor,
        *,
        live: Callable[[str], LiveCall | None],
        clock: Callable[[], datetime] = _utc_now,
    ) -> None:
        self.store = store
        self.crm = crm
        self._sql = sql
        self._live = live
        self._clock = clock
        self._pending: dict[str, str] = {}
        """call id -> customer id linked while the call had no row (SQL thread only)."""

    async def _run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._sql, functools.partial(fn, *args, **kwargs))

    def _live_agent(self, call_id: str, agent: str | None) -> bool:
        """Whether the core holds the call; PermissionError if it is another agent's."""
        live = self._live(call_id)
        if live is None:
            return False
        if agent is not None and live.agent != agent:
            raise PermissionError("not your call")
        return True

    # ------------------------------------------------------------------ customers

    async def customer_search(self, query: str) -> list[dict[str, Any]]:
        return await self._run(self._search_customers, query.strip())

    def _search_customers(self, query: str) -> list[dict[str, Any]]:
        return [
            {"customer_id": c.customer_id, "name": c.name, "company": c.company,
             "tier": c.tier, "vip": c.vip, "phone": c.phone}
            for c in self.store.search_customers(query)
        ]  # fmt: skip

    async def customer_card(self, customer_id: str) -> dict[str, Any] | None:
        return await self._run(self._customer_card, customer_id)

    def _customer_card(self, customer_id: str) -> dict[str, Any] | None:
        customer = self.store.customer(customer_id)
        if customer is None:
            return None
        tickets = self.store.customer_tickets(customer_id) or []
        return {
            "customer_id": customer.customer_id, "name": customer.name,
            "company": customer.company, "tier": customer.tier, "vip": customer.vip,
            "language": customer.language, "phone": customer.phone,
            "phones": [p.e164 for p in customer.phones if p.e164],
            "account_number": customer.account_number or "", "email": customer.email or "",
            "owner": customer.owner or "", "tags": list(customer.tags or []),
            "open_tickets": [t for t in tickets if t["status"] != "closed"],
            "recent_calls": self.store.interactions(customer_id),
        }  # fmt: skip

    async def create_customer(
        self,
        fields: dict[str, Any],
        *,
        phones: Sequence[str],
        call_id: str | None = None,
        agent: str | None = None,
    ) -> dict[str, Any]:
        """A new customer; with `call_id`, that call's caller is this customer (the
        unknown caller's screen pop). Returns the new card. `agent` None: a supervisor."""
        known = self._live_agent(call_id, agent) if call_id else False
        return await self._run(self._create_customer, fields, list(phones), call_id, agent, known)

    def _create_customer(
        self,
        fields: dict[str, Any],
        phones: list[str],
        call_id: str | None,
        agent: str | None,
        known: bool,
    ) -> dict[str, Any]:
        if call_id:
            self._check_call(call_id, agent, known)
        customer_id = self.store.create_customer(phones=phones, at=self._clock(), **fields)
        if call_id:
            self._link(call_id, customer_id)
        card = self._customer_card(customer_id)
        assert card is not None
        return card

    async def update_customer(
        self,
        customer_id: str,
        fields: dict[str, Any],
        *,
        add_phones: Sequence[str] = (),
        remove_phones: Sequence[str] = (),
    ) -> dict[str, Any]:
        """Change a customer; returns {"changed": [...], "customer": card}."""
        return await self._run(
            self._update_customer, customer_id, fields, list(add_phones), list(remove_phones)
        )

    def _update_customer(
        self, customer_id: str, fields: dict[str, Any], add: list[str], remove: list[str]
    ) -> dict[str, Any]:
        try:
            changed = self.store.update_customer(
                customer_id, at=self._clock(), add_phones=add, remove_phones=remove, **fields
            )
        except KeyError:
            raise KeyError(f"unknown customer {customer_id!r}") from None
        return {"changed": changed, "customer": self._customer_card(customer_id)}

    async def delete_customer(self, customer_id: str) -> dict[str, Any]:
        return await self._run(self._delete_customer, customer_id)

    def _delete_customer(self, customer_id: str) -> dict[str, Any]:
        try:
            gone = self.store.delete_customer(customer_id)
        except KeyError:
            raise KeyError(f"unknown customer {customer_id!r}") from None
        return {"customer_id": customer_id, "deleted": True, **gone}

    async def link_call(
        self, call_id: str, customer_id: str, *, agent: str | None
    ) -> dict[str, Any]:
        """The caller of `call_id` is `customer_id` (found by a search, or just created)."""
        known = self._live_agent(call_id, agent)
        return await self._run(self._link_call, call_id, customer_id, agent, known)

    def _link_call(
        self, call_id: str, customer_id: str, agent: str | None, known: bool
    ) -> dict[str, Any]:
        self._check_call(call_id, agent, known)
        if self.store.customer(customer_id) is None:
            raise KeyError(f"unknown customer {customer_id!r}")
        return {"call_id": call_id, "customer_id": customer_id,
                "saved": self._link(call_id, customer_id)}  # fmt: skip

    def _check_call(self, call_id: str, agent: str | None, known: bool) -> None:
        """The call exists (held by the core or stored) and is `agent`'s (None: anyone's)."""
        if known:
            return  # `_live_agent` checked the agent on the event loop
        record = self.store.get(call_id)
        if record is None:
            raise KeyError(f"no call {call_id!r}")
        if agent is not None and record.agent != agent:
            raise PermissionError("not your call")

    def _link(self, call_id: str, customer_id: str) -> bool:
        """Link now, or once the core has written the call's row; True: written."""
        self._apply_pending()
        if not self.store.link_customer(call_id, customer_id):
            self._pending[call_id] = customer_id
            return False
        self.crm.record_interaction(call_id, now=self._clock())
        return True

    def _apply_pending(self) -> None:
        for call_id, customer_id in list(self._pending.items()):
            try:
                if not self.store.link_customer(call_id, customer_id):
                    continue
                self.crm.record_interaction(call_id, now=self._clock())
            except (KeyError, ValueError) as exc:  # deleted meanwhile, or linked elsewhere
                log.warning("call %s not linked to customer %s: %s", call_id, customer_id, exc)
            del self._pending[call_id]

    # ------------------------------------------------------------------ tickets

    async def customer_tickets(self, customer_id: str) -> list[dict[str, str]] | None:
        return await self._run(self.store.customer_tickets, customer_id)

    async def ticket(self, ticket_id: str) -> dict[str, Any] | None:
        return await self._run(self.store.ticket_detail, ticket_id)

    async def create_ticket(
        self,
        *,
        customer_id: str,
        subject: str,
        actor: str,
        agent: str | None,
        priority: str = "normal",
        channel: str = "phone",
        assignee: str | None = None,
        sla_due_at: datetime | None = None,
        description: str | None = None,
        call_id: str | None = None,
    ) -> dict[str, Any]:
        """A new ticket for the customer (linked to `call_id`, an own call, if given);
        returns the ticket with its history."""
        known = self._live_agent(call_id, agent) if call_id else False
        return await self._run(
            self._create_ticket, known=known, customer_id=customer_id, subject=subject,
            actor=actor, agent=agent, priority=priority, channel=channel, assignee=assignee,
            sla_due_at=sla_due_at, description=description, call_id=call_id,
        )  # fmt: skip

    def _create_ticket(
        self, *, known: bool, customer_id: str, agent: str | None, call_id: str | None,
        **fields: Any,
    ) -> dict[str, Any]:  # fmt: skip
        if self.store.customer(customer_id) is None:
            raise KeyError(f"unknown customer {customer_id!r}")
        if call_id:
            self._check_call(call_id, agent, known)
        ticket_id = self.store.create_ticket(
            customer_id=customer_id, call_id=call_id or None, at=self._clock(), **fields
        )
        if call_id:
            self.crm.record_interaction(call_id, now=self._clock())
        detail = self.store.ticket_detail(ticket_id)
        assert detail is not None
        return detail

    async def update_ticket(
        self,
        ticket_id: str,
        changes: dict[str, Any],
        *,
        actor: str,
        agent: str | None,
        comment: str | None = None,
        call_id: str | None = None,
    ) -> dict[str, Any]:
        """Change a ticket's status, priority, assignee... (a history row each), add a
        comment, link it to `call_id` (an own call); returns {"changed", "ticket"}."""
        known = self._live_agent(call_id, agent) if call_id else False
        return await self._run(
            self._update_ticket, ticket_id, changes, actor, agent, comment, call_id, known
        )

    def _update_ticket(
        self, ticket_id: str, changes: dict[str, Any], actor: str, agent: str | None,
        comment: str | None, call_id: str | None, known: bool,
    ) -> dict[str, Any]:  # fmt: skip
        if call_id:
            self._check_call(call_id, agent, known)
        now = self._clock()
        try:
            changed = self.store.update_ticket(
                ticket_id, at=now, actor=actor, note=comment or None, **changes
            )
        except KeyError:
            raise KeyError(f"unknown ticket {ticket_id!r}") from None
        if comment:
            changed.append("comment")
        if call_id:
            before = self.store.linked_tickets(call_id)
            self.store.link_tickets(call_id, [ticket_id], at=now, actor=actor)
            if ticket_id not in before:
                changed.append("call")
            self.crm.record_interaction(call_id, now=now)
        return {"changed": changed, "ticket": self.store.ticket_detail(ticket_id)}

    # ------------------------------------------------------------------ calls

    async def wrap_up(
        self,
        call_id: str,
        *,
        agent: str | None,
        disposition: str,
        notes: str = "",
        new_ticket: dict[str, str] | None = None,
        link_tickets: list[str] | None = None,
    ) -> dict[str, Any]:
        """What the agent records after the call: a disposition, notes, a new ticket for
        the customer and/or existing tickets, all linked to the call's interaction, then
        queued for the external CRM. `agent` None: a supervisor acting on any call.

        KeyError: no such (finished) call or ticket; PermissionError: not this agent's
        call; ValueError: the call is still up, or a new ticket for a caller the CRM does
        not know (create the customer first)."""
        live = self._live(call_id)
        if live is not None and live.ended_at is None:
            # an agent who handed the call on wraps up their part while it goes on
            earlier = handed_over_by(live.handoffs)
            if agent is not None and agent != live.agent and agent not in earlier:
                raise PermissionError("not your call")
            if agent is None or agent == live.agent or agent not in earlier:
                raise ValueError("the call is still up: hang up first")
        return await self._run(
            self._wrap_up, call_id, agent, disposition, notes, new_ticket,
            list(link_tickets or []),
        )  # fmt: skip

    def _wrap_up(
        self,
        call_id: str,
        agent: str | None,
        disposition: str,
        notes: str,
        new_ticket: dict[str, str] | None,
        link_tickets: list[str],
    ) -> dict[str, Any]:
        self._apply_pending()  # a customer created during the call
        record = self.store.get(call_id)
        if record is None:
            raise KeyError(f"no call {call_id!r}")
        handoffs = json.loads(record.handoffs) if record.handoffs else []
        earlier = handed_over_by(handoffs)
        if agent is not None and record.agent != agent and agent not in earlier:
            raise PermissionError("not your call")
        final = agent is None or record.agent == agent
        if handoffs and notes:
            # each agent of a transferred call adds their own part
            notes = "\n".join(filter(None, [record.notes, f"[{agent or 'supervisor'}] {notes}"]))
        elif not notes:
            notes = record.notes or ""
        now = self._clock()
        tickets = list(link_tickets)
        if new_ticket is not None:
            if not record.customer_id:
                raise ValueError("the caller is not a known customer: create the customer first")
            tickets.append(
                self.store.create_ticket(
                    customer_id=record.customer_id,
                    subject=new_ticket["subject"],
                    priority=new_ticket.get("priority", "normal"),
                    at=now,
                    actor=agent or "supervisor",
                    assignee=agent or record.agent,
                    call_id=call_id,
                )
            )
        ended = record.ended_at
        if ended is not None and ended.tzinfo is None:
            ended = ended.replace(tzinfo=UTC)  # SQLite gives naive datetimes back
        self.store.wrap_up(
            call_id,
            # the call's outcome is its last agent's; an earlier one's only until then
            disposition=disposition if final or not record.disposition else record.disposition,
            notes=notes or None,
            at=now,
            # the wrap-up time is the last agent's (after the call ended)
            wrap_up_s=(now - ended).total_seconds() if ended is not None and final else None,
            tickets=tickets,
            actor=agent or "supervisor",
        )
        self.crm.record_interaction(call_id, now=now)
        return {"call_id": call_id, "disposition": disposition, "tickets": tickets}

    async def calls(
        self,
        *,
        agent: str | None = None,
        customer_id: str | None = None,
        limit: int = 20,
        before: str | None = None,
    ) -> list[dict[str, Any]]:
        """Call history, newest first (see `CallStore.calls`)."""
        return await self._run(
            self._calls, agent=agent, customer_id=customer_id, limit=limit, before=before
        )

    def _calls(self, **query: Any) -> list[dict[str, Any]]:
        self._apply_pending()
        try:
            return self.store.calls(**query)
        except KeyError:
            raise KeyError(f"no call {query['before']!r} to page from") from None

    async def interaction(self, call_id: str) -> dict[str, Any] | None:
        """One stored call in full (IVR path, survey, wrap-up, tickets), with the
        customer's name."""
        return await self._run(self._interaction, call_id)

    def _interaction(self, call_id: str) -> dict[str, Any] | None:
        self._apply_pending()
        payload = self.store.interaction(call_id)
        if payload is None:
            return None
        customer = self.store.customer(payload["customer_id"]) if payload["customer_id"] else None
        return {**payload, "customer_name": customer.name if customer else None}
