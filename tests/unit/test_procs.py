"""Port picking for tests and `kefu serve`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from pbx.procs import free_port, wait_until


def test_free_port_remembers_every_port_it_hands_out() -> None:
    """An empty `avoid` set passed in is filled, so later picks never overlap it."""
    taken: set[int] = set()
    first = free_port(avoid=taken)
    assert first in taken
    span_base = free_port(span=50, avoid=taken)
    assert first not in range(span_base, span_base + 50)
    assert len(taken) == 51


def test_children_of_a_killed_supervisor_are_terminated(tmp_path: Path) -> None:
    """`kefu serve` SIGKILLed: its children (own sessions) must not live on as orphans."""
    script = tmp_path / "parent.py"
    script.write_text(
        "import sys, time\n"
        "from pathlib import Path\n"
        "from pbx.procs import ManagedProcess\n"
        f"child = ManagedProcess('sleeper', ['sleep', '60'], Path({str(tmp_path)!r}) / 'c.log',"
        " die_with_parent=True).start()\n"
        "print(child.pid, flush=True)\n"
        "time.sleep(60)\n"
    )
    parent = subprocess.Popen(
        [sys.executable, str(script)], stdout=subprocess.PIPE, text=True, cwd=Path.cwd()
    )
    try:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        assert _alive(child)
        parent.kill()
        parent.wait(5)
        wait_until(lambda: not _alive(child), 5, "the orphaned child to be terminated")
    finally:
        parent.kill()
        parent.wait(5)
        if parent.stdout is not None:
            parent.stdout.close()


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie has exited; only its parent (init) has to reap it
