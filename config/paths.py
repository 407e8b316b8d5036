"""How a place inside a config file is spelled in every error message:
`ivr.main.options."1".queue`, `edge.trunks[0]` — one function, used by the config
loader and the IVR flow validator alike."""

from __future__ import annotations

from collections.abc import Iterable


def render_path(loc: Iterable[str | int]) -> str:
    parts: list[str] = []
    for part in loc:
        text = str(part)
        if isinstance(part, int) and parts:
            parts[-1] += f"[{part}]"
            continue
        if not text.replace("_", "").replace("-", "").isalnum() or text.isdigit():
            text = f'"{text}"'
        parts.append(text)
    return ".".join(parts) or "(top level)"
