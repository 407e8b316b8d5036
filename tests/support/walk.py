"""Scripted SIPp callers that walk an IVR: digits, spoken phrases, waits, the hang-up.

A walk is a list of steps (`Wait`, `Press`, `Say`, ending in `Hangup` or `AwaitBye`).
`write_scenario` turns it into a straight-line SIPp UAC scenario (the steps become
literal pcap plays and pauses, so SIPp needs no branches and no keys but `[caller]`);
`start_walk`/`run_walk` run it through `tests/support/sipp.py`. `speak` and
`wav_to_pcap` make the audio a `Say` plays: espeak-ng speech as PCMA RTP in a pcap.

SIPp plays one pcap at a time per call: a new `play_pcap_audio` stops the one playing,
nothing is mixed. Between steps the caller sends a *bed* so RTP keeps flowing: A-law
silence by default (a caller listening to a menu, so the IVR's silence detection ends
a recording after a phrase), or a pcap such as `g711a.pcap` (a talking caller). The
bed stops for each digit and each phrase and starts again from its beginning after.
Measured timings are in docs/FACTS.md (SIPp 3.6.1).
"""

from __future__ import annotations

import hashlib
import struct
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from xml.sax.saxutils import quoteattr

from pbx.procs import ManagedProcess, free_port
from tests.support.sipp import PCAPS, SippResult, run_sipp, start_sipp

SILENCE_BED_MS = 10_000
DIGIT_PCAPS = {
    **{d: PCAPS / f"dtmf_2833_{d}.pcap" for d in "0123456789"},
    "*": PCAPS / "dtmf_2833_star.pcap",
    "#": PCAPS / "dtmf_2833_pound.pcap",
}
DIGIT_MS = 160
"""A digit's turn on the line: its pcap lasts 140 ms (end packets included), plus one
packet time so a following play does not cancel the last end packets in flight."""
MIN_GAP_MS = 40
"""Least bed between two digits. The digit pcaps carry fixed sequence numbers (7984-8443)
and pjsua drops telephone-events whose sequence number went back: a repeated digit is
heard only if the bed in between made pjsua resync, which takes two bed packets
(`g711a.pcap` sends one per 30 ms: 20 ms lost the repeat, 40 ms kept it)."""

_FRAME = 160  # samples (and bytes) per 20 ms RTP packet at 8 kHz, G.711
_PACKET_US = 20_000
_SILENT_BYTE = {8: 0xD5, 0: 0xFF}  # the G.711 code of a zero sample: A-law, u-law
_ENCODING = {8: "a-law", 0: "u-law"}
_RTP_PORT = 6000  # SIPp keeps only the offset of a packet's port from the lowest one


# ---------------------------------------------------------------- the script


@dataclass(frozen=True, slots=True)
class Step:
    """One thing the caller does (a common base, so a list of mixed steps is typed)."""


@dataclass(frozen=True, slots=True)
class Wait(Step):
    """Stay on the line, sending the bed, for `ms`."""

    ms: int


@dataclass(frozen=True, slots=True)
class Press(Step):
    """RFC 2833 digits, one shipped SIPp pcap each, `gap_ms` of bed between two."""

    digits: str
    """0-9, * and #."""
    gap_ms: int = 300


@dataclass(frozen=True, slots=True)
class Say(Step):
    """Speak: play `audio` alone (no bed under it), then the bed again."""

    audio: Path
    """A WAV (any rate/width; converted to G.711 next to the scenario) or a ready .pcap."""


@dataclass(frozen=True, slots=True)
class Hangup(Step):
    """The last step: send BYE after `after_ms` (a BYE from the far end first is fine)."""

    after_ms: int = 0


@dataclass(frozen=True, slots=True)
class AwaitBye(Step):
    """The last step: wait for the far end's BYE; none within `max_ms` fails the call
    (SIPp then sends BYE itself and exits 1)."""

    max_ms: int = 30_000


def walk_ms(steps: Sequence[Step]) -> int:
    """The longest time a walk can take after the answer (for timeouts)."""
    total = 0
    for step in steps:
        if isinstance(step, Wait):
            total += step.ms
        elif isinstance(step, Press):
            total += len(step.digits) * (DIGIT_MS + step.gap_ms)
        elif isinstance(step, Say):
            total += pcap_ms(step.audio) if step.audio.suffix == ".pcap" else _wav_ms(step.audio)
        elif isinstance(step, Hangup):
            total += step.after_ms
        elif isinstance(step, AwaitBye):
            total += step.max_ms
    return total


