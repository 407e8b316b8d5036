"""Run SIPp (Debian `sip-tester`) as a real SIP peer in tests and benchmarks.

`run_sipp` runs a scenario to completion and returns its exit code and output;
`start_sipp` runs it in the background (an agent phone waiting for calls) as a
`ManagedProcess` so it is stopped by PID. Scenarios live in `tests/sipp/`.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

from pbx.procs import ManagedProcess

SCENARIOS = Path(__file__).resolve().parent.parent / "sipp"
PCAPS = Path("/usr/share/sip-tester")
SIPP = "/usr/bin/sipp"


@dataclass(frozen=True)
class SippResult:
    returncode: int
    output: str
    messages: str = ""
    """Every SIP message SIPp sent and received, when run with `trace_to`."""

    @property
    def ok(self) -> bool:
        return self.returncode == 0


def sipp_argv(
    scenario: str,
    target: str,
    *,
    local_port: int,
    local_ip: str = "127.0.0.1",
    media_port: int | None = None,
    service: str | None = None,
    calls: int = 1,
    concurrency: int = 1,
    rate: float = 1.0,
    timeout_s: int = 60,
    auth: tuple[str, str] | None = None,
    keys: dict[str, str] | None = None,
    transport: str = "u1",
    pause_ms: int | None = None,
    workdir: Path | None = None,
    extra: list[str] | None = None,
) -> list[str]:
    path = Path(scenario) if scenario.endswith(".xml") and "/" in scenario else SCENARIOS / scenario
    argv = [
        SIPP, target, "-sf", str(path), "-i", local_ip, "-p", str(local_port),
        "-m", str(calls), "-l", str(concurrency), "-r", str(rate),
        "-t", transport, "-timeout", f"{timeout_s}s", "-timeout_error", "-nostdin",
        "-max_recv_loops", "1000", "-aa",
    ]  # fmt: skip
    if media_port is not None:
        argv += ["-mp", str(media_port), "-mi", local_ip]
    if pause_ms is not None:
        argv += ["-d", str(pause_ms)]  # the length of a scenario's bare <pause/>
    if service is not None:
        argv += ["-s", service]
    if auth is not None:
        argv += ["-au", auth[0], "-ap", auth[1]]
    for key, value in (keys or {}).items():
        argv += ["-key", key, value]
    if workdir is not None:
        argv += ["-trace_err", "-error_file", str(workdir / f"sipp-{local_port}-errors.log")]
    return argv + (extra or [])


def run_sipp(
    *args: str, timeout: float = 120, trace_to: Path | None = None, **kwargs: object
) -> SippResult:
    """Run a scenario to the end; never raises on a SIP failure, only reports it.

    With `trace_to` (a file path) the SIP messages are kept and returned."""
    extra = list(kwargs.pop("extra", None) or [])  # type: ignore[call-overload]
    if trace_to is not None:
        trace_to.unlink(missing_ok=True)
        extra += ["-trace_msg", "-message_file", str(trace_to)]
    argv = sipp_argv(*args, extra=extra, **kwargs)  # type: ignore[arg-type]
    try:
        done = subprocess.run(
            argv,
            capture_output=True,
            timeout=timeout,
            check=False,
            cwd=trace_to.parent if trace_to else None,
        )
    except subprocess.TimeoutExpired as exc:
        out = (exc.stdout or b"").decode(errors="replace")
        return SippResult(-9, out + f"\n[sipp killed after {timeout}s]")
    messages = trace_to.read_text(errors="replace") if trace_to and trace_to.exists() else ""
    return SippResult(
        done.returncode, (done.stdout + done.stderr).decode(errors="replace"), messages
    )


def start_sipp(name: str, log_dir: Path, *args: str, **kwargs: object) -> ManagedProcess:
    argv = sipp_argv(*args, **kwargs)  # type: ignore[arg-type]
    return ManagedProcess(name, argv, log_dir / f"{name}.log").start()
