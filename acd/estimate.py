"""Estimated wait time with an interval, from the observed service rate.

The model is deliberately simple and stated: each staffed agent who could take the call
finishes a call at their observed rate (handled calls over handle time, answer to end
of wrap-up, with a prior of one call of `PRIOR_HANDLE_S` so a new agent is not infinitely
fast). With every such agent busy, departures form a Poisson stream of the summed rate
mu. A caller who needs k more departures (their own turn plus the unoffered calls ahead,
minus agents already free) waits Gamma(k, mu): mean k/mu. The
interval uses the Wilson-Hilferty cube-root approximation of Gamma quantiles (no SciPy
in a pure engine). Wazo's docs call their estimate one that "never fully worked"
because it averaged past waits; this one moves with staffing as it changes.

Used by `acd.engine.AcdEngine.estimate`; the IVR announces it and wallboards show it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from acd.model import STAFFED, Agent

PRIOR_HANDLE_S = 180.0
"""Handle time assumed for an agent with no history, weighted as one observed call."""

_Z = {0.8: 1.2815515655446004, 0.9: 1.6448536269514722, 0.95: 1.959963984540054}


def agent_rate(agent: Agent) -> float:
    """Calls per second this agent completes, from their history plus the prior."""
    return (agent.handled + 1) / (agent.handle_total_s + PRIOR_HANDLE_S)


def service_rate(agents: Iterable[Agent]) -> tuple[float, int]:
    """(summed rate, count) over the staffed agents among `agents`."""
    rate, count = 0.0, 0
    for agent in agents:
        if agent.state in STAFFED:
            rate += agent_rate(agent)
            count += 1
    return rate, count


def gamma_quantile(shape: float, rate: float, p_z: float) -> float:
    """Wilson-Hilferty: quantile of Gamma(shape, rate) at standard-normal score `p_z`."""
    c = 1.0 / (9.0 * shape)
    return max(0.0, shape / rate * (1.0 - c + p_z * math.sqrt(c)) ** 3)


def wait(needed: int, rate: float, confidence: float = 0.8) -> tuple[float, float, float]:
    """(expected, low, high) seconds until `needed` more calls have finished.

    `needed` is the caller's own turn plus the unoffered calls ahead of them, minus the
    eligible agents already free; zero or less means an offer is imminent."""
    if needed <= 0:
        return 0.0, 0.0, 0.0
    if rate <= 0:
        return math.inf, math.inf, math.inf
    z = _Z.get(confidence)
    if z is None:
        raise ValueError(f"confidence must be one of {sorted(_Z)}")
    return needed / rate, gamma_quantile(needed, rate, -z), gamma_quantile(needed, rate, z)
