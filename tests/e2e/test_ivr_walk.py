"""End to end through `kefu serve` with the demo call flow (`config/flows/demo.yaml`):
SIPp callers walk the IVR with RFC 2833 digits (and Korean speech), the way a person
would, and the SQL row of the call shows what they did.

The walks are timed from the prompts' real lengths: the test renders the flow's
prompts into the center's own cache (same espeak-ng text, same files) and waits
through them, so a digit lands while the menu it answers is playing.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import wave
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from ivr.engine import FlowEngine
from ivr.schema import Flow
from pbx.procs import ManagedProcess, free_port, wait_until
from recording.prompts import resolve
from tests.support.center import Center, center_config, pick_ports, start_center
from tests.support.configs import demo_data
from tests.support.sipp import start_sipp
from tests.support.walk import AwaitBye, Hangup, Press, Say, Wait, speak, start_walk

pytestmark = pytest.mark.e2e

CALLER = "13800000000"  # unknown by number; the account number finds the VIP
ACCOUNT = "79927398713"  # Wang Fang (VIP, high-priority open ticket), passes Luhn
ANNOUNCE_EVERY_S = 6
QUEUE_WAIT_S = 14  # bob is away this long after the caller is queued
BOB_HOLD_MS = 3000
CALLBACK_AFTER_S = 6


def demo_flows() -> dict[str, Any]:
    flows: dict[str, Any] = demo_data()["ivr"]
    # one announcement every few seconds, so the walk hears some without a long wait
    flows["main"]["nodes"]["vip_queue"]["announce"]["every_s"] = ANNOUNCE_EVERY_S
    flows["main"]["nodes"]["sales_queue"]["callback"]["after_s"] = CALLBACK_AFTER_S
    return flows


def korean_flow() -> dict[str, Any]:
    """A spoken menu in Korean: 영업 (sales) queues, 환불 (refund) says goodbye."""
    return {
        "start": "menu",
        "languages": ["ko"],
        "default_language": "ko",
        "voices": {"ko": "ko"},
        "nodes": {
            "menu": {
                "kind": "menu",
                "prompt": {"text": "원하시는 업무를 말씀해 주세요."},
                "options": {"1": "sales"},
                "speech": {"영업": "sales", "환불": "refund", "상담원": "sales"},
                "timeout_s": 8,
                "max_timeouts": 1,
                "fallback": "refund",
            },
            "sales": {"kind": "queue", "queue": "sales"},
            "refund": {"kind": "hangup", "prompt": {"text": "감사합니다."}, "reason": "refund"},
        },
    }


@pytest.fixture(scope="module")
def center(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Center]:
    tmp = tmp_path_factory.mktemp("ivr-center")
    ports = pick_ports(workers=2)
    flows = demo_flows()
    flows["korean"] = korean_flow()
    config = center_config(ports, workers=2, flows=flows)
    config["dids"] = {"1000": {"ivr": "main"}, "2000": {"ivr": "korean"}}
    config["demo_customers"] = True
    # the carrier: callbacks and transfers leave through the trunk to this address
    carrier_port = free_port()
    config["edge"]["trunks"][0]["outbound"] = f"127.0.0.1:{carrier_port}"
    running = start_center(tmp, config, ports)
    running.ports["carrier"] = carrier_port
    try:
        yield running
    finally:
        assert running.proc.stop(timeout=30) == 0, running.proc.log_tail(30)


def prompt_ms(center: Center, flow: str, language: str) -> dict[str, int]:
    """`node.slot` -> length in ms of every prompt of `flow` in `language`, rendered
    exactly as the center renders them (into its cache, so nothing is rendered twice)."""
    flows: dict[str, Flow] = {flow: Flow.model_validate(center.config["ivr"][flow])}
    out: dict[str, int] = {}
    for key, prompt in FlowEngine(flows).prompt_catalog().items():
        parts = key.split(".")  # ivr.<flow>.v1.<node>.<slot...>.<language>
        if parts[-1] != language:
            continue
        path = resolve(prompt, center.data_dir / "prompts", center.data_dir)
        with wave.open(str(path), "rb") as wav:
            out[".".join(parts[3:-1])] = round(wav.getnframes() * 1000 / wav.getframerate())
    return out


def agent_phone(center: Center, user: str, password: str, n: int, log_dir: Path,
                hold_ms: int) -> ManagedProcess:  # fmt: skip
    """Register `user` from a SIPp port, then answer one call there and hang up after
    `hold_ms` (the agent leaves first)."""
    return center.desk_phone(
        f"{user}-phone",
        user,
        password,
        n,
        log_dir,
        scenario="uas_answer.xml",
        timeout_s=180,
        keys={"ring_ms": "500", "hold_ms": str(hold_ms)},
    )


def set_state(center: Center, agent: str, state: str) -> None:
    center.request("PUT", f"/api/agents/{agent}/state", {"state": state, "reason": "meeting"})


def steps_of(row: dict[str, Any]) -> list[tuple[str, str, str]]:
    return [(s["node"], s["what"], s["detail"]) for s in json.loads(row["ivr_path"] or "[]")]


def test_caller_walks_three_levels_confirms_an_account_is_vip_and_answers_the_survey(
    center: Center, artifacts: Path
) -> None:
    """English; an invalid digit and a timeout in the main menu; sales > existing order >
    order status; an account number entered and confirmed (Luhn); the CRM says VIP by
    that account; the priority queue announces the caller's place; the agent hangs up
    and the caller's CSAT and NPS are stored with the call."""
    ms = prompt_ms(center, "main", "en")
    menu, invalid, timeout = (
        ms["main_menu.prompt.0"],
        ms["main_menu.invalid_prompt"],
        (ms["main_menu.timeout_prompt"]),
    )
    bob = agent_phone(center, "1002", "bob-demo-secret", 1, artifacts, hold_ms=BOB_HOLD_MS)
    procs = [bob]
    try:
        center.wait_agents(["bob"])
        set_state(center, "bob", "away")
        survey_at_ms = ms["vip_greeting.prompts.0"] + QUEUE_WAIT_S * 1000 + BOB_HOLD_MS + 500
        walk = [
            Wait(1000), Press("1"),  # English, while the language menu plays
            Wait(1500), Press("8"),  # not an option: "not a valid choice", the menu again
            # ...then silence through the menu and its timeout, the timeout message, and
            # 1.5 s into the menu once more
            Wait(invalid + menu + 5000 + timeout + 1800), Press("1"),  # sales
            Wait(1500), Press("2"),  # an existing order
            Wait(1500), Press("1"),  # its status: the account number
            Wait(1000), Press(ACCOUNT + "#", gap_ms=250),
            Wait(1500), Press("1"),  # "you entered 7 9 9 ...: press 1 to confirm"
            Wait(survey_at_ms + 3000), Press("4"),  # CSAT while its question plays
            Wait(3000), Press("9"),  # NPS
            AwaitBye(max_ms=30_000),  # thanks, goodbye: the IVR hangs up
        ]  # fmt: skip
        caller = start_walk("vip-walk", artifacts, walk, center.edge, caller=CALLER,
                            local_port=center.sipp_port(2))  # fmt: skip
        procs.append(caller)
        center.wait_until_queued(CALLER, timeout=60)
        time.sleep(QUEUE_WAIT_S)
        set_state(center, "bob", "available")
        (row,) = center.wait_calls(1, timeout=60, where=lambda r: r["caller"] == CALLER)
        wait_until(lambda: not caller.alive(), 30, "the caller's SIPp to finish")
        assert caller.returncode() == 0, caller.log_tail(30)
    finally:
        for proc in procs:
            proc.stop()
    steps = steps_of(row)
    whats = [what for _, what, _ in steps]
    assert ("main_menu", "invalid", "1/3") in steps
    assert ("main_menu", "timeout", "1/3") in steps
    entered = [node for node, what, _ in steps if what == "enter"]
    assert entered[entered.index("main_menu") :][:6] == [
        "main_menu", "sales_menu", "order_menu", "account", "account_lookup", "account_vip",
    ]  # fmt: skip
    assert ("account", "confirmed", ACCOUNT) in steps
    assert ("vip_queue", "queued", "support") in steps
    assert "announce" in whats and "agent_hung_up" in whats
    assert (row["survey_csat"], row["survey_nps"]) == (4, 9)
    assert row["agent"] == "bob" and row["queue"] == "support"
    assert row["customer_id"] == "c-1001" and row["language"] == "en"
    assert row["flow"] == "main@v1" and row["hangup_side"] == "agent"
    variables = json.loads(row["variables"])
    assert variables["account"] == ACCOUNT and variables["route"] == "vip"
    (trace,) = json.loads(row["routing_trace"])
    assert trace["priority"] == 10 + 20 + 5  # the flow's 10, VIP 20, high open ticket 5


