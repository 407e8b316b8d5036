"""The pjsua2 adapter of the media worker: one Endpoint, its callbacks, nothing else.

`pbx.worker` owns the asyncio loop and all decisions about legs; this module only
builds the pjsua2 stack the way DESIGN.md measured it (no pjsua threads, null sound
device, 8 kHz bridge, G.711 + RFC 2833 only) and turns pjsua2 callbacks into plain
`Note` records on a queue. Callbacks run inside `libHandleEvents()` or on PJSIP's
media/clock threads, so they copy what they need and return: no publishing, no
hang-ups, no object destruction in here (pjproject #3856, #4353, #2815).
"""

from __future__ import annotations

import collections
import re
from dataclasses import dataclass, field
from typing import Any

import pjsua2 as pj

_URI_USER = re.compile(r"sips?:([^@;>:\s]+)@")

# G.711 first: SIPp, trunks and rtpengine's browser leg all speak it, and the recorder
# and prompts are 8 kHz anyway. Everything else is disabled so no peer picks opus/G722.
# pjmedia_stream_dtmf_event flags (pjmedia/stream.h); the binding does not export them.
_DTMF_IS_UPDATE = 1

_AUDIO_UP = (pj.PJSUA_CALL_MEDIA_ACTIVE, pj.PJSUA_CALL_MEDIA_REMOTE_HOLD)

_CODEC_PRIORITY = {"PCMU/8000/1": 255, "PCMA/8000/1": 254}


def uri_user(uri: str) -> str:
    """`"Bob" <sip:5551234@host>;tag=x` -> `5551234` ('' when there is no user part)."""
    m = _URI_USER.search(uri)
    return m.group(1) if m else ""


@dataclass(slots=True)
class Note:
    """One thing a pjsua2 callback saw; drained and acted on by the worker loop."""

    kind: str
    """incoming | state | media | dtmf | eof | stats"""
    call: LegCall | None = None
    player: Player | None = None
    data: dict[str, Any] = field(default_factory=dict)


Inbox = collections.deque[Note]
"""Appended to from pjsua2 callbacks (possibly on PJSIP threads), drained by the loop."""


def rtp_snapshot(call: pj.Call) -> tuple[int, int, int] | None:
    """(rx packets, tx packets, rx lost) of the call's first stream, None if it has none."""
    try:
        st = call.getStreamStat(0).rtcp
        return int(st.rxStat.pkt), int(st.txStat.pkt), int(st.rxStat.loss)
    except pj.Error:
        return None


class LegCall(pj.Call):
    """A pjsua2 Call that reports to the inbox; `leg` is set by the worker."""

    def __init__(self, acc: pj.Account, inbox: Inbox, call_id: int = pj.PJSUA_INVALID_ID):
        super().__init__(acc, call_id)
        self.inbox = inbox
        self.leg = ""

    def onCallState(self, prm: pj.OnCallStateParam) -> None:
        ci = self.getInfo()
        self.inbox.append(
            Note(
                "state",
                call=self,
                data={
                    "state": ci.state,
                    "code": int(ci.lastStatusCode),
                    "reason": str(ci.lastReason),
                },
            )
        )

    def onCallMediaState(self, prm: pj.OnCallMediaStateParam) -> None:
        ci = self.getInfo()
        # On remote hold the call keeps its conference port: still playable/bridgeable.
        active = any(mi.type == pj.PJMEDIA_TYPE_AUDIO and mi.status in _AUDIO_UP for mi in ci.media)
        self.inbox.append(Note("media", call=self, data={"active": active}))

    def onStreamDestroyed(self, prm: pj.OnStreamDestroyedParam) -> None:
        # The last moment the stream's RTCP counters exist: pjsua frees the stream
        # right after this returns, and DISCONNECTED comes later still.
        snap = rtp_snapshot(self)
        if snap is not None:
            self.inbox.append(Note("stats", call=self, data={"rtp": snap}))

    def onDtmfEvent(self, prm: pj.OnDtmfEventParam) -> None:
        # pjsua2 registers on_dtmf_event, so RFC 2833 digits arrive only here (not in
        # onDtmfDigit), once at the start and again as updates/end of the same press.
        # SIP INFO digits arrive here *and* in onDtmfDigit (measured), so that one is
        # left alone.
        if prm.flags & _DTMF_IS_UPDATE:
            return
        method = "info" if prm.method == pj.PJSUA_DTMF_METHOD_SIP_INFO else "rfc2833"
        self.inbox.append(Note("dtmf", call=self, data={"digit": str(prm.digit), "method": method}))


class Player(pj.AudioMediaPlayer):
    """A file player or playlist; end of file is reported, never acted on, here."""

    def __init__(self, inbox: Inbox, leg: str, play_id: str):
        super().__init__()
        self.inbox = inbox
        self.leg = leg
        self.play_id = play_id

    def onEof2(self) -> None:
        # Runs on the conference clock thread: just note it.
        self.inbox.append(Note("eof", player=self))


