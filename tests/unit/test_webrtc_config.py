"""Browser softphones in the configuration: `edge.ws_port`/`ws_origins` and `rtpengine`
are validated at load, and the edge config and rtpengine command line follow them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from config.loader import ConfigError, load, parse
from pbx.edge import RTP_TO_BROWSER, RTP_TO_WORKER, render_edge
from pbx.rtpengine import bdecode, bencode, rtpengine_argv
from tests.support.configs import demo_data


def errors(data: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse(data, "demo.yaml")
    return info.value.lines


def test_demo_enables_browsers_on_their_own_ports() -> None:
    settings = load()
    assert settings.edge.webrtc
    assert settings.edge.ws_port == 8088
    assert "http://127.0.0.1:8080" in settings.edge.ws_origins
    assert (settings.rtpengine.port_min, settings.rtpengine.port_max) == (30000, 31999)


def test_a_config_without_browsers_stays_valid_and_renders_no_websocket(tmp_path: Path) -> None:
    data = demo_data()
    del data["edge"]["ws_port"], data["edge"]["ws_origins"], data["rtpengine"]
    settings = parse(data, "demo.yaml")
    assert not settings.edge.webrtc
    cfg = render_edge(settings, run_dir=tmp_path).config.read_text()
    assert "#!define WITH_WEBRTC" not in cfg
    assert "{{" not in cfg


def test_render_puts_origins_ws_listener_and_relay_flags_in_the_edge(tmp_path: Path) -> None:
    data = demo_data()
    data["edge"]["ws_origins"] = ["https://Desk.Example.com", "http://127.0.0.1:8080"]
    cfg = render_edge(parse(data, "demo.yaml"), run_dir=tmp_path).config.read_text()
    assert cfg.count("#!define WITH_WEBRTC") == 1
    assert "listen=tcp:127.0.0.1:8088" in cfg
    assert 'if ($var(origin) == "https://desk.example.com") {' in cfg  # browsers send lower case
    assert 'if ($var(origin) == "http://127.0.0.1:8080") {' in cfg
    assert 'modparam("rtpengine", "rtpengine_sock", "udp:127.0.0.1:22222")' in cfg
    assert f'rtpengine_offer("{RTP_TO_BROWSER}")' in cfg
    assert f'rtpengine_answer("{RTP_TO_WORKER}")' in cfg
    assert "{{" not in cfg


def test_websocket_needs_origins_and_origins_are_bare() -> None:
    data = demo_data()
    data["edge"]["ws_origins"] = []
    assert errors(data) == [
        "demo.yaml: edge.ws_origins: name the pages that may open the WebSocket "
        "(e.g. http://127.0.0.1:8080)"
    ]
    data["edge"]["ws_origins"] = ['http://127.0.0.1:8080/desk"']
    (line,) = errors(data)
    assert line.startswith("demo.yaml: edge.ws_origins[0]: String should match pattern")


def test_port_clashes_with_the_websocket_and_rtpengine_are_refused() -> None:
    data = demo_data()
    data["edge"]["ws_port"] = 8080  # http.port
    data["rtpengine"]["ng_port"] = 1883  # broker.port
    (line,) = errors(data)
    assert line.startswith("demo.yaml: edge: ports must differ:"), line
    data = demo_data()
    data["rtpengine"]["port_min"] = 20100  # inside the workers' RTP ports 20000-20319
    data["rtpengine"]["port_max"] = 20199
    assert errors(data) == [
        "demo.yaml: rtpengine.port_min: rtpengine media ports 20100-20199 overlap the "
        "workers' RTP ports 20000-20319"
    ]
    data["rtpengine"]["port_min"] = 8000
    data["rtpengine"]["port_max"] = 8100
    assert errors(data) == [
        "demo.yaml: rtpengine.port_min: rtpengine media ports 8000-8100 overlap "
        "http.port=8080, edge.ws_port=8088"
    ]
    data["rtpengine"]["port_max"] = 8001
    (line,) = errors(data)
    assert line == "demo.yaml: rtpengine.port_max: needs at least 4 ports from port_min=8000"


def test_rtpengine_runs_in_the_foreground_without_kernel_or_config_file(tmp_path: Path) -> None:
    argv = rtpengine_argv(load().rtpengine, tmp_path / "r.pid")
    assert argv[0] == "/usr/bin/rtpengine"
    for flag in ("--config-file=none", "--foreground", "--log-stderr", "--table=-1",
                 "--listen-ng=127.0.0.1:22222", "--interface=127.0.0.1",
                 "--port-min=30000", "--port-max=31999"):  # fmt: skip
        assert flag in argv


def test_bencode_round_trip() -> None:
    msg = {"command": "query", "call-id": "abc@x", "flags": ["trust-address"], "n": -3}
    raw = bencode(msg)
    assert raw == b"d7:call-id5:abc@x7:command5:query5:flagsl13:trust-addresse1:ni-3ee"
    assert bdecode(raw) == msg
    with pytest.raises(ValueError):
        bdecode(raw + b"x")


def test_wss_needs_a_certificate_and_key_and_renders_a_tls_listener(tmp_path: Path) -> None:
    data = demo_data()
    data["edge"]["wss_port"] = 8443
    assert errors(data) == [
        "demo.yaml: edge.tls_cert: wss_port needs a PEM file here",
        "demo.yaml: edge.tls_key: wss_port needs a PEM file here",
    ]
    data["edge"] |= {"tls_cert": str(tmp_path / "c.pem"), "tls_key": str(tmp_path / "k.pem")}
    del data["edge"]["ws_port"]  # wss alone is enough for browsers
    settings = parse(data, "demo.yaml")
    assert settings.edge.webrtc
    files = render_edge(settings, run_dir=tmp_path / "run")
    cfg = files.config.read_text()
    assert "#!define WITH_WSS" in cfg and "#!define WITH_WS\n" not in cfg
    assert "listen=tls:127.0.0.1:8443" in cfg
    tls = (tmp_path / "run" / "tls.cfg").read_text()
    assert f"certificate = {tmp_path / 'c.pem'}" in tls
    assert f"private_key = {tmp_path / 'k.pem'}" in tls
    data["edge"]["wss_port"] = 8080  # http.port
    (line,) = errors(data)
    assert line.startswith("demo.yaml: edge: ports must differ:"), line
