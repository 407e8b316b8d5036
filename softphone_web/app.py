"""The HTTP face of the core (FastAPI): sign-in, agents, calls, customers, agent sockets.

Every request is authenticated (`softphone_web.auth`): a session cookie from
`POST /api/login` or `Authorization: Bearer <token>`. Roles are enforced here, on the
server: an agent sees and changes only itself, its own calls and the customers it
serves or searches; a supervisor sees everyone; an admin may also reload the flows and
disable accounts. Two doors stay open to this machine only: `/api/health` (what
`kefu serve` waits on before it prints `kefu ready`) and `/api/config/reload` (what
`kefu config reload` calls) — processes on the host are as trusted as a SIGHUP.

The CRM routes (customers, tickets, interactions, an agent's call history) hand their
work to `core.desk` (`core.desk.Desk`, SQL off the event loop) and keep the same rule:
an agent opens a customer only after searching for it, taking its call or creating it,
reads only its own calls, and links tickets and customers only to its own calls; only
supervisors and admins delete customers (never one with open tickets). Every read and
write of a record is audited. `/api/queues` is the queue engine's live view (read only).

`/ws/agent` is the agent's socket: the Origin must be on `http.allowed_origins`, the
session must be an agent's, and the core pushes the screen pop (customer card, open
tickets, recent calls, the IVR path, queue and wait, why this agent) when a call is
offered — before the agent's phone rings — then answered / ended updates.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Protocol

from fastapi import Depends, FastAPI, HTTPException, Query, Request, Response, WebSocket
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from pydantic import AwareDatetime, BaseModel, Field
from starlette.websockets import WebSocketDisconnect

from acd.engine import AcdEngine, AgentState
from acd.model import STAFFED
from config.schema import Settings
from core.desk import Desk
from crm_link.store import BadPhone
from softphone_web.auth import (
    Account,
    Accounts,
    AuditLog,
    LoginLimiter,
    Role,
    Session,
    Sessions,
)
from softphone_web.hub import Hub

LOOPBACK = frozenset({"127.0.0.1", "::1", "localhost"})
COOKIE = "kefu_session"
STATIC = Path(__file__).resolve().parent / "static"


class ControlView(Protocol):
    """Call control (`core.control.CallControl`). `agent` None: a supervisor acting on
    any call. KeyError: no such call; PermissionError: not the agent's call;
    RuntimeError: not now (with the reason); ValueError: a malformed request."""

    def hold(self, call_id: str, *, agent: str | None) -> dict[str, Any]: ...
    def resume(self, call_id: str, *, agent: str | None) -> dict[str, Any]: ...
    def transfer(
        self, call_id: str, *, agent: str | None, to_agent: str | None = None,
        to_queue: str | None = None,
    ) -> dict[str, Any]: ...  # fmt: skip
    def consult(
        self, call_id: str, *, agent: str | None, to_agent: str | None = None,
        to_queue: str | None = None,
    ) -> dict[str, Any]: ...  # fmt: skip
    def complete(self, call_id: str, *, agent: str | None) -> dict[str, Any]: ...
    def cancel(self, call_id: str, *, agent: str | None) -> dict[str, Any]: ...
    def targets(self, agent: str | None) -> dict[str, Any]: ...


# Routes are `async def` on purpose: they run on the core's event loop thread, the only
# thread allowed to touch the engines. CRM work goes through `core.desk`, which hands its
# SQL to the core's SQL thread.
class CoreView(Protocol):
    @property
    def control(self) -> ControlView: ...
    @property
    def settings(self) -> Settings: ...
    @property
    def acd(self) -> AcdEngine: ...
    @property
    def desk(self) -> Desk: ...
    def now(self) -> float:
        """The queue engine's clock."""
        ...

    def health(self) -> dict[str, Any]: ...
    def agents_view(self) -> list[dict[str, Any]]: ...
    def calls_view(self) -> list[dict[str, Any]]: ...
    def set_agent_state(self, agent_id: str, state: str, reason: str = "") -> None: ...
    async def reload_flows(self) -> dict[str, Any]: ...
    def agent_snapshot(self, agent_id: str) -> dict[str, Any]: ...