def _check(steps: Sequence[Step]) -> list[Step]:
    steps = list(steps)
    if not steps or not isinstance(steps[-1], Hangup | AwaitBye):
        steps.append(Hangup())
    for i, step in enumerate(steps):
        if not isinstance(step, Wait | Press | Say | Hangup | AwaitBye):
            raise TypeError(f"step {i}: {step!r} is not a Wait, Press, Say, Hangup or AwaitBye")
        if isinstance(step, Hangup | AwaitBye) and i != len(steps) - 1:
            raise ValueError(f"step {i} ({step!r}) ends the call: it must be the last step")
        if isinstance(step, Press):
            bad = sorted(set(step.digits) - set(DIGIT_PCAPS))
            if not step.digits or bad:
                raise ValueError(f"step {i}: Press({step.digits!r}): digits are 0-9, * and #")
            if step.gap_ms < MIN_GAP_MS:
                raise ValueError(f"step {i}: {step!r}: gap_ms must be >= {MIN_GAP_MS}")
        if isinstance(step, Say) and not step.audio.is_file():
            raise ValueError(f"step {i}: Say({str(step.audio)!r}): no such file")
        if any(ms < 0 for ms in _durations(step)):
            raise ValueError(f"step {i}: {step!r}: negative time")
    return steps


def _durations(step: Step) -> tuple[int, ...]:
    if isinstance(step, Wait):
        return (step.ms,)
    if isinstance(step, Hangup):
        return (step.after_ms,)
    if isinstance(step, AwaitBye):
        return (step.max_ms,)
    return ()


# ---------------------------------------------------------------- audio


def speak(text: str, path: Path, voice: str = "ko", speed: int = 130) -> Path:
    """`text` spoken by espeak-ng, as an 8 kHz mono 16-bit WAV at `path`."""
    raw = path.with_suffix(".raw.wav")
    subprocess.run(
        ["espeak-ng", "-v", voice, "-s", str(speed), "-w", str(raw), text],
        check=True,
        capture_output=True,
    )
    subprocess.run(
        ["sox", str(raw), "-r", "8000", "-c", "1", "-b", "16", str(path)],
        check=True,
        capture_output=True,
    )
    raw.unlink()
    return path


def wav_to_pcap(wav: Path, pcap: Path, payload_type: int = 8) -> Path:
    """Any WAV as G.711 RTP (8: PCMA, 0: PCMU) in a pcap SIPp's play_pcap_audio replays.

    libpcap format, Ethernet/IPv4/UDP/RTP, 20 ms packets of 160 bytes, one SSRC,
    rising sequence numbers and timestamps (see `write_rtp_pcap`); the last packet is
    padded with silence. UDP checksums are 0: SIPp computes them when it sends."""
    if payload_type not in _ENCODING:
        raise ValueError(f"payload_type must be 8 (PCMA) or 0 (PCMU), not {payload_type}")
    encoded = subprocess.run(
        ["sox", str(wav), "-t", "raw", "-r", "8000", "-c", "1", "-e", _ENCODING[payload_type],
         "-"],
        check=True,
        capture_output=True,
    ).stdout  # fmt: skip
    return write_rtp_pcap(encoded, pcap, payload_type)


