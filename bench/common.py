"""Shared pieces of the benchmarks: machine facts, process-tree CPU and memory, the
results file (`bench/results/<name>.json`) and a plain-text table."""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def machine() -> dict[str, Any]:
    mem_kb = 0
    with open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
    cpu = ""
    with open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "cores": os.cpu_count(),
        "cpu": cpu,
        "memory_gb": round(mem_kb / 1024 / 1024, 1),
        "python": platform.python_version(),
        "kernel": platform.release(),
    }


def descendants(root: int) -> list[int]:
    """`root` and every process below it (read from /proc, no psutil)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def _cmd(pid: int) -> str:
    try:
        return (
            Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        )
    except OSError:
        return ""


def cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def role(pid: int) -> str:
    cmd = _cmd(pid)
    for needle, name in (("pbx.worker", "workers"), ("kamailio", "edge"), ("mosquitto", "broker"),
                         ("core.cli core", "core")):  # fmt: skip
        if needle in cmd:
            return name
    return "other"


@dataclass
class TreeSample:
    when: float
    cpu: dict[str, float]
    rss: dict[str, float]


def sample_tree(root: int) -> TreeSample:
    cpu: dict[str, float] = {}
    rss: dict[str, float] = {}
    for pid in descendants(root):
        name = role(pid)
        cpu[name] = cpu.get(name, 0.0) + cpu_seconds(pid)
        rss[name] = rss.get(name, 0.0) + rss_mb(pid)
    return TreeSample(time.monotonic(), cpu, rss)


def cpu_percent(before: TreeSample, after: TreeSample) -> dict[str, float]:
    """Per role, % of one core used between two samples."""
    span = max(after.when - before.when, 1e-6)
    return {
        name: round(100 * (after.cpu.get(name, 0.0) - before.cpu.get(name, 0.0)) / span, 1)
        for name in after.cpu
    }


def write_result(name: str, params: dict[str, Any], metrics: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(
        json.dumps(
            {
                "name": name,
                "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "machine": machine(),
                "params": params,
                "metrics": metrics,
            },
            indent=2,
        )
        + "\n"
    )
    return path


def table(headers: list[str], rows: Iterable[list[Any]]) -> str:
    cells = [[str(c) for c in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]

    def line(values: list[str]) -> str:
        return "| " + " | ".join(v.ljust(w) for v, w in zip(values, widths, strict=True)) + " |"

    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(headers), sep, *(line(r) for r in cells)])
