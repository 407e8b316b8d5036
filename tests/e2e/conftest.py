"""End-to-end fixtures: on failure, the tail of every component log is printed."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest


@pytest.fixture
def artifacts(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Path]:
    yield tmp_path
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        logs = sorted(tmp_path.rglob("*.log"))
        if "center" in request.fixturenames:
            center = request.getfixturevalue("center")
            logs += sorted((center.data_dir / "logs").glob("*.log"))
        for log in logs:
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-25:])
            print(f"\n===== {log} =====\n{tail}")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report