@dataclass
class Web:
    """Everything the routes need besides the core: who may do what, and the sockets."""

    accounts: Accounts
    sessions: Sessions
    limiter: LoginLimiter
    audit: AuditLog
    hub: Hub
    origins: frozenset[str]
    phones: dict[str, dict[str, str]]
    """agent -> what its browser phone needs to register (user, password, domain, ws)"""

    @classmethod
    def from_settings(cls, settings: Settings, data_dir: Path) -> Web:
        web = cls(
            accounts=Accounts(accounts_from_settings(settings)),
            sessions=Sessions(),
            limiter=LoginLimiter(),
            audit=AuditLog(data_dir / "audit.jsonl"),
            hub=Hub(),
            origins=settings.http.origins(),
            phones=browser_phones(settings),
        )
        web.sessions.on_end.append(lambda s: web.hub.close_session(s.token))
        return web


def accounts_from_settings(settings: Settings) -> list[Account]:
    """Agents sign in as themselves; `users:` adds supervisors and admins."""
    out = [
        Account(
            user=agent_id,
            role="agent",
            name=agent.name or agent_id,
            password_hash=agent.web_password_hash,
            password=None if agent.web_password_hash else agent.password,
            agent=agent_id,
        )
        for agent_id, agent in settings.agents.items()
    ]
    for name, user in settings.users.items():
        out.append(Account(user=name, role=user.role, name=user.name or name,
                           password_hash=user.password_hash, password=user.password))  # fmt: skip
    return out


def browser_phones(settings: Settings) -> dict[str, dict[str, str]]:
    """Each agent's SIP account, for the desktop's JsSIP phone over the edge's WebSocket
    (wss when configured); empty when the edge takes no browsers."""
    edge = settings.edge
    if edge.wss_port is not None:
        ws = f"wss://{edge.sip_host}:{edge.wss_port}"
    elif edge.ws_port is not None:
        ws = f"ws://{edge.sip_host}:{edge.ws_port}"
    else:
        return {}
    domain = f"{edge.sip_host}:{edge.sip_port}"
    return {
        agent_id: {"user": a.sip_user, "password": a.password, "domain": domain, "ws": ws}
        for agent_id, a in settings.agents.items()
    }


class LoginRequest(BaseModel):
    user: str
    password: str


class NewTicket(BaseModel):
    subject: str = Field(min_length=1, max_length=255)
    priority: Literal["low", "normal", "high", "urgent"] = "normal"


class WrapUpRequest(BaseModel):
    disposition: str = Field(min_length=1, max_length=64)
    notes: str = Field("", max_length=4000)
    new_ticket: NewTicket | None = None
    link_tickets: list[str] = []


class TransferRequest(BaseModel):
    """Name an agent or a queue. Blind: you leave the call at once. Attended: the caller
    holds while you talk to them first, then `.../transfer/complete` or `/cancel`."""

    to_agent: str | None = None
    to_queue: str | None = None
    mode: Literal["blind", "attended"] = "blind"


Priority = Literal["low", "normal", "high", "urgent"]
TicketStatus = Literal["open", "pending", "closed"]
PHONES_DOC = "numbers in any form (`555-201-3344`, `+44 20 7946 0958`); stored in E.164"


class NewCustomer(BaseModel):
    name: str = Field(min_length=1, max_length=255)
    company: str = Field("", max_length=255)
    tier: str = Field("standard", min_length=1, max_length=32)
    vip: bool = False
    language: str = Field("", max_length=8)
    phones: list[str] = Field([], max_length=10, description=PHONES_DOC)
    account_number: str | None = Field(None, max_length=64)
    email: str | None = Field(None, max_length=255)
    tags: list[str] = Field([], max_length=20)
    owner: str | None = Field(None, max_length=64)
    call_id: str | None = Field(
        None, description="a call of yours whose caller this customer is (the unknown caller)"
    )


class CustomerChanges(BaseModel):
    """Only the fields given change; `""` clears account_number, email or owner."""

    name: str | None = Field(None, min_length=1, max_length=255)
    company: str | None = Field(None, max_length=255)
    tier: str | None = Field(None, min_length=1, max_length=32)
    vip: bool | None = None
    language: str | None = Field(None, max_length=8)
    account_number: str | None = Field(None, max_length=64)
    email: str | None = Field(None, max_length=255)
    tags: list[str] | None = Field(None, max_length=20)
    owner: str | None = Field(None, max_length=64)
    add_phones: list[str] = Field([], max_length=10, description=PHONES_DOC)
    remove_phones: list[str] = Field([], max_length=10)


class CallCustomer(BaseModel):
    customer_id: str = Field(min_length=1, max_length=64)


