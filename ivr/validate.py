"""Whole-flow checks that one pydantic model cannot make, run before a call sees a flow.

`validate_flows()` returns `(path, message)` problems, the path starting at the flow
name, e.g. `(("main", "nodes", "sales_menu", "options", "1"), "unknown node 'salse'")`
— the same shape as `config.schema.ReferenceProblems`, so `config.loader` prefixes its
section (`ivr`) and file. It checks: link targets and the start node exist, every node
is reachable from the start, queues / skills / agents / calendars / languages are
known, no cycle can run without caller input (it would hold a media leg forever), and
every prompt can be rendered in every language of the flow (a WAV file that exists, or
text). It is pure: the set of known queues and skills and a `file_exists` callable are
passed in. `check_file()` is the thin shell for `kefu config check` on a flow file.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from config.paths import render_path
from ivr.schema import (
    ANY_LANGUAGE,
    ConditionNode,
    Flow,
    FlowFile,
    Localized,
    QueueNode,
    SetNode,
    TransferNode,
)

Path_ = tuple[str | int, ...]
Problem = tuple[Path_, str]


def validate_flows(
    flows: Mapping[str, Flow],
    *,
    queues: Collection[str],
    skills: Collection[str],
    agents: Collection[str] | None = None,
    file_exists: Callable[[Path], bool] | None = None,
) -> list[Problem]:
    """Every problem in `flows`; empty when they are fit to run.

    `agents`: when given, transfer targets must be among them. `file_exists`: when
    given, every `{file: ...}` prompt must exist (paths as written in the flow; the
    caller resolves them against the config directory).
    """
    problems: list[Problem] = []
    for name, flow in flows.items():
        problems += _check_flow(name, flow, queues, skills, agents, file_exists)
    return problems


def _choices(names: Iterable[str]) -> str:
    return ", ".join(sorted(names)) or "none"


def _check_flow(
    name: str,
    flow: Flow,
    queues: Collection[str],
    skills: Collection[str],
    agents: Collection[str] | None,
    file_exists: Callable[[Path], bool] | None,
) -> list[Problem]:
    out: list[Problem] = []
    base: Path_ = (name,)
    nodes = flow.nodes
    languages = list(flow.languages)

    if flow.default_language not in languages:
        out.append(
            (
                (*base, "default_language"),
                f"{flow.default_language!r} is not one of the flow's languages "
                f"({_choices(languages)})",
            )
        )
    for lang in [*flow.voices, *flow.digits]:
        if lang not in languages:
            out.append(
                (
                    (*base, "voices" if lang in flow.voices else "digits", lang),
                    f"language {lang!r} is not one of the flow's languages ({_choices(languages)})",
                )
            )
    if flow.start not in nodes:
        out.append(((*base, "start"), f"unknown node {flow.start!r}"))

    for node_name, node in nodes.items():
        here: Path_ = (*base, "nodes", node_name)
        for where, target in node.links():
            if target not in nodes:
                out.append(((*here, *where), f"unknown node {target!r}"))
        out += _check_references(here, node, flow, queues, skills, agents)
        for slot, localized in node.prompt_slots():
            out += _check_prompt((*here, *slot), localized, languages, file_exists)
    for lang, table in flow.digits.items():
        for digit, prompt in table.items():
            if prompt.file is not None and file_exists is not None and not file_exists(prompt.file):
                out.append(
                    ((*base, "digits", lang, digit, "file"), f"no such WAV file: {prompt.file}")
                )

    if flow.start in nodes:
        reachable = _reachable(flow)
        for node_name in nodes:
            if node_name not in reachable:
                out.append(
                    ((*base, "nodes", node_name), f"unreachable from the start node {flow.start!r}")
                )
    for cycle in _silent_cycles(flow):
        out.append(
            (
                (*base, "nodes", cycle[0]),
                "loop without caller input: " + " -> ".join([*cycle, cycle[0]]),
            )
        )
    return out


def _check_references(
    here: Path_,
    node: Any,
    flow: Flow,
    queues: Collection[str],
    skills: Collection[str],
    agents: Collection[str] | None,
) -> list[Problem]:
    out: list[Problem] = []
    if isinstance(node, QueueNode) and node.queue not in queues:
        out.append(((*here, "queue"), f"unknown queue {node.queue!r} (queues: {_choices(queues)})"))
    if isinstance(node, QueueNode | SetNode):
        for skill in node.skills:
            if skill not in skills:
                out.append(
                    (
                        (*here, "skills", skill),
                        f"unknown skill {skill!r} (skills: {_choices(skills)})",
                    )
                )
    if isinstance(node, SetNode) and node.language is not None:
        if node.language not in flow.languages:
            out.append(
                (
                    (*here, "language"),
                    f"language {node.language!r} is not one of the flow's languages "
                    f"({_choices(flow.languages)})",
                )
            )
    if isinstance(node, TransferNode) and node.agent is not None and agents is not None:
        if node.agent not in agents:
            out.append(
                ((*here, "agent"), f"unknown agent {node.agent!r} (agents: {_choices(agents)})")
            )
    if isinstance(node, ConditionNode):
        for i, branch in enumerate(node.branches):
            where = (*here, "branches", i, "when")
            for key in ("open", "holiday"):
                calendar = getattr(branch.when, key)
                if calendar is not None and calendar not in flow.calendars:
                    out.append(
                        (
                            (*where, key),
                            f"unknown calendar {calendar!r} "
                            f"(calendars: {_choices(flow.calendars)})",
                        )
                    )
            for lang in branch.when.language or []:
                if lang not in flow.languages:
                    out.append(
                        (
                            (*where, "language"),
                            f"language {lang!r} is not one of the flow's languages "
                            f"({_choices(flow.languages)})",
                        )
                    )
    return out


def _check_prompt(
    where: Path_,
    localized: Localized,
    languages: list[str],
    file_exists: Callable[[Path], bool] | None,
) -> list[Problem]:
    out: list[Problem] = []
    for lang in localized:
        if lang != ANY_LANGUAGE and lang not in languages:
            out.append(
                (
                    (*where, lang),
                    f"language {lang!r} is not one of the flow's languages ({_choices(languages)})",
                )
            )
    if ANY_LANGUAGE not in localized:
        for lang in languages:
            if lang not in localized:
                out.append((where, f"no prompt for language {lang!r}"))
    if file_exists is not None:
        for lang, prompt in localized.items():
            if prompt.file is not None and not file_exists(prompt.file):
                # a prompt for every language was written without a language key
                at = (*where, "file") if lang == ANY_LANGUAGE else (*where, lang, "file")
                out.append((at, f"no such WAV file: {prompt.file}"))
    return out


def _reachable(flow: Flow) -> set[str]:
    seen = {flow.start}
    todo = [flow.start]
    while todo:
        node = flow.nodes.get(todo.pop())
        if node is None:
            continue
        for _, target in node.links():
            if target not in seen:
                seen.add(target)
                todo.append(target)
    return seen


def _silent_cycles(flow: Flow) -> list[list[str]]:
    """Cycles made only of moves that need no caller input (Tarjan's SCCs).

    One cycle per strongly connected component, reported from its first node in
    declaration order, so the message is stable from run to run.
    """
    edges = {
        name: [t for t in node.silent_links() if t in flow.nodes]
        for name, node in flow.nodes.items()
    }
    order = {name: i for i, name in enumerate(flow.nodes)}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(root: str) -> None:
        # iterative Tarjan: a flow can be long enough to hit Python's recursion limit
        work: list[tuple[str, int]] = [(root, 0)]
        while work:
            node, i = work.pop()
            if i == 0:
                index[node] = low[node] = len(index)
                stack.append(node)
                on_stack.add(node)
            targets = edges[node]
            if i < len(targets):
                work.append((node, i + 1))
                target = targets[i]
                if target not in index:
                    work.append((target, 0))
                elif target in on_stack:
                    low[node] = min(low[node], index[target])
                continue
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component: list[str] = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1 or node in edges[node]:
                    components.append(component)

    for name in flow.nodes:
        if name not in index:
            visit(name)
    cycles = []
    for component in components:
        members = set(component)
        first = min(component, key=order.__getitem__)
        cycles.append(_walk(first, members, edges))
    return sorted(cycles, key=lambda c: order[c[0]])


def _walk(first: str, members: set[str], edges: Mapping[str, list[str]]) -> list[str]:
    """A path from `first` around its component back to `first`, for the message."""
    parents: dict[str, str] = {}
    frontier = [first]
    while frontier:
        nxt: list[str] = []
        for node in frontier:
            for target in edges[node]:
                if target == first:
                    path = [node]
                    while path[-1] != first:
                        path.append(parents[path[-1]])
                    return path[::-1]
                if target in members and target not in parents:
                    parents[target] = node
                    nxt.append(target)
        frontier = nxt
    return [first]


# ---------------------------------------------------------------- file shell


_KINDS = frozenset(
    {
        "play",
        "menu",
        "collect",
        "condition",
        "lookup",
        "set",
        "queue",
        "transfer",
        "voicemail",
        "hangup",
        "goto",
        "survey",
    }
)


def clean_loc(loc: Iterable[str | int]) -> tuple[str | int, ...]:
    """A pydantic error location without the node-kind tag that the tagged union adds
    (`nodes.menu1.menu.timeout_s` -> `nodes.menu1.timeout_s`)."""
    parts = list(loc)
    out: list[str | int] = []
    for i, part in enumerate(parts):
        if i >= 2 and parts[i - 2] == "nodes" and part in _KINDS:
            continue
        out.append(part)
    return tuple(out)


def check_file(
    path: Path,
    *,
    queues: Collection[str],
    skills: Collection[str],
    agents: Collection[str] | None = None,
    base: Path | None = None,
) -> tuple[dict[str, Flow], list[str]]:
    """Load a flow file (top level `ivr:`) and return its flows and `file: path: problem`
    lines; prompt files are looked up relative to `base` (the directory of the
    configuration that includes the file; default: the file's own directory)."""
    source = str(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        return {}, [f"{source}: cannot read: {exc.strerror}"]
    except yaml.YAMLError as exc:
        return {}, [f"{source}: invalid YAML: {exc}"]
    try:
        flows = FlowFile.model_validate(data).ivr
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            message = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                message = "unknown key (check the spelling)"
            elif err["type"] == "missing":
                message = "required key is missing"
            lines.append(f"{source}: {render_path(clean_loc(err['loc']))}: {message}")
        return {}, lines
    base = base or path.parent

    def exists(file: Path) -> bool:
        return (file if file.is_absolute() else base / file).is_file()

    problems = validate_flows(
        flows, queues=queues, skills=skills, agents=agents, file_exists=exists
    )
    return flows, [
        f"{source}: {render_path(('ivr', *where))}: {message}" for where, message in problems
    ]
