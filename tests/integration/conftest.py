"""Fixtures for adapter tests against real peers on loopback (see tests/support)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from pbx.procs import mosquitto

if TYPE_CHECKING:
    from tests.integration.test_worker import WorkerProc


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[int]:
    """A private mosquitto on a free loopback port; yields the port, stops it by PID."""
    with mosquitto(tmp_path / "broker") as port:
        yield port


@pytest.fixture
def worker(tmp_path: Path, broker: int) -> Iterator[WorkerProc]:
    """A media worker process on free ports, talking to `broker`; it must stop cleanly."""
    from tests.integration.test_worker import WorkerProc

    w = WorkerProc(tmp_path, broker)
    w.proc.start()
    try:
        yield w
    finally:
        code = w.proc.stop(timeout=8)
        print(w.log())
        # A clean SIGTERM path (hang up, finish recordings, libDestroy) exits 0.
        assert code == 0, f"worker exited with {code}"