def silence_pcap(pcap: Path, ms: int = SILENCE_BED_MS, payload_type: int = 8) -> Path:
    """`ms` of G.711 silence as RTP in a pcap (the default bed of a walk)."""
    frames = -(-ms // 20)
    return write_rtp_pcap(bytes([_SILENT_BYTE[payload_type]]) * frames * _FRAME, pcap, payload_type)


def write_rtp_pcap(encoded: bytes, pcap: Path, payload_type: int = 8) -> Path:
    """G.711 bytes (one per sample, 8 kHz) as a pcap of 20 ms RTP packets.

    The SSRC, first sequence number and first timestamp come from a hash of the file
    name, so the pcaps of a walk do not continue each other's numbering: pjsua checks
    sequence numbers and timestamps across SSRC changes, and drops audio whose
    timestamp went back less than 100 frames (see docs/FACTS.md)."""
    digest = hashlib.sha256(pcap.name.encode()).digest()
    ssrc, seq0, ts0 = struct.unpack_from("!IHI", digest)
    if len(encoded) % _FRAME:
        encoded += bytes([_SILENT_BYTE[payload_type]]) * (_FRAME - len(encoded) % _FRAME)
    out = [struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)]  # 1: Ethernet
    ether = bytes(6) + bytes(6) + struct.pack("!H", 0x0800)
    loopback = bytes([127, 0, 0, 1])
    for i in range(len(encoded) // _FRAME):
        marker = 0x80 if i == 0 else 0
        seq, ts = (seq0 + i) & 0xFFFF, (ts0 + i * _FRAME) & 0xFFFFFFFF
        rtp = struct.pack("!BBHII", 0x80, marker | payload_type, seq, ts, ssrc)
        payload = rtp + encoded[i * _FRAME : (i + 1) * _FRAME]
        udp = struct.pack("!HHHH", _RTP_PORT, _RTP_PORT, 8 + len(payload), 0) + payload
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), i & 0xFFFF, 0x4000, 64, 17, 0,
                         loopback, loopback)  # fmt: skip
        ip = ip[:10] + struct.pack("!H", _ip_checksum(ip)) + ip[12:]
        frame = ether + ip + udp
        usec = i * _PACKET_US
        out.append(
            struct.pack("<IIII", usec // 1_000_000, usec % 1_000_000, len(frame), len(frame))
        )
        out.append(frame)
    pcap.parent.mkdir(parents=True, exist_ok=True)
    pcap.write_bytes(b"".join(out))
    return pcap


def _ip_checksum(header: bytes) -> int:
    total = sum(struct.unpack(f"!{len(header) // 2}H", header))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def pcap_ms(pcap: Path) -> int:
    """How long SIPp takes to replay a pcap, in ms: first to last packet, plus the
    first packet spacing (one packet time of a G.711 stream)."""
    data = pcap.read_bytes()
    stamps: list[float] = []
    offset = 24
    while offset + 16 <= len(data):
        sec, usec, caplen, _ = struct.unpack_from("<IIII", data, offset)
        stamps.append(sec + usec / 1e6)
        offset += 16 + caplen
    if len(stamps) < 2:
        return 0
    spacing = stamps[1] - stamps[0]
    return round((stamps[-1] - stamps[0] + spacing) * 1000)


def _wav_ms(wav: Path) -> int:
    out = subprocess.run(["soxi", "-D", str(wav)], check=True, capture_output=True, text=True)
    return round(float(out.stdout) * 1000)


# ---------------------------------------------------------------- the scenario


class _Script:
    """The body of a scenario: plays and pauses, with the bed restarted as needed."""

    def __init__(self, bed: Path, bed_ms: int):
        self.bed, self.bed_ms = bed, bed_ms
        self.bed_left = 0  # ms the bed playing now has left (0: none is playing)
        self.last_digit = False  # the last thing played was a digit
        self.xml: list[str] = []

    def play(self, pcap: Path, ms: int) -> None:
        """`pcap` alone on the line for `ms` (the bed stops)."""
        self._exec(pcap)
        self.pause(ms)
        self.bed_left = 0
        self.last_digit = False

    def hold(self, ms: int) -> None:
        """`ms` of bed, restarting it whenever it runs out."""
        while ms > 0:
            if self.bed_left <= 0:
                self._exec(self.bed)
                self.bed_left = self.bed_ms
                self.last_digit = False
            part = min(ms, self.bed_left)
            self.pause(part)
            ms -= part
            self.bed_left -= part

    def pause(self, ms: int) -> None:
        if ms <= 0:
            return
        if self.xml and self.xml[-1].startswith("  <pause "):
            ms += int(self.xml.pop().split('"')[1])
        self.xml.append(f'  <pause milliseconds="{ms}"/>')

    def _exec(self, pcap: Path) -> None:
        # SIPp loads every pcap when it parses the scenario: a missing file fails at once.
        self.xml.append(
            f"  <nop><action><exec play_pcap_audio={quoteattr(str(pcap))}/></action></nop>"
        )


def write_scenario(
    steps: Sequence[Step],
    path: Path,
    *,
    background: Path | None = None,
    payload_type: int = 8,
    ruri_params: str = "",
) -> Path:
    """Write a SIPp UAC scenario for a walk to `path` (and its pcaps next to it).

    Modelled on `tests/sipp/caller.xml`: INVITE offering PCMA/PCMU and telephone-event
    101, optional 100/180/183, a global optional BYE receive (the far end may hang up
    at any point after the answer; the call still succeeds), ACK, then the steps (a
    walk that does not end in `Hangup` or `AwaitBye` hangs up after its last step). With
    `background` None the bed is silence in `payload_type`; else that pcap (e.g.
    `PCAPS / "g711a.pcap"`, PCMA). `ruri_params` (e.g. ";trunk=carrier1") is appended
    to the INVITE's Request-URI. Pass `-key caller NUMBER` (and `-s SERVICE`) to SIPp.
    """
    path = path.resolve()
    steps = _check(steps)
    if background is None:
        background = silence_pcap(path.with_name(f"{path.stem}-silence.pcap"), SILENCE_BED_MS,
                                  payload_type)  # fmt: skip
    script = _Script(background.resolve(), pcap_ms(background))
    says = 0
    for step in steps:
        if isinstance(step, Wait):
            script.hold(step.ms)
        elif isinstance(step, Press):
            for digit in step.digits:
                if script.last_digit:  # also the last one of a Press just before
                    script.hold(step.gap_ms)
                script.play(DIGIT_PCAPS[digit], DIGIT_MS)
                script.last_digit = True
        elif isinstance(step, Say):
            audio = step.audio.resolve()
            if audio.suffix != ".pcap":
                says += 1
                audio = wav_to_pcap(audio, path.with_name(f"{path.stem}-say{says}.pcap"),
                                    payload_type)  # fmt: skip
            script.play(audio, pcap_ms(audio))
        elif isinstance(step, Hangup):
            script.hold(step.after_ms)
        elif isinstance(step, AwaitBye):
            # The last slice of the wait is a receive with a timeout: with no BYE by
            # then SIPp aborts the call (sending BYE itself) and counts it failed.
            script.hold(step.max_ms - 1)
    body = "\n".join(script.xml)
    ending = _AWAIT_BYE if isinstance(steps[-1], AwaitBye) else _SEND_BYE
    path.parent.mkdir(parents=True, exist_ok=True)
    head = _HEAD.replace("[remote_port] SIP/2.0", f"[remote_port]{ruri_params} SIP/2.0", 1)
    path.write_text(head + body + "\n" + ending + _TAIL, encoding="iso-8859-1")
    return path


_HEAD = """<?xml version="1.0" encoding="ISO-8859-1" ?>
<!DOCTYPE scenario SYSTEM "sipp.dtd">

<!-- Generated by tests/support/walk.py: an IVR walk (see that module). -->

<scenario name="kefu walk">
  <send retrans="500">
    <![CDATA[

      INVITE sip:[service]@[remote_ip]:[remote_port] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: "[caller]" <sip:[caller]@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
      To: <sip:[service]@[remote_ip]:[remote_port]>
      Call-ID: [call_id]
      CSeq: 1 INVITE
      Contact: <sip:[caller]@[local_ip]:[local_port]>
      Max-Forwards: 70
      Subject: kefu walk
      Content-Type: application/sdp
      Content-Length: [len]

      v=0
      o=caller 53655765 2353687637 IN IP[local_ip_type] [local_ip]
      s=-
      c=IN IP[media_ip_type] [media_ip]
      t=0 0
      m=audio [media_port] RTP/AVP 8 0 101
      a=rtpmap:8 PCMA/8000
      a=rtpmap:0 PCMU/8000
      a=rtpmap:101 telephone-event/8000
      a=fmtp:101 0-15
      a=ptime:20
      a=sendrecv

    ]]>
  </send>

  <recv response="100" optional="true"/>
  <recv response="180" optional="true"/>
  <recv response="183" optional="true"/>
  <!-- Before the pauses it must cover: SIPp looks back only for "global" receives. -->
  <recv request="BYE" optional="global" next="got_bye"/>
  <recv response="200" rtd="true" rrs="true"/>

  <send>
    <![CDATA[

      ACK [next_url] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      [routes]
      From: "[caller]" <sip:[caller]@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
      To: <sip:[service]@[remote_ip]:[remote_port]>[peer_tag_param]
      Call-ID: [call_id]
      CSeq: 1 ACK
      Contact: <sip:[caller]@[local_ip]:[local_port]>
      Max-Forwards: 70
      Content-Length: 0

    ]]>
  </send>

"""

_SEND_BYE = """
  <send retrans="500">
    <![CDATA[

      BYE [next_url] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      [routes]
      From: "[caller]" <sip:[caller]@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
      To: <sip:[service]@[remote_ip]:[remote_port]>[peer_tag_param]
      Call-ID: [call_id]
      CSeq: 2 BYE
      Contact: <sip:[caller]@[local_ip]:[local_port]>
      Max-Forwards: 70
      Content-Length: 0

    ]]>
  </send>
  <recv response="200" crlf="true" next="done"/>
"""

_AWAIT_BYE = """
  <recv request="BYE" timeout="1" next="got_bye"/>
"""

_TAIL = """
  <label id="got_bye"/>
  <send>
    <![CDATA[

      SIP/2.0 200 OK
      [last_Via:]
      [last_From:]
      [last_To:]
      [last_Call-ID:]
      [last_CSeq:]
      Contact: <sip:[caller]@[local_ip]:[local_port]>
      Content-Length: 0

    ]]>
  </send>

  <label id="done"/>
  <nop/>
</scenario>
"""


# ---------------------------------------------------------------- running


def _walk_sipp_kwargs(
    steps: Sequence[Step],
    scenario: Path,
    *,
    caller: str,
    service: str,
    background: Path | None,
    local_port: int | None,
    media_port: int | None,
    timeout_s: int | None,
) -> dict[str, Any]:
    write_scenario(steps, scenario, background=background)
    return {
        "local_port": local_port or free_port(),
        "media_port": media_port or free_port(span=4),
        "service": service,
        "timeout_s": timeout_s or walk_ms(_check(steps)) // 1000 + 30,
        "keys": {"caller": caller},
    }


def start_walk(
    name: str,
    log_dir: Path,
    steps: Sequence[Step],
    target: str,
    *,
    caller: str = "5551234",
    service: str = "1000",
    background: Path | None = None,
    local_port: int | None = None,
    media_port: int | None = None,
    timeout_s: int | None = None,
) -> ManagedProcess:
    """Start a walk in the background: scenario `log_dir/<name>.xml`, log `<name>.log`.

    SIPp gives up on the call `timeout_s` after it starts (default: the walk's longest
    duration + 30 s). Exit code 0 when the walk ended as scripted."""
    scenario = log_dir / f"{name}.xml"
    kwargs = _walk_sipp_kwargs(steps, scenario, caller=caller, service=service,
                               background=background, local_port=local_port,
                               media_port=media_port, timeout_s=timeout_s)  # fmt: skip
    return start_sipp(name, log_dir, str(scenario), target, **kwargs)


def run_walk(
    steps: Sequence[Step],
    target: str,
    workdir: Path,
    *,
    name: str = "walk",
    caller: str = "5551234",
    service: str = "1000",
    background: Path | None = None,
    local_port: int | None = None,
    media_port: int | None = None,
    timeout_s: int | None = None,
    trace: bool = False,
) -> SippResult:
    """Run a walk to its end (blocking); with `trace` the SIP messages come back too."""
    scenario = workdir / f"{name}.xml"
    kwargs = _walk_sipp_kwargs(steps, scenario, caller=caller, service=service,
                               background=background, local_port=local_port,
                               media_port=media_port, timeout_s=timeout_s)  # fmt: skip
    trace_to = workdir / f"{name}-messages.log" if trace else None
    return run_sipp(str(scenario), target, timeout=kwargs["timeout_s"] + 10, trace_to=trace_to,
                    **kwargs)  # fmt: skip


# ---------------------------------------------------------------- command line


def parse_script(text: str) -> list[Step]:
    """`"wait 1500, press 1, say hello.wav, wait 20000"` -> steps (for people at a shell)."""
    steps: list[Step] = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        verb, _, arg = part.partition(" ")
        arg = arg.strip()
        if verb == "wait" and arg.isdigit():
            steps.append(Wait(int(arg)))
        elif verb == "press" and arg:
            steps.append(Press(arg))
        elif verb == "say" and arg:
            steps.append(Say(Path(arg)))
        elif verb == "hangup":
            steps.append(Hangup(int(arg) if arg.isdigit() else 0))
        else:
            raise ValueError(
                f"{part!r}: expected 'wait MS', 'press DIGITS', 'say FILE' or 'hangup'"
            )
    return steps


def main(argv: list[str] | None = None) -> int:
    import argparse
    import sys
    import tempfile

    parser = argparse.ArgumentParser(
        prog="python -m tests.support.walk",
        description="Call a kefu edge from a SIPp caller that follows a script.",
    )
    parser.add_argument("edge", help="host:port of the edge, e.g. 127.0.0.1:5060")
    parser.add_argument("script", help='e.g. "wait 1500, press 1, wait 2000, press 2, wait 9000"')
    parser.add_argument("--caller", default="5550123", help="the calling number")
    parser.add_argument("--did", default="1000", help="the number dialled")
    args = parser.parse_args(argv)
    try:
        steps = parse_script(args.script)
    except ValueError as exc:
        parser.error(str(exc))
    with tempfile.TemporaryDirectory(prefix="kefu-walk-") as tmp:
        result = run_walk(steps, args.edge, Path(tmp), caller=args.caller, service=args.did)
    print("call completed" if result.ok else result.output[-2000:], file=sys.stderr)
    return 0 if result.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