class NewTicketRequest(BaseModel):
    customer_id: str = Field(min_length=1, max_length=64)
    subject: str = Field(min_length=1, max_length=255)
    priority: Priority = "normal"
    channel: str = Field("phone", min_length=1, max_length=16)
    assignee: str | None = Field(None, description="an agent id; default: you (agents)")
    sla_due_at: AwareDatetime | None = Field(None, description="resolve by (ISO 8601, with zone)")
    description: str | None = Field(None, max_length=4000)
    call_id: str | None = Field(None, description="a call of yours to link the ticket to")


class TicketChanges(BaseModel):
    """Only the fields given change (a history row each); `assignee: ""` unassigns."""

    status: TicketStatus | None = None
    priority: Priority | None = None
    assignee: str | None = None
    subject: str | None = Field(None, min_length=1, max_length=255)
    sla_due_at: AwareDatetime | None = None
    comment: str | None = Field(None, max_length=4000)
    call_id: str | None = Field(None, description="a call of yours to link the ticket to")


class AgentStateRequest(BaseModel):
    state: str
    reason: str = ""


def client_of(request: Request | WebSocket) -> str:
    return request.client.host if request.client else ""


def session_of(request: Request | WebSocket) -> Session | None:
    """The session of a cookie, a bearer token or (sockets only) a `token` parameter."""
    web: Web = request.app.state.web
    token = request.cookies.get(COOKIE)
    header = request.headers.get("authorization", "")
    if header.lower().startswith("bearer "):
        token = header[7:].strip()
    if isinstance(request, WebSocket) and not token:
        token = request.query_params.get("token")
    return web.sessions.get(token)


def signed_in(request: Request) -> Session:
    session = session_of(request)
    if session is None:
        raise HTTPException(401, "sign in first (POST /api/login)")
    return session


def needs(role: Role) -> Any:
    def check(session: Annotated[Session, Depends(signed_in)]) -> Session:
        if not session.account.can(role):
            raise HTTPException(403, f"needs the {role} role")
        return session

    return check


Limit = Annotated[int, Query(ge=1, le=200, description="calls per page")]
Before = Annotated[
    str | None, Query(description="the last call id of the previous page: older calls")
]
Signed = Annotated[Session, Depends(signed_in)]
Supervisor = Annotated[Session, Depends(needs("supervisor"))]
Admin = Annotated[Session, Depends(needs("admin"))]


