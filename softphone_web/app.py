"""The HTTP face of the core (FastAPI): sign-in, agents, calls, customers, agent sockets.

Every request is authenticated (`softphone_web.auth`): a session cookie from
`POST /api/login` or `Authorization: Bearer <token>`. Roles are enforced here, on the
server: an agent sees and changes only itself, its own calls and the customers it
serves or searches; a supervisor sees everyone; an admin may also reload the flows and
disable accounts. Two doors stay open to this machine only: `/api/health` (what
`kefu serve` waits on before it prints `kefu ready`) and `/api/config/reload` (what
`kefu config reload` calls) — processes on the host are as trusted as a SIGHUP.

`/ws/agent` is the agent's socket: the Origin must be on `http.allowed_origins`, the
session must be an agent's, and the core pushes the screen pop (customer card, open
tickets, recent calls, the IVR path, queue and wait, why this agent) when a call is
offered — before the agent's phone rings — then answered / ended updates.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Protocol

from fastapi import Depends, FastAPI, HTTPException, Request, Response, WebSocket
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field
from starlette.websockets import WebSocketDisconnect

from config.schema import Settings
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
# thread allowed to touch the engines.
class CoreView(Protocol):
    @property
    def control(self) -> ControlView: ...
    def health(self) -> dict[str, Any]: ...
    def agents_view(self) -> list[dict[str, Any]]: ...
    def calls_view(self) -> list[dict[str, Any]]: ...
    def set_agent_state(self, agent_id: str, state: str, reason: str = "") -> None: ...
    async def reload_flows(self) -> dict[str, Any]: ...
    def agent_snapshot(self, agent_id: str) -> dict[str, Any]: ...
    async def customer_search(self, query: str) -> list[dict[str, Any]]: ...
    async def customer_card(self, customer_id: str) -> dict[str, Any] | None: ...
    async def wrap_up(
        self,
        call_id: str,
        *,
        agent: str | None,
        disposition: str,
        notes: str = "",
        new_ticket: dict[str, str] | None = None,
        link_tickets: list[str] | None = None,
    ) -> dict[str, Any]: ...


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
            result = await core.wrap_up(
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
        found = await core.customer_search(q)
        session.customers.update(c["customer_id"] for c in found)
        web.audit.write("customer.search", user=session.account.user, client=client_of(request),
                        query=q, found=len(found))  # fmt: skip
        return found

    @app.get("/api/customers/{customer_id}")
    async def customer(customer_id: str, session: Signed, request: Request) -> dict[str, Any]:
        allowed = session.account.can("supervisor") or customer_id in session.customers
        if not allowed:
            web.audit.write("customer.denied", user=session.account.user,
                            client=client_of(request), customer_id=customer_id)  # fmt: skip
            raise HTTPException(403, "search for the customer or take their call first")
        card = await core.customer_card(customer_id)
        if card is None:
            raise HTTPException(404, f"unknown customer {customer_id!r}")
        web.audit.write("customer.read", user=session.account.user, client=client_of(request),
                        customer_id=customer_id)  # fmt: skip
        return card

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
            # the browser says nothing we need; this notices when it goes away
            try:
                while True:
                    await ws.receive_text()
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


def _me(session: Session) -> dict[str, Any]:
    account = session.account
    return {"user": account.user, "role": account.role, "name": account.name,
            "agent": account.agent}  # fmt: skip
