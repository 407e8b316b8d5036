"""Engine specs from the validated configuration: the one place `config.schema` meets
`acd.model`, so the core builds its engine with `AcdEngine(*specs_from_settings(s))`
and `acd.replay` builds a candidate policy the same way.
"""

from __future__ import annotations

from acd.model import AgentSpec, OverflowTarget, QueueSpec, ServiceLevel, Step
from config.schema import Settings


def specs_from_settings(settings: Settings) -> tuple[list[QueueSpec], list[AgentSpec]]:
    queues = [
        QueueSpec(
            name=name,
            skills=q.required,
            ring_timeout_s=q.ring_timeout_s,
            wrapup_s=q.wrapup_s,
            strategy=q.strategy,
            steps=tuple(
                Step(after_s=s.after_s, min_proficiency=s.min_proficiency) for s in q.steps
            ),
            service_level=ServiceLevel(
                threshold_s=q.service_level.threshold_s, target=q.service_level.target_pct / 100
            ),
            max_wait_s=q.max_wait_s,
            max_length=q.max_length,
            join_empty=q.join_empty,
            leave_when_empty=q.leave_when_empty,
            overflow=(
                OverflowTarget(kind=q.overflow.kind, target=q.overflow.target)
                if q.overflow is not None
                else None
            ),
            priority=q.priority,
            preferred_agent_s=q.preferred_agent_s,
        )
        for name, q in settings.queues.items()
    ]
    agents = [
        AgentSpec(
            agent_id=name,
            skills=dict(a.skills),
            languages=frozenset(a.languages),
            no_answer_limit=a.no_answer_limit,
        )
        for name, a in settings.agents.items()
    ]
    return queues, agents
