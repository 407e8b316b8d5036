// Call control on the agent desktop: hold and resume (the caller hears the queue's
// music; the recording goes on), and transfers to a colleague or a queue — blind (you
// leave at once) or attended (you talk to them first, then complete or cancel). The
// server does the work (POST /api/calls/{id}/...); this panel follows the socket's
// messages about the call (held, consulting, consult_answered, consult_ended...).

const $ = (id) => document.getElementById(id);

export function startControl(api) {
  let callId = null;
  let held = false;
  let consult = null; // {to, answered}

  function say(message) {
    $("control-status").textContent = message || "";
  }

  function refresh() {
    $("control").hidden = !callId;
    $("hold").textContent = held ? "Resume" : "Hold";
    $("hold").disabled = consult !== null;
    $("transfer-form").hidden = consult !== null;
    $("transfer-complete").hidden = !consult;
    $("transfer-complete").disabled = !(consult && consult.answered);
    $("transfer-cancel").hidden = !consult;
  }

  async function act(path, body) {
    try {
      const view = await api("POST", `/api/calls/${callId}/${path}`, body);
      held = view.held;
      return view;
    } catch (error) {
      say(`Not done: ${error.message}`);
      return null;
    } finally {
      refresh();
    }
  }

  async function loadTargets() {
    const select = $("transfer-target");
    const targets = await api("GET", "/api/transfer/targets").catch(() => ({ agents: [], queues: [] }));
    select.replaceChildren();
    for (const a of targets.agents) {
      const option = new Option(`${a.name} (${a.state})`, `agent:${a.agent}`);
      option.disabled = a.state !== "available";
      select.appendChild(option);
    }
    for (const q of targets.queues) select.appendChild(new Option(`queue ${q.queue} (${q.waiting} waiting)`, `queue:${q.queue}`));
  }

  $("hold").addEventListener("click", async () => {
    if (await act(held ? "resume" : "hold")) say(held ? "The caller is on hold." : "");
  });
  $("transfer-target").addEventListener("focus", loadTargets);
  $("transfer-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const form = new FormData(event.target);
    const [kind, name] = String(form.get("target") || "").split(":");
    if (!name) return say("Choose an agent or a queue.");
    const body = { mode: form.get("mode"), [kind === "agent" ? "to_agent" : "to_queue"]: name };
    const view = await act("transfer", body);
    if (view && body.mode === "attended") {
      consult = { to: name, answered: false };
      say(`Calling ${name}; the caller is on hold.`);
    } else if (view) {
      say(`Transferred to ${name}.`);
    }
    refresh();
  });
  $("transfer-complete").addEventListener("click", async () => {
    if (await act("transfer/complete")) {
      say(`Handed over to ${consult.to}.`);
      consult = null;
    }
    refresh();
  });
  $("transfer-cancel").addEventListener("click", async () => {
    if (await act("transfer/cancel")) {
      say("Back with the caller.");
      consult = null;
    }
    refresh();
  });

  return {
    // the desktop passes every socket message about a call here
    handle(msg) {
      if (msg.type === "answered" || msg.type === "transferred") {
        callId = msg.call_id;
        held = false;
        consult = null;
        say(msg.type === "transferred" ? `Transferred to you by ${msg.handoffs?.at(-1)?.from || "a colleague"}.` : "");
        loadTargets();
      } else if (msg.type === "consult") {
        say(`${msg.consult_from} wants to consult you about this caller.`);
      } else if (msg.type === "consult_connected") {
        say(`Consultation with ${msg.with}: they may hand you the caller.`);
      } else if (msg.type === "consult_answered") {
        if (consult) consult.answered = true;
        say(`Talking to ${msg.agent}: complete the transfer or cancel.`);
      } else if (msg.type === "consult_waiting") {
        say(`Waiting for an agent in ${msg.queue}…`);
      } else if (msg.type === "consult_ended") {
        consult = null;
        say(`Consultation ended: ${msg.reason}.`);
      } else if (msg.type === "held" || msg.type === "resumed") {
        held = msg.type === "held";
      } else if (msg.type === "ended") {
        callId = null;
        consult = null;
        held = false;
        if (msg.hangup_side === "transferred") say("You handed the call over.");
      }
      refresh();
    },
  };
}
