"""Fixtures for the core's call handling without a broker (see tests/support/core_harness)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from tests.support.core_harness import Harness, build, close, harness_data


@pytest.fixture
async def make(tmp_path: Path) -> AsyncIterator[Callable[..., Awaitable[Harness]]]:
    """A factory of cores: `await make(mutate)` with `mutate(data)` editing the config."""
    made: list[Harness] = []

    async def factory(mutate: Callable[[dict[str, Any]], None] | None = None) -> Harness:
        data = harness_data()
        if mutate is not None:
            mutate(data)
        h = await build(tmp_path, data)
        made.append(h)
        return h

    yield factory
    for h in made:
        close(h)


@pytest.fixture
async def harness(make: Callable[..., Awaitable[Harness]]) -> Harness:
    return await make()
