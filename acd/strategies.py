"""Agent-selection strategies, chosen by name from a registry (as aioquic's congestion
control is): which of the eligible, available agents gets a call.

A strategy never decides *which call* goes next — that is the engine's one fair order
across queues — only which agent takes the call at the head. It sees eligible agents
in a deterministic order (by agent id) and returns the winner's index and a score per
candidate (higher is better) for the decision trace. Randomness comes only from the
`random.Random` the engine holds and seeds, never from the module-level generator, so
a replay of the same events makes the same choices.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass

from acd.model import Agent


@dataclass(frozen=True, slots=True)
class Choice:
    """An eligible agent and how well they match the call."""

    agent: Agent
    proficiency: int
    """Sum of the agent's levels in the call's required skills."""


@dataclass(slots=True)
class Context:
    now: float
    queue: str
    rng: random.Random
    last_served: MutableMapping[str, str]
    """Queue -> agent who got its previous call (round robin's cursor)."""
    member_order: Mapping[str, int]
    """Agent -> position in the queue's member list (round robin's ring)."""


Strategy = Callable[[Sequence[Choice], Context], tuple[int, list[float]]]


def _best(scores: Sequence[tuple[float, ...]]) -> int:
    return max(range(len(scores)), key=lambda i: scores[i])


def longest_idle(choices: Sequence[Choice], ctx: Context) -> tuple[int, list[float]]:
    """The agent idle longest (the default: spreads work and rest evenly)."""
    idle = [ctx.now - c.agent.idle_since for c in choices]
    # ties -> the first agent id, since choices are in id order and max keeps the first
    return _best([(s,) for s in idle]), idle


def least_occupied(choices: Sequence[Choice], ctx: Context) -> tuple[int, list[float]]:
    """The agent with the smallest busy share of staffed time; ties -> longest idle."""
    occ = [c.agent.occupancy(ctx.now) for c in choices]
    keys = [(-o, ctx.now - c.agent.idle_since) for o, c in zip(occ, choices, strict=True)]
    return _best(keys), [-o for o in occ]


def most_skilled(choices: Sequence[Choice], ctx: Context) -> tuple[int, list[float]]:
    """The highest proficiency in the call's skills; ties -> longest idle."""
    keys = [(float(c.proficiency), ctx.now - c.agent.idle_since) for c in choices]
    return _best(keys), [float(c.proficiency) for c in choices]


def round_robin(choices: Sequence[Choice], ctx: Context) -> tuple[int, list[float]]:
    """The next agent after the queue's previous winner, in member order."""
    size = max(len(ctx.member_order), 1)
    last = ctx.member_order.get(ctx.last_served.get(ctx.queue, ""), -1)
    # distance forward from the previous winner: 1 is next in line
    dist = [((ctx.member_order.get(c.agent.spec.agent_id, 0) - last - 1) % size) for c in choices]
    winner = min(range(len(choices)), key=lambda i: dist[i])
    return winner, [float(-d) for d in dist]


def weighted_random(choices: Sequence[Choice], ctx: Context) -> tuple[int, list[float]]:
    """Random, weighted by proficiency: better agents get more calls, everyone some."""
    weights = [float(max(c.proficiency, 1)) for c in choices]
    pick = ctx.rng.random() * sum(weights)
    acc = 0.0
    for i, w in enumerate(weights):
        acc += w
        if pick < acc:
            return i, weights
    return len(choices) - 1, weights


STRATEGIES: dict[str, Strategy] = {
    "longest_idle": longest_idle,
    "least_occupied": least_occupied,
    "most_skilled": most_skilled,
    "round_robin": round_robin,
    "weighted_random": weighted_random,
}
DEFAULT = "longest_idle"


def get(name: str) -> Strategy:
    try:
        return STRATEGIES[name]
    except KeyError:
        raise KeyError(f"unknown strategy {name!r} (strategies: {', '.join(STRATEGIES)})") from None
