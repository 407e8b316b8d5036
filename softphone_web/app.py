"""The HTTP face of the core (FastAPI): health, live agents and calls, agent state.

`/api/health` reports each component (broker, edge, workers, database) and is what
`kefu serve` waits on before it prints `kefu ready`; `/api/config/reload` is what
`kefu config reload` calls. The agent softphone and the
wallboard grow here (issue #5); the routes only read the core's views and send it
requests, so the same app runs against any object with that shape.
"""

from __future__ import annotations

from typing import Any, Protocol

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel


# Routes are `async def` on purpose: they run on the core's event loop thread, the only
# thread allowed to touch the engines.
class CoreView(Protocol):
    def health(self) -> dict[str, Any]: ...
    def agents_view(self) -> list[dict[str, Any]]: ...
    def calls_view(self) -> list[dict[str, Any]]: ...
    def set_agent_state(self, agent_id: str, state: str, reason: str = "") -> None: ...
    async def reload_flows(self) -> dict[str, Any]: ...


LOOPBACK = frozenset({"127.0.0.1", "::1", "localhost"})


class AgentStateRequest(BaseModel):
    state: str
    reason: str = ""


def create_app(core: CoreView) -> FastAPI:
    app = FastAPI(title="kefu", version="0.1.0", summary="Contact-center core API")

    @app.get("/api/health")
    async def health() -> JSONResponse:
        report = core.health()
        return JSONResponse(report, status_code=200 if report["status"] == "ok" else 503)

    @app.get("/api/agents")
    async def agents() -> list[dict[str, Any]]:
        return core.agents_view()

    @app.put("/api/agents/{agent_id}/state")
    async def set_state(agent_id: str, body: AgentStateRequest) -> dict[str, str]:
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
    async def calls() -> list[dict[str, Any]]:
        return core.calls_view()

    @app.post("/api/config/reload")
    async def reload(request: Request) -> JSONResponse:
        """New IVR flows for new calls (`kefu config reload`); 422 lists the problems.

        Until the API has accounts (issue #5) only the machine itself may ask."""
        client = request.client.host if request.client else ""
        if client not in LOOPBACK:
            raise HTTPException(403, "reload is allowed from this machine only")
        result = await core.reload_flows()
        return JSONResponse(result, status_code=200 if result["ok"] else 422)

    return app