def test_a_korean_caller_chooses_by_voice(center: Center, artifacts: Path) -> None:
    """The spoken menu: the caller says 영업 (espeak-ng Korean over RTP) after the
    prompt; vosk, with the menu's phrases as grammar, sends the call to sales."""
    ms = prompt_ms(center, "korean", "ko")
    said = speak("영업", artifacts / "yeongeop.wav")
    walk = [Wait(ms["menu.prompt.0"] + 800), Say(said), Wait(9000), Hangup()]
    result_row = None
    caller = start_walk("korean-walk", artifacts, walk, center.edge, caller="5550300",
                        service="2000", local_port=center.sipp_port(3))  # fmt: skip
    try:
        center.wait_until_queued("5550300", timeout=30)
        (result_row,) = center.wait_calls(1, timeout=40, where=lambda r: r["caller"] == "5550300")
    finally:
        caller.stop()
    steps = steps_of(result_row)
    spoken = [detail for _, what, detail in steps if what == "speech"]
    assert spoken and spoken[0].startswith("영업"), steps
    assert result_row["queue"] == "sales" and result_row["hangup_side"] == "abandon"


def test_config_reload_serves_new_calls_and_refuses_a_broken_flow(center: Center) -> None:
    """`kefu config reload`: a fixed flow becomes version 2; a broken one changes nothing
    and the problem is printed with its file and path."""
    cfg = center.data_dir.parent / "kefu.yaml"
    config = yaml.safe_load(cfg.read_text())
    config["ivr"]["korean"]["nodes"]["menu"]["timeout_s"] = 9

    def reload(data: dict[str, Any]) -> subprocess.CompletedProcess[str]:
        cfg.write_text(yaml.safe_dump(data, allow_unicode=True))
        return subprocess.run(
            [sys.executable, "-m", "core.cli", "config", "reload", str(cfg)],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip

    done = reload(config)
    assert done.returncode == 0, done.stderr
    assert "flows reloaded: version 2 (korean, main)" in done.stdout
    config["ivr"]["korean"]["nodes"]["menu"]["speech"]["영업"] = "nowhere"
    done = reload(config)
    assert done.returncode == 2
    assert f"{cfg}: ivr.korean.nodes.menu.speech.영업: unknown node 'nowhere'" in done.stderr
    assert "version 2" in center.log("core") and "reload refused" not in done.stdout


def test_a_caller_keeps_their_place_and_is_called_back_through_the_trunk(
    center: Center, artifacts: Path
) -> None:
    """Nobody staffs sales: after the offer the caller presses 1 and hangs up; when
    alice logs in the engine reserves her, her phone rings first, then the customer's
    number is dialled through the trunk's carrier and the two are bridged."""
    number = "13800000002"
    ms = prompt_ms(center, "main", "en")
    walk = [
        Wait(1000), Press("1"),  # English
        Wait(1500), Press("1"),  # sales
        Wait(1500), Press("1"),  # a new order: the sales queue
        # "press 1 to be called back" comes after CALLBACK_AFTER_S, or after the position
        # announcement due at the same moment: a 1 every 2 s catches it (a 1 before the
        # offer means nothing in the queue, and one after it is taken is ignored)
        Wait(CALLBACK_AFTER_S * 1000 + 1000),
        *[step for _ in range(8) for step in (Press("1"), Wait(1800))],
        AwaitBye(max_ms=ms["callback_ok.prompt.0"] + 10_000),
    ]  # fmt: skip
    caller = start_walk("callback-walk", artifacts, walk, center.edge, caller=number,
                        local_port=center.sipp_port(4))  # fmt: skip
    carrier = start_sipp(
        "carrier", artifacts, "uas_answer.xml", "127.0.0.1:1", local_port=center.ports["carrier"],
        media_port=free_port(span=4), calls=1, timeout_s=120,
        keys={"ring_ms": "300", "hold_ms": "3600000"},
    )  # fmt: skip
    procs = [caller, carrier]
    try:
        center.wait_until_queued(number, timeout=30)
        wait_until(lambda: not caller.alive(), 60, "the caller to accept the callback")
        assert caller.returncode() == 0, caller.log_tail(30)
        (first,) = center.wait_calls(1, timeout=20, where=lambda r: r["caller"] == number)
        assert first["callback_number"] == number and first["queue"] == "sales"
        procs.append(agent_phone(center, "1001", "alice-demo-secret", 5, artifacts, 4000))
        (back,) = center.wait_calls(
            1, timeout=60, where=lambda r: r["call_id"] == first["call_id"] + "-cb"
        )
    finally:
        for proc in procs:
            proc.stop()
    assert back["agent"] == "alice" and back["queue"] == "sales"
    assert back["answered_at"] is not None and back["hangup_side"] == "agent"
    assert back["callback_number"] == number and back["caller"] == number
    assert json.loads(back["variables"]) == {"callback_for": first["call_id"]}
    assert back["caller_rtp_rx"] > 0 and back["agent_rtp_rx"] > 0  # audio both ways