class WorkerAccount(pj.Account):
    """The local, unregistered account every leg of this worker belongs to."""

    def __init__(self, inbox: Inbox, owners: dict[int, LegCall]):
        super().__init__()
        self.inbox = inbox
        self.owners = owners

    def onIncomingCall(self, prm: pj.OnIncomingCallParam) -> None:
        # The Call object must exist when this returns or pjsua drops the INVITE;
        # answering it (180 or 486) is the loop's job.
        call = LegCall(self, self.inbox, prm.callId)
        # Claim the slot now, in the callback: an older Call object of this slot that
        # is still waiting to be freed must see it is no longer the owner.
        self.owners[prm.callId] = call
        msg = str(prm.rdata.wholeMsg)
        first = msg.split("\r\n", 1)[0].split()
        ruri = first[1] if len(first) >= 2 else ""
        ci = call.getInfo()
        self.inbox.append(
            Note(
                "incoming",
                call=call,
                data={
                    "caller": uri_user(str(ci.remoteUri)),
                    "did": uri_user(ruri),
                    "sip_call_id": str(ci.callIdString),
                },
            )
        )


@dataclass(frozen=True, slots=True)
class StackConfig:
    worker: int
    sip_port: int
    rtp_port: int
    rtp_ports: int
    max_legs: int
    clock_rate: int
    pj_log_level: int = 1


class Stack:
    """The pjsua2 Endpoint + UDP transport + account, created and destroyed once."""

    def __init__(self, cfg: StackConfig, inbox: Inbox):
        self.cfg = cfg
        self.inbox = inbox
        self.ep = pj.Endpoint()
        self.account: WorkerAccount | None = None

    def start(self) -> None:
        cfg = self.cfg
        ep = self.ep
        ep.libCreate()
        ec = pj.EpConfig()
        ec.uaConfig.threadCnt = 0
        ec.uaConfig.mainThreadOnly = True
        ec.uaConfig.maxCalls = cfg.max_legs
        ec.uaConfig.userAgent = f"kefu-worker/{cfg.worker}"
        ec.medConfig.clockRate = cfg.clock_rate
        ec.medConfig.sndClockRate = cfg.clock_rate
        ec.medConfig.ecTailLen = 0
        # The null sound device is the conference bridge's clock. pjsua closes an
        # idle "sound device" after 1 s and does not bring the null one back: every
        # later call then sends no RTP and players/recorders stall (measured: the
        # second call of a process had tx_packets=0). Never close it.
        ec.medConfig.sndAutoCloseTime = -1
        # VAD would stop sending during silence and make tx counters (and the
        # agent's jitter buffer) depend on what is being said.
        ec.medConfig.noVad = True
        ec.logConfig.level = cfg.pj_log_level
        ec.logConfig.consoleLevel = cfg.pj_log_level
        ec.logConfig.msgLogging = cfg.pj_log_level >= 5
        ep.libInit(ec)

        tc = pj.TransportConfig()
        tc.port = cfg.sip_port
        tc.boundAddress = "127.0.0.1"
        transport_id = ep.transportCreate(pj.PJSIP_TRANSPORT_UDP, tc)
        ep.libStart()
        ep.audDevManager().setNullDev()

        for codec in ep.codecEnum2():
            ep.codecSetPriority(codec.codecId, _CODEC_PRIORITY.get(codec.codecId, 0))

        ac = pj.AccountConfig()
        ac.idUri = f"sip:worker-{cfg.worker}@127.0.0.1:{cfg.sip_port}"
        ac.regConfig.registerOnAdd = False
        ac.sipConfig.transportId = transport_id
        ac.mediaConfig.transportConfig.port = cfg.rtp_port
        ac.mediaConfig.transportConfig.portRange = cfg.rtp_ports
        ac.mediaConfig.transportConfig.boundAddress = "127.0.0.1"
        # An answer listing PCMA and PCMU makes pjsua re-INVITE at once to lock one codec;
        # simple phones (and SIPp agents) drop the call on that surprise re-INVITE.
        ac.mediaConfig.lockCodecEnabled = False
        self.owners: dict[int, LegCall] = {}
        """pjsua call slot -> the newest Call object created for it (see `Worker._retire`)."""
        self.account = WorkerAccount(self.inbox, self.owners)
        self.account.create(ac, True)

    def poll(self) -> None:
        self.ep.libHandleEvents(0)

    def new_call(self) -> LegCall:
        assert self.account is not None
        return LegCall(self.account, self.inbox)

    def destroy(self) -> None:
        """Finish the library (WAV headers included); every Call/player must be gone."""
        if self.account is not None:
            self.account.shutdown()
            self.account = None
        # Calls were hung up and nothing is registered, so skip pjsua's shutdown
        # network round (it waits a fixed ~1 s: measured 1.02 s vs 0.02 s).
        self.ep.libDestroy(pj.PJSUA_DESTROY_NO_NETWORK)
