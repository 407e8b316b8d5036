"""`kefu config check`: a configuration, or an IVR flow file against a configuration."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from config.loader import demo_path
from core.cli import main

FLOWS = demo_path().parent / "flows" / "demo.yaml"


def test_demo_config_and_demo_flows_check_ok(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "check", str(demo_path())]) == 0
    assert main(["config", "check", str(FLOWS)]) == 0
    assert capsys.readouterr().out.count(": ok") == 2


def test_a_flow_naming_an_unknown_queue_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = yaml.safe_load(FLOWS.read_text())
    text = yaml.safe_dump(data, allow_unicode=True).replace("queue: sales", "queue: sals")
    assert "queue: sals" in text
    bad = tmp_path / "flows.yaml"
    bad.write_text(text)
    assert main(["config", "check", str(bad), "--against", str(demo_path())]) == 2
    err = capsys.readouterr().err
    assert f"{bad}: ivr." in err and "unknown queue 'sals'" in err
