"""The walk scenario generator and RTP pcap writer (`tests/support/walk.py`), offline.

What SIPp and pjsua make of them is in `tests/integration/test_walk.py`."""

from __future__ import annotations

import struct
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from tests.support.walk import (
    DIGIT_MS,
    PCAPS,
    AwaitBye,
    Hangup,
    Press,
    Say,
    Step,
    Wait,
    pcap_ms,
    write_rtp_pcap,
    write_scenario,
)


def packets(path: Path) -> list[tuple[float, bytes]]:
    data = path.read_bytes()
    assert struct.unpack_from("<IHHiIII", data) == (0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)
    out, offset = [], 24
    while offset < len(data):
        sec, usec, caplen, length = struct.unpack_from("<IIII", data, offset)
        assert caplen == length
        out.append((sec + usec / 1e6, data[offset + 16 : offset + 16 + caplen]))
        offset += 16 + caplen
    return out


def plan(scenario: Path) -> list[str]:
    """The scenario body after the ACK: 'play <file name>' and 'pause <ms>' in order."""
    root = ET.parse(scenario).getroot()
    steps = []
    for el in root:
        if el.tag == "pause":
            steps.append(f"pause {el.get('milliseconds')}")
        for ex in el.iter("exec"):
            steps.append(f"play {Path(ex.get('play_pcap_audio') or '').name}")
    return steps


def test_rtp_pcap_is_20ms_g711_over_udp_ipv4_ethernet(tmp_path: Path) -> None:
    """401 A-law bytes: 3 packets of 160 (padded with A-law silence), one SSRC, 20 ms apart."""
    pcap = write_rtp_pcap(bytes(range(256)) + bytes(145), tmp_path / "p.pcap")
    got = packets(pcap)
    assert [round(t - got[0][0], 3) for t, _ in got] == [0, 0.02, 0.04]
    rtp = []
    for _, frame in got:
        assert frame[12:14] == b"\x08\x00" and len(frame) == 14 + 20 + 8 + 12 + 160
        ip = frame[14:34]
        assert ip[0] == 0x45 and ip[9] == 17 and struct.unpack("!H", ip[2:4])[0] == 20 + 8 + 172
        words = sum(struct.unpack("!10H", ip))
        assert (words & 0xFFFF) + (words >> 16) == 0xFFFF  # a valid header checksum
        assert struct.unpack("!HHHH", frame[34:42])[2] == 8 + 172
        rtp.append(struct.unpack("!BBHII", frame[42:54]))
    assert [r[0] for r in rtp] == [0x80] * 3
    assert [r[1] for r in rtp] == [0x88, 8, 8]  # marker on the first, PCMA
    assert [(r[2] - rtp[0][2]) & 0xFFFF for r in rtp] == [0, 1, 2]
    assert [(r[3] - rtp[0][3]) & 0xFFFFFFFF for r in rtp] == [0, 160, 320]
    assert len({r[4] for r in rtp}) == 1
    assert got[-1][1][54 + 145 :] == b"\xd5" * 15
    assert pcap_ms(pcap) == 60
    other = packets(write_rtp_pcap(bytes(160), tmp_path / "q.pcap"))[0][1]
    assert other[46:54] != got[0][1][46:54]  # another file: another timestamp and SSRC


def test_scenario_plays_the_steps_in_order_over_a_silence_bed(tmp_path: Path) -> None:
    """Digits and speech stop the bed, which restarts after them and when it runs out."""
    speech = write_rtp_pcap(b"\x55" * 160 * 50, tmp_path / "yes.pcap")  # 1 s
    steps: list[Step] = [Wait(1000), Press("1"), Wait(500), Press("2#", gap_ms=300), Say(speech),
             Press("2"), Wait(11_000), Hangup(after_ms=200)]  # fmt: skip
    scenario = write_scenario(steps, tmp_path / "w.xml")
    assert pcap_ms(tmp_path / "w-silence.pcap") == 10_000
    assert plan(scenario) == [
        "play w-silence.pcap", "pause 1000",
        "play dtmf_2833_1.pcap", f"pause {DIGIT_MS}",
        "play w-silence.pcap", "pause 500",
        "play dtmf_2833_2.pcap", f"pause {DIGIT_MS}",
        "play w-silence.pcap", "pause 300",
        "play dtmf_2833_pound.pcap", f"pause {DIGIT_MS}",
        "play yes.pcap", "pause 1000",
        "play dtmf_2833_2.pcap", f"pause {DIGIT_MS}",
        "play w-silence.pcap", "pause 10000",
        "play w-silence.pcap", "pause 1200",
    ]  # fmt: skip
    text = scenario.read_text()
    assert text.count("BYE [next_url] SIP/2.0") == 1 and "[caller]" in text


def test_two_presses_in_a_row_keep_a_gap_and_a_bye_can_be_awaited(tmp_path: Path) -> None:
    """Press("5"), Press("5") are two presses: the second one's gap of bed comes first."""
    scenario = write_scenario(
        [Press("5"), Press("5", gap_ms=100), AwaitBye(max_ms=3000)],
        tmp_path / "w.xml",
        background=PCAPS / "g711a.pcap",
        ruri_params=";trunk=t1",
    )
    assert plan(scenario) == [
        "play dtmf_2833_5.pcap", f"pause {DIGIT_MS}",
        "play g711a.pcap", "pause 100",
        "play dtmf_2833_5.pcap", f"pause {DIGIT_MS}",
        "play g711a.pcap", "pause 2999",
    ]  # fmt: skip
    text = scenario.read_text()
    assert '<recv request="BYE" timeout="1" next="got_bye"/>' in text
    assert "BYE [next_url]" not in text
    assert "INVITE sip:[service]@[remote_ip]:[remote_port];trunk=t1 SIP/2.0" in text


@pytest.mark.parametrize(
    ("steps", "error"),
    [
        ([Press("12a")], "digits are 0-9"),
        ([Press("")], "digits are 0-9"),
        ([Press("11", gap_ms=20)], "gap_ms must be >= 40"),
        ([Hangup(), Wait(100)], "must be the last step"),
        ([Wait(-1)], "negative time"),
        ([Say(Path("/nonexistent.wav"))], "no such file"),
    ],
)
def test_bad_walks_are_refused(tmp_path: Path, steps: list[Step], error: str) -> None:
    with pytest.raises(ValueError, match=error):
        write_scenario(steps, tmp_path / "w.xml")


def test_a_script_from_the_command_line_becomes_steps() -> None:
    from tests.support.walk import parse_script

    assert parse_script("wait 1500, press 12#, hangup") == [Wait(1500), Press("12#"), Hangup(0)]
    with pytest.raises(ValueError, match="'jump 3': expected"):
        parse_script("wait 10, jump 3")
