// The agent's browser phone: JsSIP (static/vendor/jssip.js, built by scripts/bootstrap)
// registers the agent's SIP user over the edge's WebSocket; rtpengine turns the call's
// WebRTC into the plain RTP the media worker speaks, so the browser is reached like a
// desk phone. Answer, hang up, mute and the DTMF pad act on the one call; hold is the
// server's (static/control.js), so the caller hears music rather than silence.

const $ = (id) => document.getElementById(id);

export function startPhone(sip, onStatus) {
  if (!window.JsSIP || !sip || !sip.ws) {
    onStatus("no browser phone (use a desk phone)");
    return null;
  }
  const ua = new JsSIP.UA({
    sockets: [new JsSIP.WebSocketInterface(sip.ws)],
    uri: `sip:${sip.user}@${sip.domain}`,
    password: sip.password,
    register: true,
    register_expires: 300,
    session_timers: false,
    user_agent: "kefu-desktop",
  });
  let session = null;
  const audio = new Audio();
  audio.autoplay = true;

  const box = $("phone");
  box.replaceChildren();
  const buttons = {};
  for (const [name, label] of [["answer", "Answer"], ["hangup", "Hang up"], ["mute", "Mute"]]) {
    const b = document.createElement("button");
    b.textContent = label;
    b.id = `phone-${name}`;
    b.disabled = true;
    box.appendChild(b);
    buttons[name] = b;
  }
  const pad = document.createElement("div");
  pad.id = "phone-pad";
  for (const key of "123456789*0#") {
    const b = document.createElement("button");
    b.textContent = key;
    b.addEventListener("click", () => session && session.isEstablished() && session.sendDTMF(key));
    pad.appendChild(b);
  }
  box.appendChild(pad);

  function refresh() {
    const ringing = session && !session.isEstablished() && !session.isEnded();
    const up = session && session.isEstablished();
    buttons.answer.disabled = !ringing;
    buttons.hangup.disabled = !session || session.isEnded();
    buttons.mute.disabled = !up;
    buttons.mute.textContent = up && session.isMuted().audio ? "Unmute" : "Mute";
  }

  buttons.answer.addEventListener("click", () => session && session.answer({ mediaConstraints: { audio: true, video: false } }));
  buttons.hangup.addEventListener("click", () => session && session.terminate());
  buttons.mute.addEventListener("click", () => {
    if (session.isMuted().audio) session.unmute({ audio: true }); else session.mute({ audio: true });
    refresh();
  });

  ua.on("registered", () => onStatus("phone ready"));
  ua.on("registrationFailed", (e) => onStatus(`phone not registered: ${e.cause}`));
  ua.on("newRTCSession", ({ session: s, originator }) => {
    if (originator !== "remote") return;
    session = s;
    onStatus("phone ringing");
    s.on("peerconnection", ({ peerconnection }) => {
      peerconnection.addEventListener("track", (ev) => {
        audio.srcObject = ev.streams[0] || new MediaStream([ev.track]);
      });
    });
    s.on("accepted", () => onStatus("phone in a call"));
    for (const event of ["accepted", "confirmed", "muted", "unmuted"]) s.on(event, refresh);
    s.on("ended", () => { onStatus("phone ready"); session = null; refresh(); });
    s.on("failed", () => { onStatus("phone ready"); session = null; refresh(); });
    refresh();
  });
  // a closed tab unregisters at once, so the next call is not sent to a dead page
  window.addEventListener("beforeunload", () => ua.stop());
  ua.start();
  return ua;
}
