"""One encoder for the whole wire: dataclass <-> JSON bytes, and the MQTT topic tree.

Topic tree (`kefu/v1/...`, documented in `wire/asyncapi.yaml`):

    kefu/v1/worker/{n}/status        WorkerStatus, retained; last will says up=false
    kefu/v1/worker/{n}/event/{kind}  media events from worker n
    kefu/v1/worker/{n}/cmd           media commands to worker n (MQTT v5 request/response)
    kefu/v1/cc/{kind}                contact-center events (wallboards, agent desktops)

A payload is a JSON object whose `type` names the dataclass; nested dataclasses are
objects, tuples are arrays. The same JSON is the WebSocket frame.
"""

from __future__ import annotations

import dataclasses
import json
import re
import typing
from typing import Any

from wire import events

PREFIX = "kefu/v1"

_TYPES: dict[str, type[Any]] = {
    name: obj
    for name, obj in vars(events).items()
    if isinstance(obj, type) and dataclasses.is_dataclass(obj)
}
_MEDIA_EVENTS = typing.get_args(events.MediaEvent)
_CC_EVENTS = typing.get_args(events.CcEvent)


class WireError(ValueError):
    """A payload that is not one of ours; the message says what was wrong."""


def kind(obj: object) -> str:
    """`LegIncoming` -> `leg_incoming`."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", type(obj).__name__).lower()


def to_dict(obj: object) -> dict[str, Any]:
    out: dict[str, Any] = {"type": type(obj).__name__}
    for f in dataclasses.fields(obj):  # type: ignore[arg-type]
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            value = {k: v for k, v in to_dict(value).items() if k != "type"}
        elif isinstance(value, tuple):
            value = list(value)
        out[f.name] = value
    return out


def encode(obj: object) -> bytes:
    return json.dumps(to_dict(obj), separators=(",", ":")).encode()


def from_dict(data: dict[str, Any]) -> Any:
    name = data.get("type")
    cls = _TYPES.get(name) if isinstance(name, str) else None
    if cls is None:
        raise WireError(f"unknown message type {name!r}")
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.name not in data:
            continue
        value = data[f.name]
        hint = hints[f.name]
        if isinstance(hint, type) and dataclasses.is_dataclass(hint) and isinstance(value, dict):
            value = hint(**value)
        elif typing.get_origin(hint) is tuple and isinstance(value, list):
            value = tuple(value)
        kwargs[f.name] = value
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise WireError(f"{name}: {exc}") from None


def decode(payload: bytes | bytearray | str) -> Any:
    try:
        data = json.loads(payload)
    except (ValueError, UnicodeDecodeError) as exc:
        raise WireError(f"not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise WireError("expected a JSON object")
    return from_dict(data)


def topic_for(obj: object) -> str:
    """The topic an event is published on."""
    if isinstance(obj, events.WorkerStatus):
        return f"{PREFIX}/worker/{obj.worker}/status"
    if isinstance(obj, _MEDIA_EVENTS):
        return f"{PREFIX}/worker/{obj.worker}/event/{kind(obj)}"
    if isinstance(obj, _CC_EVENTS):
        return f"{PREFIX}/cc/{kind(obj)}"
    raise WireError(f"{type(obj).__name__} is not published as an event")


def command_topic(worker: int) -> str:
    return f"{PREFIX}/worker/{worker}/cmd"


def status_topic(worker: int) -> str:
    return f"{PREFIX}/worker/{worker}/status"


WORKER_EVENTS = f"{PREFIX}/worker/+/event/#"
WORKER_STATUS = f"{PREFIX}/worker/+/status"
