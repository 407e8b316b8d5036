// The agent desktop: sign in, set your state, and see who is calling before the phone
// rings (the screen pop pushed on /ws/agent). The session is an HttpOnly cookie; the
// socket carries it too. The SIP phone itself (JsSIP) attaches to #phone when present.
// An unknown caller's pop offers a new-customer form (POST /api/customers with the call
// id, so the wrap-up can open their ticket); tickets open in a view with their history;
// the wrap-up shows its countdown and a Ready button; "My calls" lists the agent's calls.

import { startControl } from "/static/control.js";
import { startPhone } from "/static/phone.js";

const $ = (id) => document.getElementById(id);
let phone = null;
let socket = null;
let me = null;
let lastCall = null;
let consulted = false; // rung (or talking) as the colleague in an attended transfer
let lastPop = null;
let countdown = null;
let olderThan = null;

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
  const form = $("new-customer");
  form.hidden = Boolean(c);
  if (!c) {
    form.reset();
    form.elements.phone.value = pop.new_customer?.phone || pop.caller || "";
    text($("new-customer-result"), "");
  }
  showTickets(pop.open_tickets);
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

function showTickets(tickets) {
  $("tickets").replaceChildren();
  for (const t of tickets || []) {
    const li = item($("tickets"), `${t.ticket_id} [${t.priority}] ${t.subject} (${t.status})`);
    li.dataset.ticket = t.ticket_id;
    li.addEventListener("click", () => openTicket(t.ticket_id));
  }
}

function showCard(card) {
  // a customer just created or linked: the pop shows their card
  lastPop = { ...(lastPop || {}), customer: card, customer_id: card.customer_id, open_tickets: card.open_tickets };
  showPop(lastPop);
}

async function openTicket(ticketId) {
  const t = await api("GET", `/api/tickets/${encodeURIComponent(ticketId)}`);
  $("ticket-view").hidden = false;
  $("ticket-view").dataset.ticket = t.ticket_id;
  text($("ticket-title"), `${t.ticket_id}: ${t.subject}`);
  text($("ticket-meta"), `${t.status}, ${t.priority}${t.assignee ? `, ${t.assignee}` : ""}${t.sla_due_at ? `, due ${t.sla_due_at}` : ""}; calls ${t.calls.join(", ") || "none"}`);
  $("ticket-history").replaceChildren();
  for (const h of t.history) {
    const what = h.kind === "note" ? `note: ${h.note}` : h.kind === "created" ? `created (${h.new})` : `${h.kind}: ${h.old ?? ""} → ${h.new ?? ""}`;
    item($("ticket-history"), `${h.at} ${h.actor || "-"} ${what}`);
  }
  const form = $("ticket-form");
  form.elements.status.value = t.status;
  form.elements.priority.value = t.priority;
  form.elements.comment.value = "";
}

function showWrapUp(state) {
  const wrapping = state === "wrap_up";
  $("ready").hidden = !wrapping;
  $("wrapup-left").hidden = !wrapping;
  if (countdown) { clearInterval(countdown); countdown = null; }
  if (!wrapping || !me?.agent) return;
  api("GET", `/api/agents/${me.agent}/wrapup`).then((w) => {
    if (w.wrapup_left_s == null) return;
    const ends = Date.now() + w.wrapup_left_s * 1000;
    const tick = () => text($("wrapup-left"), `wrap-up ${Math.max(0, Math.ceil((ends - Date.now()) / 1000))} s`);
    tick();
    countdown = setInterval(tick, 500);
  }).catch(() => {});
}

async function loadHistory(more) {
  if (!me?.agent) return;
  const before = more && olderThan ? `&before=${encodeURIComponent(olderThan)}` : "";
  const page = await api("GET", `/api/agents/${me.agent}/calls?limit=10${before}`);
  if (!more) $("history-list").replaceChildren();
  for (const c of page.items) {
    const who = c.customer_name || c.caller;
    const li = item($("history-list"), `${c.arrived_at.slice(0, 16).replace("T", " ")} ${who} — ${c.queue || "-"}, ${c.disposition || (c.answered_at ? "answered" : c.hangup_side || "")}${c.tickets.length ? ` [${c.tickets.join(", ")}]` : ""}`);
    li.dataset.call = c.call_id;
    li.addEventListener("click", () => showInteraction(c.call_id));
  }
  olderThan = page.next_before;
  $("history-more").hidden = !olderThan;
}

async function showInteraction(callId) {
  const i = await api("GET", `/api/interactions/${encodeURIComponent(callId)}`);
  const box = $("interaction");
  box.hidden = false;
  box.replaceChildren();
  const title = document.createElement("h3");
  text(title, `${i.customer_name || i.caller} — ${i.arrived_at.slice(0, 19).replace("T", " ")}`);
  const facts = document.createElement("dl");
  for (const [k, v] of [["caller", i.caller], ["queue", i.queue], ["waited", i.wait_s != null ? `${i.wait_s} s` : ""],
    ["talked", i.talk_s != null ? `${i.talk_s} s` : ""], ["hung up", i.hangup_side], ["disposition", i.disposition],
    ["notes", i.notes], ["tickets", i.tickets.join(", ")]]) {
    const dt = document.createElement("dt");
    const dd = document.createElement("dd");
    text(dt, k);
    text(dd, v);
    facts.append(dt, dd);
  }
  box.append(title, facts);
}

