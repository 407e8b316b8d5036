"""Config validation: the demo loads; every error names file, path and expectation."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from config.loader import ConfigError, load, parse
from recording.prompts import espeak_voices
from tests.support.configs import demo_data


def demo() -> dict[str, Any]:
    return demo_data()


MAIN_MENU = ("ivr", "main", "nodes", "main_menu")


def node(data: dict[str, Any], name: str) -> dict[str, Any]:
    result: dict[str, Any] = data["ivr"]["main"]["nodes"][name]
    return result


def errors(data: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse(data, "demo.yaml")
    return info.value.lines


def test_demo_config_loads() -> None:
    settings = load()
    assert settings.dids["1000"].ivr == "main"
    assert settings.agents["alice"].sip_user == "1001"
    assert settings.pbx.trunk_calls_per_worker == 2


def test_unknown_queue_names_file_path_and_choices() -> None:
    data = demo()
    node(data, "sales_queue")["queue"] = "sals"
    assert errors(data) == [
        "demo.yaml: ivr.main.nodes.sales_queue.queue: unknown queue 'sals' (queues: sales, support)"
    ]


def test_misspelt_key_and_wrong_type_are_both_reported() -> None:
    data = demo()
    data["agents"]["bob"]["pasword"] = "x"
    data["pbx"]["workers"] = "many"
    lines = errors(data)
    assert "demo.yaml: agents.bob.pasword: unknown key (check the spelling)" in lines
    assert any(
        line.startswith("demo.yaml: pbx.workers: Input should be a valid integer") for line in lines
    )


def test_cross_references_are_checked() -> None:
    data = demo()
    data["dids"]["2000"] = {"ivr": "night"}
    data["agents"]["bob"]["sip_user"] = "1001"
    data["agents"]["bob"]["skills"] = {"billing": 2}
    lines = errors(data)
    assert "demo.yaml: dids.\"2000\".ivr: unknown IVR flow 'night' (ivr: main)" in lines
    assert "demo.yaml: agents.bob.sip_user: SIP user '1001' already belongs to alice" in lines
    assert any("agents.bob.skills.billing: no queue uses skill 'billing'" in line for line in lines)


def test_trunk_allow_list_must_be_addresses() -> None:
    data = demo()
    data["edge"]["trunks"][0]["allow"] = ["127.0.0.1", "carrier.example"]
    (line,) = errors(data)
    assert line.startswith("demo.yaml: edge.trunks[0]:")
    assert "'carrier.example' is not an IP address or network" in line


def test_missing_prompt_file_and_bad_yaml(tmp_path: Path) -> None:
    data = demo()
    node(data, "goodbye")["prompt"] = {"en": {"file": "bye.wav"}, "zh": {"text": "再见"}}
    cfg = tmp_path / "center.yaml"
    cfg.write_text(yaml.safe_dump(data))
    with pytest.raises(
        ConfigError,
        match=r"center.yaml: ivr.main.nodes.goodbye.prompt\[0\].en.file: no such WAV file",
    ):
        load(cfg)
    cfg.write_text("edge: [unclosed\n")
    with pytest.raises(ConfigError, match=r"center.yaml: line \d+, column \d+: invalid YAML"):
        load(cfg)


def test_kefu_serve_exits_non_zero_on_a_bad_config(tmp_path: Path) -> None:
    """`kefu serve` refuses to start on an unknown queue and says where it is."""
    data = demo()
    node(data, "support_queue")["queue"] = "suport"
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(yaml.safe_dump(data))
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "core.cli",
            "serve",
            "--config",
            str(cfg),
            "--data-dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert f"{cfg}: ivr.main.nodes.support_queue.queue: unknown queue 'suport'" in done.stderr
    assert not (tmp_path / "logs").exists()  # nothing was started


def test_port_ranges_and_hosts_that_would_fail_at_run_time_are_refused() -> None:
    data = demo()
    data["pbx"]["rtp_base_port"] = 5000  # 8 x 40 ports: over the edge's and workers' ports
    node(data, "main_menu")["options"]["10"] = "sales_menu"
    data["edge"]["sip_host"] = 'bad"host'
    lines = errors(data)
    assert any(
        line.startswith("demo.yaml: edge.sip_host: String should match pattern") for line in lines
    ), lines
    assert any('ivr.main.nodes.main_menu.options."10"' in line for line in lines), lines
    data = demo()
    data["pbx"]["rtp_base_port"] = 5000
    assert errors(data) == [
        "demo.yaml: pbx.rtp_base_port: RTP ports 5000-5319 overlap edge.sip_port=5060, "
        "edge.rpc_port=5071, worker SIP port 5100"
    ]
    data["pbx"]["rtp_base_port"] = 60000
    data["pbx"]["workers"] = 200
    (line,) = errors(data)
    assert "200 workers x 40 RTP ports from 60000 run past 65535" in line


def test_a_problem_in_a_flow_file_names_that_file(tmp_path: Path) -> None:
    """Flows may live in their own files; errors point into the file that has them."""
    data = demo()
    flows = {"ivr": data.pop("ivr")}
    flows["ivr"]["main"]["nodes"]["sales_menu"]["options"]["1"] = "sales_nwe"
    (tmp_path / "flows.yaml").write_text(yaml.safe_dump(flows, allow_unicode=True))
    data["flow_files"] = ["flows.yaml"]
    cfg = tmp_path / "center.yaml"
    cfg.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError) as info:
        load(cfg)
    flow_file = tmp_path / "flows.yaml"
    assert info.value.lines == [
        f"{flow_file}: ivr.main.nodes.sales_menu.options.\"1\": unknown node 'sales_nwe'",
        f"{flow_file}: ivr.main.nodes.sales_new: unreachable from the start node 'language'",
    ]
    flows["ivr"]["main"]["nodes"]["sales_menu"]["timeout_s"] = "soon"
    (tmp_path / "flows.yaml").write_text(yaml.safe_dump(flows, allow_unicode=True))
    with pytest.raises(ConfigError) as info:
        load(cfg)
    (line,) = info.value.lines
    assert line.startswith(f"{tmp_path / 'flows.yaml'}: ivr.main.nodes.sales_menu.timeout_s:")


def test_a_flow_defined_twice_or_missing_is_refused(tmp_path: Path) -> None:
    data = demo()
    flows = {"ivr": {"main": data["ivr"]["main"]}}
    (tmp_path / "flows.yaml").write_text(yaml.safe_dump(flows, allow_unicode=True))
    data["flow_files"] = ["flows.yaml"]
    with pytest.raises(ConfigError) as info:
        parse(data, "center.yaml", tmp_path)
    assert info.value.lines == [
        f"{tmp_path / 'flows.yaml'}: ivr.main: flow 'main' is also defined in center.yaml"
    ]
    data = demo()
    del data["ivr"]
    lines = errors(data)
    assert "demo.yaml: ivr: no call flow: write one under ivr: or in flow_files" in lines


def test_a_voice_espeak_ng_lacks_is_refused_at_load(tmp_path: Path) -> None:
    """A text prompt that could not be rendered fails the load, not the first call."""
    data = demo()
    data["ivr"]["main"]["voices"]["zh"] = "martian"
    node(data, "goodbye")["prompt"]["en"]["voice"] = "en-xx"
    cfg = tmp_path / "center.yaml"
    cfg.write_text(yaml.safe_dump(data, allow_unicode=True))
    with pytest.raises(ConfigError) as info:
        load(cfg, voices=espeak_voices())
    assert info.value.lines == [
        f"{cfg}: ivr.main.voices.zh: espeak-ng has no voice 'martian' (see espeak-ng --voices)",
        f"{cfg}: ivr.main.nodes.goodbye.prompt[0].en.voice: espeak-ng has no voice 'en-xx' "
        "(see espeak-ng --voices)",
    ]
