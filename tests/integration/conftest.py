"""Fixtures for adapter tests against real peers on loopback (see tests/support)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from pbx.procs import mosquitto


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[int]:
    """A private mosquitto on a free loopback port; yields the port, stops it by PID."""
    with mosquitto(tmp_path / "broker") as port:
        yield port
