"""The journal: every fact the core feeds the ACD engine, one JSON line each.

    {"at": 12.5, "type": "Enqueue", "call_id": "c1", "queue": "sales", ...}

`at` is the engine clock (`now=`) the event was handled at. The core appends
`dump(event, now)` for each `handle()`; timers are not recorded — the engine is
deterministic, so re-feeding the events at their times (and firing `handle_timer` at
`next_deadline()`) reproduces every decision. `acd.replay` reads journals back with
`load`. Sets are written as sorted lists and read back as frozensets.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from typing import Any

from acd import events
from acd.events import AcdEvent

_TYPES: dict[str, type[Any]] = {t.__name__: t for t in typing.get_args(AcdEvent)}


class JournalError(ValueError):
    """A line that is not a recorded engine event; the message says why."""


def dump(event: AcdEvent, now: float) -> str:
    out: dict[str, Any] = {"at": now, "type": type(event).__name__}
    for f in dataclasses.fields(event):
        value = getattr(event, f.name)
        if isinstance(value, frozenset | set):
            value = sorted(value)
        elif isinstance(value, typing.Mapping):
            value = dict(value)
        out[f.name] = value
    return json.dumps(out, separators=(",", ":"), sort_keys=False)


def load(line: str) -> tuple[AcdEvent, float]:
    try:
        data = json.loads(line)
    except ValueError as exc:
        raise JournalError(f"not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise JournalError("expected a JSON object")
    name = data.pop("type", None)
    at = data.pop("at", None)
    cls = _TYPES.get(name) if isinstance(name, str) else None
    if cls is None:
        raise JournalError(f"unknown event type {name!r}")
    if not isinstance(at, int | float):
        raise JournalError(f"{name}: 'at' must be a number")
    hints = typing.get_type_hints(cls, vars(events))
    for key, value in data.items():
        if typing.get_origin(hints.get(key)) is frozenset and isinstance(value, list):
            data[key] = frozenset(value)
    try:
        event: AcdEvent = cls(**data)
    except TypeError as exc:
        raise JournalError(f"{name}: {exc}") from None
    return event, float(at)
