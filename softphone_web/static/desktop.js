// The agent desktop: sign in, set your state, and see who is calling before the phone
// rings (the screen pop pushed on /ws/agent). The session is an HttpOnly cookie; the
// socket carries it too. The SIP phone itself (JsSIP) attaches to #phone when present.

import { startControl } from "/static/control.js";
import { startPhone } from "/static/phone.js";

const $ = (id) => document.getElementById(id);
let phone = null;
let socket = null;
let me = null;
let lastCall = null;
let consulted = false; // rung (or talking) as the colleague in an attended transfer

async function api(method, path, body) {
  const response = await fetch(path, {
    method,
    credentials: "same-origin",
    headers: body ? { "Content-Type": "application/json" } : {},
    body: body ? JSON.stringify(body) : undefined,
  });
  const data = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(data.detail || response.statusText);
  return data;
}

const control = startControl(api);

function text(el, value) {
  el.textContent = value == null ? "" : String(value);
}

function item(list, value) {
  const li = document.createElement("li");
  text(li, value);
  list.appendChild(li);
  return li;
}

function showState(state, reason) {
  text($("state"), reason ? `${state} (${reason})` : state || "");
  $("state").dataset.state = state || "";
}

function showPop(pop) {
  $("pop").hidden = false;
  const c = pop.customer;
  const box = $("customer");
  box.replaceChildren();
  const title = document.createElement("h3");
  if (c) {
    text(title, `${c.name}${c.vip ? " ★ VIP" : ""} — ${c.company || ""} (${c.tier})`);
  } else {
    text(title, `New caller ${pop.caller}`);
    const add = document.createElement("p");
    text(add, `Not in the CRM yet: create a customer for ${pop.new_customer.phone}.`);
    box.appendChild(add);
  }
  box.prepend(title);
  $("tickets").replaceChildren();
  for (const t of pop.open_tickets || []) item($("tickets"), `${t.ticket_id} [${t.priority}] ${t.subject}`);
  $("ivr-path").replaceChildren();
  for (const s of pop.ivr?.path || []) {
    if (["digit", "speech", "collected", "confirmed", "queued", "lookup", "set"].includes(s.what)) {
      item($("ivr-path"), `${s.at}s ${s.node}: ${s.what} ${s.detail}`);
    }
  }
  $("ivr-vars").replaceChildren();
  for (const [k, v] of Object.entries(pop.ivr?.variables || {})) {
    const dt = document.createElement("dt");
    const dd = document.createElement("dd");
    text(dt, k);
    text(dd, v);
    $("ivr-vars").append(dt, dd);
  }
  const r = pop.routing;
  text($("routing"), r ? `queue ${pop.queue}, waited ${pop.waited_s}s, priority ${r.priority}, step ${r.step}, ${r.strategy} among ${r.candidates}` : "");
  $("recent").replaceChildren();
  for (const h of pop.recent_calls || []) item($("recent"), `${h.at} ${h.queue || "-"} ${h.agent || "-"} ${h.answered ? "answered" : h.hangup_side}`);
}

function connect() {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  socket = new WebSocket(`${scheme}://${location.host}/ws/agent`);
  socket.onmessage = (event) => {
    const msg = JSON.parse(event.data);
    if (msg.type === "hello") {
      showState(msg.state);
      if (msg.call) showPop(msg.call);
    } else if (msg.type === "state") {
      showState(msg.state, msg.reason);
    } else if (msg.type === "offer" || msg.type === "consult") {
      lastCall = msg.call_id;
      $("wrapup").hidden = true;
      consulted = msg.type === "consult";
      const who = consulted ? `consultation from ${msg.consult_from} about ` : "";
      text($("call-status"), `Ringing: ${who}${msg.caller}`);
      showPop(msg);
      document.dispatchEvent(new CustomEvent("kefu:offer", { detail: msg }));
    } else if (msg.type === "answered") {
      text($("call-status"), "On the call");
    } else if (msg.type === "transferred") {
      lastCall = msg.call_id;
      consulted = false;
      text($("call-status"), "On the call (transferred to you)");
      showPop(msg);
    } else if (msg.type === "consult_ended" && consulted) {
      consulted = false;
      text($("call-status"), `Consultation over (${msg.reason}).`);
    } else if (msg.type === "ended") {
      text($("call-status"), `Call ended (${msg.hangup_side || ""})`);
      lastCall = msg.call_id;
      text($("wrapup-result"), "");
      $("wrapup").hidden = false;
    }
    control.handle(msg);
  };
  socket.onclose = (event) => {
    if (event.code === 4001) return signedOut("Your session ended.");
    if (me) setTimeout(connect, 2000); // a dropped socket comes back
  };
}

function signedIn(who) {
  me = who;
  text($("who"), `${who.name} (${who.role})`);
  $("login").hidden = true;
  $("desk").hidden = false;
  $("controls").hidden = false;
  if (who.agent) {
    connect();
    api("GET", "/api/me/sip")
      .then((sip) => { phone = startPhone(sip, (status) => text($("phone-status"), status)); })
      .catch((e) => text($("phone-status"), `no browser phone: ${e.message}`));
  }
}

function signedOut(reason) {
  me = null;
  if (socket) socket.close();
  if (phone) { phone.stop(); phone = null; }
  $("login").hidden = false;
  $("desk").hidden = true;
  $("controls").hidden = true;
  text($("login-error"), reason || "");
}

$("login-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const form = new FormData(event.target);
  try {
    signedIn(await api("POST", "/api/login", { user: form.get("user"), password: form.get("password") }));
  } catch (error) {
    text($("login-error"), error.message);
  }
});
$("logout").addEventListener("click", async () => {
  await api("POST", "/api/logout").catch(() => {});
  signedOut();
});
$("available").addEventListener("click", () => api("PUT", `/api/agents/${me.agent}/state`, { state: "available" }).catch((e) => alert(e.message)));
$("away").addEventListener("click", () => api("PUT", `/api/agents/${me.agent}/state`, { state: "away", reason: $("away-reason").value }).catch((e) => alert(e.message)));
$("wrapup").addEventListener("submit", async (event) => {
  event.preventDefault();
  const form = new FormData(event.target);
  const body = {
    disposition: form.get("disposition"),
    notes: form.get("notes"),
    link_tickets: String(form.get("link") || "").split(",").map((t) => t.trim()).filter(Boolean),
  };
  if (form.get("subject")) body.new_ticket = { subject: form.get("subject"), priority: form.get("priority") };
  try {
    const done = await api("POST", `/api/calls/${lastCall}/wrapup`, body);
    text($("wrapup-result"), `Saved: ${done.disposition}; tickets ${done.tickets.join(", ") || "none"}`);
  } catch (error) {
    text($("wrapup-result"), `Not saved: ${error.message}`);
  }
});
$("search-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const q = new FormData(event.target).get("q");
  $("results").replaceChildren();
  for (const c of await api("GET", `/api/customers?q=${encodeURIComponent(q)}`)) {
    item($("results"), `${c.name} — ${c.company || ""} ${c.phone || ""}${c.vip ? " ★" : ""}`);
  }
});

api("GET", "/api/me").then(signedIn).catch(() => signedOut());
