"""Port picking for tests and `kefu serve`."""

from __future__ import annotations

from pbx.procs import free_port


def test_free_port_remembers_every_port_it_hands_out() -> None:
    """An empty `avoid` set passed in is filled, so later picks never overlap it."""
    taken: set[int] = set()
    first = free_port(avoid=taken)
    assert first in taken
    span_base = free_port(span=50, avoid=taken)
    assert first not in range(span_base, span_base + 50)
    assert len(taken) == 51