def create_app(core: CoreView, web: Web) -> FastAPI:
    app = FastAPI(title="kefu", version="0.2.0", summary="Contact-center core API")
    app.state.web = web

    # -- sign-in

    @app.post("/api/login")
    async def login(body: LoginRequest, request: Request, response: Response) -> dict[str, Any]:
        client = client_of(request)
        wait = web.limiter.retry_after(client, body.user)
        if wait > 0:
            web.audit.write("login.limited", user=body.user, client=client)
            raise HTTPException(
                429, "too many failed sign-ins; try again later",
                headers={"Retry-After": str(int(wait) + 1)},
            )  # fmt: skip
        account = web.accounts.verify(body.user, body.password)
        if account is None:
            web.limiter.failed(client, body.user)
            web.audit.write("login.failed", user=body.user, client=client)
            raise HTTPException(401, "wrong user name or password, or the account is disabled")
        web.limiter.succeeded(client, body.user)
        session = web.sessions.start(account, client)
        web.audit.write("login", user=account.user, client=client, role=account.role)
        response.set_cookie(COOKIE, session.token, httponly=True, samesite="strict")
        return {"token": session.token, **_me(session)}

    @app.post("/api/logout")
    async def logout(session: Signed, request: Request, response: Response) -> dict[str, str]:
        web.sessions.end(session)
        web.audit.write("logout", user=session.account.user, client=client_of(request))
        response.delete_cookie(COOKIE)
        return {"status": "signed out"}

    @app.get("/api/me")
    async def me(session: Signed) -> dict[str, Any]:
        return _me(session)

    @app.get("/api/me/sip")
    async def my_phone(session: Signed, request: Request) -> dict[str, str]:
        """The signed-in agent's own SIP account, for its browser phone."""
        agent = session.account.agent
        phone = web.phones.get(agent) if agent else None
        if phone is None:
            raise HTTPException(404, "no browser phone: the edge has no WebSocket port")
        web.audit.write("phone.credentials", user=session.account.user, client=client_of(request))
        return phone

    @app.post("/api/users/{user}/disable")
    async def disable(user: str, session: Admin,
                      request: Request) -> dict[str, Any]:  # fmt: skip
        if web.accounts.get(user) is None:
            raise HTTPException(404, f"unknown account {user!r}")
        web.accounts.disabled.add(user)
        ended = web.sessions.end_user(user)
        web.audit.write("account.disabled", user=session.account.user,
                        client=client_of(request), account=user, sessions_ended=ended)  # fmt: skip
        return {"user": user, "disabled": True, "sessions_ended": ended}

    @app.post("/api/users/{user}/enable")
    async def enable(user: str, session: Admin,
                     request: Request) -> dict[str, Any]:  # fmt: skip
        if web.accounts.get(user) is None:
            raise HTTPException(404, f"unknown account {user!r}")
        web.accounts.disabled.discard(user)
        web.audit.write("account.enabled", user=session.account.user,
                        client=client_of(request), account=user)  # fmt: skip
        return {"user": user, "disabled": False}

    # -- the center

    @app.get("/api/health")
    async def health(request: Request) -> JSONResponse:
        if client_of(request) not in LOOPBACK:
            signed_in(request)
        report = core.health()
        return JSONResponse(report, status_code=200 if report["status"] == "ok" else 503)

    @app.get("/api/agents")
    async def agents(session: Signed) -> list[dict[str, Any]]:
        rows = core.agents_view()
        if session.account.can("supervisor"):
            return rows
        return [r for r in rows if r["agent"] == session.account.agent]

    @app.put("/api/agents/{agent_id}/state")
    async def set_state(agent_id: str, body: AgentStateRequest, session: Signed) -> dict[str, str]:
        if not session.account.can("supervisor") and session.account.agent != agent_id:
            raise HTTPException(403, "an agent may change only its own state")
        try:
            core.set_agent_state(agent_id, body.state, body.reason)
        except KeyError as exc:
            raise HTTPException(404, str(exc.args[0])) from None
        except ValueError as exc:
            raise HTTPException(422, str(exc)) from None
        except RuntimeError as exc:  # an illegal transition, e.g. away while on a call
            raise HTTPException(409, str(exc)) from None
        return {"agent": agent_id, "state": body.state}

    @app.get("/api/calls")
    async def calls(session: Signed) -> list[dict[str, Any]]:
        rows = core.calls_view()
        if session.account.can("supervisor"):
            return rows
        return [r for r in rows if r["agent"] == session.account.agent]

    @app.get("/api/calls/{call_id}")
    async def call(call_id: str, session: Signed, request: Request) -> dict[str, Any]:
        row = next((r for r in core.calls_view() if r["call_id"] == call_id), None)
        if row is None:
            raise HTTPException(404, f"no live call {call_id!r}")
        if not session.account.can("supervisor") and row["agent"] != session.account.agent:
            web.audit.write("call.denied", user=session.account.user, client=client_of(request),
                            call_id=call_id)  # fmt: skip
            raise HTTPException(403, "not your call")
        web.audit.write("call.read", user=session.account.user, client=client_of(request),
                        call_id=call_id)  # fmt: skip
        return row

    @app.post("/api/calls/{call_id}/wrapup")
    async def wrap_up(
        call_id: str, body: WrapUpRequest, session: Signed, request: Request
    ) -> dict[str, Any]:
        """After the call: disposition, notes, a new ticket and/or linked tickets."""
        agent = None if session.account.can("supervisor") else session.account.agent
        try:
            result = await core.desk.wrap_up(
                call_id,
                agent=agent,
                disposition=body.disposition,
                notes=body.notes,
                new_ticket=body.new_ticket.model_dump() if body.new_ticket else None,
                link_tickets=body.link_tickets,
            )
        except KeyError as exc:
            raise HTTPException(404, str(exc.args[0])) from None
        except PermissionError as exc:
            raise HTTPException(403, str(exc)) from None
        except ValueError as exc:
            raise HTTPException(409, str(exc)) from None
        web.audit.write("call.wrapup", user=session.account.user, client=client_of(request),
                        call_id=call_id, disposition=body.disposition,
                        tickets=result["tickets"])  # fmt: skip
        return result

    def control(
        action: str, call_id: str, session: Session, request: Request, **kw: Any
    ) -> dict[str, Any]:
        """Run one call-control request, audited, with its refusal as an HTTP status."""
        agent = None if session.account.can("supervisor") else session.account.agent
        ops = core.control
        handlers = {
            "hold": ops.hold,
            "resume": ops.resume,
            "transfer": ops.transfer,
            "consult": ops.consult,
            "complete": ops.complete,
            "cancel": ops.cancel,
        }
        try:
            result = handlers[action](call_id, agent=agent, **kw)
        except KeyError as exc:
            raise HTTPException(404, str(exc.args[0])) from None
        except PermissionError as exc:
            web.audit.write("call.denied", user=session.account.user, client=client_of(request),
                            call_id=call_id, action=action)  # fmt: skip
            raise HTTPException(403, str(exc)) from None
        except RuntimeError as exc:
            raise HTTPException(409, str(exc)) from None
        except ValueError as exc:
            raise HTTPException(422, str(exc)) from None
        web.audit.write(f"call.{action}", user=session.account.user, client=client_of(request),
                        call_id=call_id, **{k: v for k, v in kw.items() if v})  # fmt: skip
        return result

    @app.get("/api/transfer/targets")
    async def transfer_targets(session: Signed) -> dict[str, Any]:
        """The agents (with their state) and queues a call can be transferred to."""
        return core.control.targets(session.account.agent)

    @app.post("/api/calls/{call_id}/hold")
    async def hold(call_id: str, session: Signed, request: Request) -> dict[str, Any]:
        """Put the caller on hold: they hear the queue's music; the recording goes on."""
        return control("hold", call_id, session, request)

    @app.post("/api/calls/{call_id}/resume")
    async def resume(call_id: str, session: Signed, request: Request) -> dict[str, Any]:
        """Take the caller off hold."""
        return control("resume", call_id, session, request)

    @app.post("/api/calls/{call_id}/transfer")
    async def transfer(
        call_id: str, body: TransferRequest, session: Signed, request: Request
    ) -> dict[str, Any]:
        """Transfer the call to an agent or a queue, blind or attended."""
        action = "transfer" if body.mode == "blind" else "consult"
        return control(action, call_id, session, request, to_agent=body.to_agent,
                       to_queue=body.to_queue)  # fmt: skip

    @app.post("/api/calls/{call_id}/transfer/complete")
    async def complete_transfer(call_id: str, session: Signed, request: Request) -> dict[str, Any]:
        """Attended transfer: hand the caller to the agent you consulted."""
        return control("complete", call_id, session, request)

    @app.post("/api/calls/{call_id}/transfer/cancel")
    async def cancel_transfer(call_id: str, session: Signed, request: Request) -> dict[str, Any]:
        """Attended transfer: end the consultation and take the caller back."""
        return control("cancel", call_id, session, request)

    @app.get("/api/customers")
    async def customers(q: str, session: Signed, request: Request) -> list[dict[str, Any]]:
        found = await core.desk.customer_search(q)
        session.customers.update(c["customer_id"] for c in found)
        web.audit.write("customer.search", user=session.account.user, client=client_of(request),
                        query=q, found=len(found))  # fmt: skip
        return found

    def note(event: str, session: Session, request: Request, **detail: Any) -> None:
        """An audit log entry for what `session` did."""
        web.audit.write(event, user=session.account.user, client=client_of(request), **detail)

    def open_customer(session: Session, request: Request, customer_id: str) -> None:
        """An agent opens only customers it served or searched (403, audited)."""
        if session.account.can("supervisor") or customer_id in session.customers:
            return
        note("customer.denied", session, request, customer_id=customer_id)
        raise HTTPException(403, "search for the customer or take their call first")

    def as_agent(session: Session) -> str | None:
        """The agent whose own calls this session may touch; None: any (supervisors)."""
        return None if session.account.can("supervisor") else session.account.agent or ""

    def known_agent(agent_id: str | None) -> None:
        if agent_id and agent_id not in core.settings.agents:
            raise HTTPException(422, f"unknown agent {agent_id!r}")

    @app.get("/api/customers/{customer_id}")
    async def customer(customer_id: str, session: Signed, request: Request) -> dict[str, Any]:
        open_customer(session, request, customer_id)
        card = await core.desk.customer_card(customer_id)
        if card is None:
            raise HTTPException(404, f"unknown customer {customer_id!r}")
        note("customer.read", session, request, customer_id=customer_id)
        return card

    @app.post("/api/customers", status_code=201)
    async def create_customer(
        body: NewCustomer, session: Signed, request: Request
    ) -> dict[str, Any]:
        """A new customer (numbers normalised to E.164; one owned by another customer:
        409). With `call_id`, that call's caller becomes this customer, so its wrap-up
        can open a ticket for them. Returns the card."""
        fields = body.model_dump(exclude={"phones", "call_id"})
        try:
            card = await core.desk.create_customer(
                fields, phones=body.phones, call_id=body.call_id, agent=as_agent(session)
            )
        except REFUSED as exc:
            raise refusal(exc) from None
        session.customers.add(card["customer_id"])
        note("customer.create", session, request, customer_id=card["customer_id"],
              call_id=body.call_id, phones=card["phones"])  # fmt: skip
        return card

    @app.patch("/api/customers/{customer_id}")
    async def update_customer(
        customer_id: str, body: CustomerChanges, session: Signed, request: Request
    ) -> dict[str, Any]:
        """Change the fields given; add or remove numbers. Returns what changed and
        the card."""
        open_customer(session, request, customer_id)
        fields = body.model_dump(exclude_unset=True, exclude={"add_phones", "remove_phones"})
        fields = {k: v for k, v in fields.items() if v is not None}
        try:
            result = await core.desk.update_customer(
                customer_id, fields, add_phones=body.add_phones, remove_phones=body.remove_phones
            )
        except REFUSED as exc:
            raise refusal(exc) from None
        note("customer.update", session, request, customer_id=customer_id,
              changed=result["changed"])  # fmt: skip
        return result

    @app.delete("/api/customers/{customer_id}")
    async def delete_customer(
        customer_id: str, session: Supervisor, request: Request
    ) -> dict[str, Any]:
        """Supervisors and admins. Refused (409) while the customer has open or pending
        tickets; otherwise the customer, their numbers and closed tickets are deleted and
        their calls stay in the call records, no longer linked to them."""
        try:
            result = await core.desk.delete_customer(customer_id)
        except REFUSED as exc:
            note("customer.delete.refused", session, request, customer_id=customer_id,
                  reason=str(exc))  # fmt: skip
            raise refusal(exc) from None
        note("customer.delete", session, request, **result)
        return result

    @app.get("/api/customers/{customer_id}/tickets")
    async def customer_tickets(
        customer_id: str, session: Signed, request: Request
    ) -> list[dict[str, str]]:
        """Every ticket of the customer: open ones most urgent first, then closed ones."""
        open_customer(session, request, customer_id)
        tickets = await core.desk.customer_tickets(customer_id)
        if tickets is None:
            raise HTTPException(404, f"unknown customer {customer_id!r}")
        note("customer.tickets.read", session, request, customer_id=customer_id)
        return tickets

    @app.put("/api/calls/{call_id}/customer")
    async def call_customer(
        call_id: str, body: CallCustomer, session: Signed, request: Request
    ) -> dict[str, Any]:
        """Say who called (your own call): a customer you found or created."""
        open_customer(session, request, body.customer_id)
        try:
            result = await core.desk.link_call(call_id, body.customer_id, agent=as_agent(session))
        except REFUSED as exc:
            raise refusal(exc) from None
        note("call.customer", session, request, call_id=call_id, customer_id=body.customer_id)
        return result

    # -- tickets

    async def readable_ticket(ticket_id: str, session: Session, request: Request) -> dict[str, Any]:
        ticket = await core.desk.ticket(ticket_id)
        if ticket is None:
            raise HTTPException(404, f"unknown ticket {ticket_id!r}")
        if not session.account.can("supervisor") and ticket["customer_id"] not in session.customers:
            note("ticket.denied", session, request, ticket_id=ticket_id)
            raise HTTPException(403, "open the ticket's customer first (search or their call)")
        return ticket

    @app.get("/api/tickets/{ticket_id}")
    async def ticket(ticket_id: str, session: Signed, request: Request) -> dict[str, Any]:
        """The ticket with its history (every change, oldest first) and linked calls."""
        found = await readable_ticket(ticket_id, session, request)
        note("ticket.read", session, request, ticket_id=ticket_id)
        return found

    @app.post("/api/tickets", status_code=201)
    async def create_ticket(
        body: NewTicketRequest, session: Signed, request: Request
    ) -> dict[str, Any]:
        open_customer(session, request, body.customer_id)
        known_agent(body.assignee)
        try:
            created = await core.desk.create_ticket(
                customer_id=body.customer_id, subject=body.subject, priority=body.priority,
                channel=body.channel, assignee=body.assignee or session.account.agent,
                sla_due_at=body.sla_due_at, description=body.description,
                call_id=body.call_id, actor=session.account.user, agent=as_agent(session),
            )  # fmt: skip
        except REFUSED as exc:
            raise refusal(exc) from None
        note("ticket.create", session, request, ticket_id=created["ticket_id"],
              customer_id=body.customer_id, call_id=body.call_id)  # fmt: skip
        return created

    @app.patch("/api/tickets/{ticket_id}")
    async def update_ticket(
        ticket_id: str, body: TicketChanges, session: Signed, request: Request
    ) -> dict[str, Any]:
        """Status, priority, assignee, subject, SLA (a history row each), a comment, and
        a link to your call. Returns what changed and the ticket."""
        await readable_ticket(ticket_id, session, request)
        changes = body.model_dump(exclude_unset=True, exclude={"comment", "call_id"})
        if "assignee" in changes:
            known_agent(changes["assignee"])
            changes["assignee"] = changes["assignee"] or None
        for name in ("status", "priority", "subject"):
            if name in changes and changes[name] is None:
                raise HTTPException(422, f"{name} cannot be null")
        try:
            result = await core.desk.update_ticket(
                ticket_id, changes, comment=body.comment, call_id=body.call_id,
                actor=session.account.user, agent=as_agent(session),
            )  # fmt: skip
        except REFUSED as exc:
            raise refusal(exc) from None
        note("ticket.update", session, request, ticket_id=ticket_id,
              changed=result["changed"], call_id=body.call_id)  # fmt: skip
        return result

    # -- interactions (stored calls)

    def page(items: list[dict[str, Any]], limit: int) -> dict[str, Any]:
        more = len(items) == limit
        return {"items": items, "next_before": items[-1]["call_id"] if more else None}

    @app.get("/api/interactions")
    async def interactions(
        session: Signed, request: Request, customer_id: str | None = None, limit: Limit = 20,
        before: Before = None,
    ) -> dict[str, Any]:  # fmt: skip
        """A customer's calls, newest first (supervisors: anyone's, or every call)."""
        if customer_id is None:
            if not session.account.can("supervisor"):
                raise HTTPException(
                    403, "name a customer (your own calls: /api/agents/{you}/calls)"
                )
        else:
            open_customer(session, request, customer_id)
        try:
            items = await core.desk.calls(customer_id=customer_id, limit=limit, before=before)
        except KeyError as exc:
            raise HTTPException(404, str(exc.args[0])) from None
        note("interactions.read", session, request, customer_id=customer_id, count=len(items))
        return page(items, limit)

    @app.get("/api/interactions/{call_id}")
    async def interaction(call_id: str, session: Signed, request: Request) -> dict[str, Any]:
        """One stored call in full: IVR path, wait, talk, survey, wrap-up, tickets."""
        found = await core.desk.interaction(call_id)
        if found is None:
            raise HTTPException(404, f"no stored call {call_id!r}")
        agent = as_agent(session)
        if agent is not None and found["agent"] != agent:
            note("call.denied", session, request, call_id=call_id)
            raise HTTPException(403, "not your call")
        if found["customer_id"]:
            session.customers.add(found["customer_id"])  # a customer this agent served
        note("call.read", session, request, call_id=call_id)
        return found

    @app.get("/api/agents/{agent_id}/calls")
    async def agent_calls(
        agent_id: str, session: Signed, request: Request, limit: Limit = 20,
        before: Before = None,
    ) -> dict[str, Any]:  # fmt: skip
        """The agent's call history, newest first: caller, customer, queue, times,
        disposition, tickets. Agents read only their own."""
        if as_agent(session) not in (None, agent_id):
            note("calls.denied", session, request, agent=agent_id)
            raise HTTPException(403, "an agent reads only its own calls")
        if agent_id not in core.settings.agents:
            raise HTTPException(404, f"unknown agent {agent_id!r}")
        try:
            items = await core.desk.calls(agent=agent_id, limit=limit, before=before)
        except KeyError as exc:
            raise HTTPException(404, str(exc.args[0])) from None
        if session.account.agent == agent_id:
            session.customers.update(c["customer_id"] for c in items if c["customer_id"])
        note("calls.read", session, request, agent=agent_id, count=len(items))
        return page(items, limit)

    # -- queues and wrap-up (the queue engine's view, read only)

    @app.get("/api/queues")
    async def queues(session: Signed) -> list[dict[str, Any]]:
        """Each queue now: callers waiting, the longest wait, agents staffed/available."""
        now = core.now()
        return [queue_view(core.acd, name, now) for name in core.settings.queues]

    @app.get("/api/agents/{agent_id}/wrapup")
    async def wrapup_left(agent_id: str, session: Signed) -> dict[str, Any]:
        """The agent's state and, in wrap-up, the seconds left before it ends by itself."""
        if as_agent(session) not in (None, agent_id):
            raise HTTPException(403, "an agent reads only its own state")
        if agent_id not in core.settings.agents:
            raise HTTPException(404, f"unknown agent {agent_id!r}")
        agent = core.acd.agent(agent_id)
        left = None
        if agent.state is AgentState.WRAP_UP and agent.wrapup_until is not None:
            left = round(max(0.0, agent.wrapup_until - core.now()), 1)
        return {"agent": agent_id, "state": agent.state.value, "wrapup_left_s": left}

    @app.post("/api/config/reload")
    async def reload(request: Request) -> JSONResponse:
        """New IVR flows for new calls (`kefu config reload`); 422 lists the problems."""
        if client_of(request) not in LOOPBACK:
            session = signed_in(request)
            if not session.account.can("admin"):
                raise HTTPException(403, "needs the admin role")
        result = await core.reload_flows()
        return JSONResponse(result, status_code=200 if result["ok"] else 422)

    @app.get("/api/audit")
    async def audit(session: Supervisor, limit: int = 200) -> list[dict[str, Any]]:
        return web.audit.entries()[-limit:]

    # -- the agent's socket

    @app.websocket("/ws/agent")
    async def agent_socket(ws: WebSocket) -> None:
        origin = (ws.headers.get("origin") or "").rstrip("/")
        if origin not in web.origins:
            web.audit.write("socket.refused", user="", client=client_of(ws),
                            reason=f"origin {origin or '(none)'}")  # fmt: skip
            await ws.close(code=4003, reason="origin not allowed")
            return
        session = session_of(ws)
        if session is None or session.account.agent is None:
            web.audit.write("socket.refused", user=session.account.user if session else "",
                            client=client_of(ws), reason="no agent session")  # fmt: skip
            await ws.close(code=4001, reason="sign in as an agent first")
            return
        agent = session.account.agent
        await ws.accept()
        sub = web.hub.subscribe(agent, session.token)

        async def read() -> None:
            # the page confirms the pops it shows (see `Hub.popped`); this also notices
            # when it goes away
            try:
                while True:
                    text = await ws.receive_text()
                    try:
                        said = json.loads(text)
                    except ValueError:
                        continue  # not JSON: nothing we act on
                    if isinstance(said, dict):
                        web.hub.page_says(sub, said)
            except (WebSocketDisconnect, RuntimeError):
                web.hub.close(sub)

        reader = asyncio.create_task(read())
        try:
            await ws.send_json({"type": "hello", **_me(session), **core.agent_snapshot(agent)})
            while True:
                message = await sub.queue.get()
                if message is None:
                    await ws.close(code=sub.close_code, reason="session ended")
                    return
                if message.get("customer_id"):
                    session.customers.add(str(message["customer_id"]))
                await ws.send_json(message)
                web.hub.sent(sub)
        except (WebSocketDisconnect, RuntimeError):
            return
        finally:
            reader.cancel()
            web.hub.unsubscribe(sub)

    # -- the agent desktop (static page)

    if STATIC.is_dir():
        app.mount("/static", StaticFiles(directory=STATIC), name="static")

        @app.get("/")
        async def desktop() -> FileResponse:
            return FileResponse(STATIC / "index.html")

    return app


