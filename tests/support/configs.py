"""Configuration data for tests: the demo with its flow file inlined, and a small flow.

Tests mutate plain dicts (then `config.loader.parse` them) so an error message can be
checked against the path they changed.
"""

from __future__ import annotations

from typing import Any

import yaml

from config.loader import demo_path


def demo_data() -> dict[str, Any]:
    """The demo configuration with its flow files inlined under `ivr:`."""
    data = yaml.safe_load(demo_path().read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    flows: dict[str, Any] = {}
    for name in data.pop("flow_files", []):
        flows |= yaml.safe_load((demo_path().parent / name).read_text(encoding="utf-8"))["ivr"]
    data["ivr"] = flows
    return data


def menu_flow(
    options: dict[str, str], *, timeout_s: float = 6, max_timeouts: int = 2
) -> dict[str, Any]:
    """One English DTMF menu: digit -> queue (a queue node per queue), goodbye after
    `max_timeouts` silences; the walking skeleton's shape."""
    nodes: dict[str, Any] = {
        "menu": {
            "kind": "menu",
            "prompt": {"text": "Press 1 for sales, 2 for support."},
            "options": {digit: f"q_{queue}" for digit, queue in options.items()},
            "timeout_s": timeout_s,
            "max_timeouts": max_timeouts,
            "invalid_prompt": {"text": "Sorry, that is not a valid choice."},
            "fallback": "goodbye",
        },
        "goodbye": {"kind": "hangup", "prompt": {"text": "Goodbye."}, "reason": "no choice"},
    }
    for queue in set(options.values()):
        nodes[f"q_{queue}"] = {"kind": "queue", "queue": queue}
    return {"start": "menu", "languages": ["en"], "default_language": "en", "nodes": nodes}