function connect() {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  socket = new WebSocket(`${scheme}://${location.host}/ws/agent`);
  // the core rings this agent's phone once the page says the pop is on screen
  socket.onopen = () => socket.send(JSON.stringify({ type: "hello", shows_pops: true }));
  socket.onmessage = (event) => {
    const msg = JSON.parse(event.data);
    if (msg.type === "hello") {
      showState(msg.state);
      showWrapUp(msg.state);
      if (msg.call) { lastPop = msg.call; lastCall = msg.call.call_id; showPop(msg.call); }
    } else if (msg.type === "state") {
      showState(msg.state, msg.reason);
      showWrapUp(msg.state);
    } else if (msg.type === "offer" || msg.type === "consult") {
      lastCall = msg.call_id;
      lastPop = msg;
      $("wrapup").hidden = true;
      consulted = msg.type === "consult";
      const who = consulted ? `consultation from ${msg.consult_from} about ` : "";
      text($("call-status"), `Ringing: ${who}${msg.caller}`);
      showPop(msg);
      socket.send(JSON.stringify({ type: "shown", call_id: msg.call_id }));
      document.dispatchEvent(new CustomEvent("kefu:offer", { detail: msg }));
    } else if (msg.type === "answered") {
      text($("call-status"), "On the call");
    } else if (msg.type === "transferred") {
      lastCall = msg.call_id;
      consulted = false;
      lastPop = msg;
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
      setTimeout(() => loadHistory(false).catch(() => {}), 500); // once the core saved the call
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
  $("history").hidden = !who.agent;
  if (who.agent) {
    connect();
    loadHistory(false).catch((e) => text($("interaction"), e.message));
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
  const update = String(form.get("update_ticket") || "").trim();
  try {
    if (update) {
      const changes = { call_id: lastCall };
      if (form.get("update_status")) changes.status = form.get("update_status");
      if (form.get("update_comment")) changes.comment = form.get("update_comment");
      await api("PATCH", `/api/tickets/${encodeURIComponent(update)}`, changes);
    }
    const done = await api("POST", `/api/calls/${lastCall}/wrapup`, body);
    const tickets = [...new Set([...done.tickets, ...(update ? [update] : [])])];
    text($("wrapup-result"), `Saved: ${done.disposition}; tickets ${tickets.join(", ") || "none"}`);
    loadHistory(false).catch(() => {});
  } catch (error) {
    text($("wrapup-result"), `Not saved: ${error.message}`);
  }
});
$("ready").addEventListener("click", () => api("PUT", `/api/agents/${me.agent}/state`, { state: "available" }).catch((e) => alert(e.message)));
$("history-more").addEventListener("click", () => loadHistory(true).catch((e) => alert(e.message)));
$("new-customer").addEventListener("submit", async (event) => {
  event.preventDefault();
  const form = new FormData(event.target);
  const body = {
    name: form.get("name"),
    company: form.get("company") || "",
    tier: form.get("tier"),
    vip: form.get("vip") === "on",
    language: form.get("language") || "",
    phones: [form.get("phone")].filter(Boolean),
    call_id: lastCall,
  };
  try {
    showCard(await api("POST", "/api/customers", body));
    text($("new-customer-result"), "");
  } catch (error) {
    text($("new-customer-result"), `Not created: ${error.message}`);
  }
});
$("ticket-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const id = $("ticket-view").dataset.ticket;
  const form = new FormData(event.target);
  const changes = { status: form.get("status"), priority: form.get("priority") };
  if (form.get("comment")) changes.comment = form.get("comment");
  if (lastCall) changes.call_id = lastCall;
  try {
    const done = await api("PATCH", `/api/tickets/${encodeURIComponent(id)}`, changes);
    text($("ticket-result"), `Updated: ${done.changed.join(", ") || "nothing changed"}`);
    await openTicket(id);
  } catch (error) {
    text($("ticket-result"), `Not updated: ${error.message}`);
  }
});
$("ticket-close").addEventListener("click", () => { $("ticket-view").hidden = true; });
$("search-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const q = new FormData(event.target).get("q");
  $("results").replaceChildren();
  for (const c of await api("GET", `/api/customers?q=${encodeURIComponent(q)}`)) {
    item($("results"), `${c.name} — ${c.company || ""} ${c.phone || ""}${c.vip ? " ★" : ""}`);
  }
});

api("GET", "/api/me").then(signedIn).catch(() => signedOut());