REFUSED = (KeyError, PermissionError, ValueError)
"""What the desk raises when it refuses (see `core.desk`)."""


def refusal(exc: Exception) -> HTTPException:
    """The desk's errors as HTTP answers that say what was wrong."""
    if isinstance(exc, KeyError):
        return HTTPException(404, str(exc.args[0]))
    if isinstance(exc, PermissionError):
        return HTTPException(403, str(exc))
    if isinstance(exc, BadPhone):
        return HTTPException(422, str(exc))
    # a clash: a number or account taken, open tickets, a call still up...
    return HTTPException(409, str(exc))


def queue_view(engine: AcdEngine, name: str, now: float) -> dict[str, Any]:
    """One queue as the desktop shows it, read from the queue engine at `now` (its
    clock). Callers who hung up and wait for a callback are counted apart."""
    calls = engine.waiting(name)
    callers = [c for c in calls if c.live]
    members = [a for a in engine.agents() if name in a.queues]
    return {
        "queue": name,
        "waiting": len(callers),
        "ringing": sum(1 for c in callers if c.offered_to is not None),
        "callbacks": len(calls) - len(callers),
        "longest_wait_s": round(max((now - c.enqueued_at for c in callers), default=0.0), 1),
        "agents": len(members),
        "staffed": sum(1 for a in members if a.state in STAFFED),
        "available": sum(1 for a in members if a.state is AgentState.AVAILABLE),
        "wrapup_s": engine.queue(name).wrapup_s,
    }


def _me(session: Session) -> dict[str, Any]:
    account = session.account
    return {"user": account.user, "role": account.role, "name": account.name,
            "agent": account.agent}  # fmt: skip
