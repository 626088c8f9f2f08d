// The console: what waits, one execution, settling by hand. Everything on the page is built with DOM
// calls and textContent (never innerHTML), so whatever an agent wrote shows as text. The data comes from
// the HTTP API (`/v1/...`) and `/console/...`, with the session cookie; a POST carries the CSRF token.

const main = document.getElementById("main");
const notice = document.getElementById("notice");
const live = document.getElementById("live");
let session = null;
let refresh = null; // re-renders the current view with fresh data (on a change event)
let renderId = 0; // a view rendered later wins over one still loading

class ApiError extends Error {
  constructor(status, type, message) {
    super(message);
    this.status = status;
    this.type = type;
  }
}

async function api(path, { method = "GET", body } = {}) {
  const headers = { accept: "application/json" };
  if (method !== "GET") {
    headers["content-type"] = "application/json";
    if (session) headers["x-csrf-token"] = session.csrf_token;
  }
  const response = await fetch(path, {
    method, headers, credentials: "same-origin", body: body === undefined ? undefined : JSON.stringify(body),
  });
  const data = await response.json().catch(() => ({}));
  if (!response.ok) {
    const error = data.error || {};
    throw new ApiError(response.status, error.type || "Error", error.message || response.statusText);
  }
  return data;
}

// el("a", {href: "#/x"}, "text", child...): attributes are set as attributes, strings as text.
function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === false || value === null || value === undefined) continue;
    if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function show(message, ok = false) {
  notice.textContent = message;
  notice.className = ok ? "notice ok" : "notice";
  notice.hidden = false;
  clearTimeout(show.timer);
  show.timer = setTimeout(() => { notice.hidden = true; }, ok ? 4000 : 10000);
}

const can = (scope) => session && (session.scopes.includes(scope) || session.scopes.includes("admin"));
const ago = (ms) => {
  if (!ms) return "-";
  const s = Math.max(0, (Date.now() - ms) / 1000);
  if (s < 60) return `${Math.round(s)}s ago`;
  if (s < 3600) return `${Math.round(s / 60)}m ago`;
  if (s < 86400) return `${(s / 3600).toFixed(1)}h ago`;
  return `${(s / 86400).toFixed(1)}d ago`;
};
const when = (ms) => (ms ? `${new Date(ms).toLocaleString()} (${ago(ms)})` : "-");
const badge = (text) => el("span", { class: `badge ${text}` }, text);
const executionLink = (id) => el("a", { href: `#/execution/${encodeURIComponent(id)}` }, id);
const json = (value) => el("pre", {}, JSON.stringify(value, null, 2));
// A titled card: the section is `#<name>`, its title `#<name>-title`.
const card = (name, title, ...children) => el("section", { class: "card", id: name, "aria-labelledby": `${name}-title` },
  el("h2", { id: `${name}-title` }, title), ...children);

// --- signing in -------------------------------------------------------------------------------------------

async function start() {
  try {
    session = await api("/console/session");
  } catch (error) {
    return failed(error);
  }
  if (!session.signed_in) {
    session = null;
    return signIn();
  }
  document.getElementById("who").textContent = `${session.name} (${session.scopes.join(", ")})`;
  const signOut = document.getElementById("sign-out");
  signOut.hidden = session.name === "insecure-localhost";
  signOut.addEventListener("click", async () => {
    await api("/console/logout", { method: "POST" });
    location.hash = "#/";
    location.reload();
  });
  watch();
  window.addEventListener("hashchange", route);
  route();
}

function signIn() {
  const key = el("input", { id: "api-key", type: "password", autocomplete: "current-password", required: true });
  const form = el("form", { class: "card" },
    el("h1", {}, "Sign in"),
    el("p", {}, "Sign in with an API key of this server: read scope to look, settle scope to act."),
    el("label", { for: "api-key" }, "API key", key),
    el("div", { class: "row" }, el("button", { type: "submit" }, "Sign in")));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    try {
      await api("/console/login", { method: "POST", body: { key: key.value } });
      key.value = "";
      location.reload();
    } catch (error) {
      show(`Not signed in: ${error.message}`);
    }
  });
  main.replaceChildren(el("section", { class: "card" }, form));
  key.focus();
}

function failed(error) {
  main.replaceChildren(el("section", { class: "card" }, el("h1", {}, "Something went wrong"),
    el("p", {}, `${error.type}: ${error.message}`)));
}

// --- live updates -----------------------------------------------------------------------------------------

function watch() {
  const events = new EventSource("/console/events");
  let pending = null;
  events.addEventListener("open", () => { live.textContent = "● live"; });
  events.addEventListener("error", () => { live.textContent = "○ reconnecting"; });
  events.addEventListener("change", () => {
    // Bursts of changes re-render at most every 400 ms.
    if (pending) return;
    pending = setTimeout(() => { pending = null; if (refresh) refresh(); }, 400);
  });
}

// --- routing ----------------------------------------------------------------------------------------------

function route() {
  const hash = location.hash.slice(1) || "/";
  const [path, query = ""] = hash.split("?");
  const section = path.startsWith("/execution") ? "executions" : "overview";
  for (const link of document.querySelectorAll("header nav a")) {
    if (link.dataset.section === section) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  const id = ++renderId;
  const view = path.startsWith("/execution/")
    ? () => executionView(decodeURIComponent(path.slice("/execution/".length)), id)
    : path === "/executions" ? () => listView(new URLSearchParams(query), id) : () => overviewView(id);
  refresh = () => view().catch(failed);
  refresh();
}

// Replace the page's content unless a newer view started meanwhile; keep the focus where it was.
function render(id, ...nodes) {
  if (id !== renderId) return false;
  const focused = document.activeElement && document.activeElement.id;
  main.replaceChildren(...nodes);
  if (focused) document.getElementById(focused)?.focus();
  return true;
}

// --- overview ---------------------------------------------------------------------------------------------

async function overviewView(id) {
  const data = await api("/console/overview");
  const pendingTotal = data.pending_by_age.reduce((n, b) => n + b.count, 0);
  const widest = Math.max(1, ...data.pending_by_age.map((b) => b.count));
  const ages = { lt_1m: "under 1 minute", "1m_10m": "1 to 10 minutes", "10m_1h": "10 minutes to 1 hour",
    "1h_1d": "1 hour to 1 day", ge_1d: "over 1 day" };
  const waiting = card("waiting", `Callbacks waiting: ${pendingTotal}`,
    el("table", {}, el("thead", {}, el("tr", {}, el("th", {}, "Waiting for"), el("th", { class: "num" }, "Count"), el("th", {}, ""))),
      el("tbody", {}, data.pending_by_age.map((b) => {
        const bar = el("div", { class: "bar" });
        bar.style.width = `${(100 * b.count) / widest}%`;
        return el("tr", {}, el("td", {}, ages[b.age] || b.age), el("td", { class: "num" }, b.count), el("td", {}, bar));
      }))));
  const kinds = [...new Set(data.counts.map((c) => c.kind))];
  const phases = ["PENDING", "IN_PROGRESS", "COMPLETED", "FAILED", "CANCELLED"];
  const count = (kind, phase) => data.counts.find((c) => c.kind === kind && c.phase === phase)?.count || 0;
  const counts = card("counts", "Executions by kind and phase",
    kinds.length === 0 ? el("p", { class: "muted" }, "No executions yet.") :
      el("table", {}, el("thead", {}, el("tr", {}, el("th", {}, "Kind"), phases.map((p) => el("th", { class: "num" }, p)))),
        el("tbody", {}, kinds.map((kind) => el("tr", {}, el("td", {}, kind), phases.map((phase) =>
          el("td", { class: "num" }, el("a", { href: `#/executions?kind=${kind}&phase=${phase}` }, count(kind, phase)))))))));
  const troubled = card("troubled", "Deliveries retrying or dead-lettered",
    data.troubled.length === 0 ? el("p", { class: "muted" }, "None: every delivery went through.") :
      el("table", {}, el("thead", {}, el("tr", {}, el("th", {}, "Execution"), el("th", {}, "State"), el("th", { class: "num" }, "Attempts"), el("th", {}, "Last error"))),
        el("tbody", {}, data.troubled.map((t) => el("tr", {},
          el("td", { class: "id" }, executionLink(t.execution_id)), el("td", {}, badge(t.state)),
          el("td", { class: "num" }, t.delivery_attempts), el("td", {}, t.last_error || "-"))))));
  const settled = data.settles_per_minute.reduce((n, m) => n + m.count, 0);
  const chart = card("settles", `Settles per minute, last hour (${settled} in all)`, settlesChart(data.settles_per_minute));
  render(id, el("h1", {}, "Overview"), el("div", { class: "grid" }, waiting, counts), chart, troubled);
}

function settlesChart(minutes) {
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  const width = 600, height = 90, bottom = 16;
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.setAttribute("class", "chart");
  svg.setAttribute("role", "img");
  const most = Math.max(1, ...minutes.map((m) => m.count));
  svg.setAttribute("aria-label", `Settles per minute over the last hour; the busiest minute had ${most}`);
  const step = width / minutes.length;
  minutes.forEach((m, i) => {
    const h = ((height - bottom - 4) * m.count) / most;
    const rect = document.createElementNS(ns, "rect");
    for (const [k, v] of Object.entries({ x: i * step + 1, y: height - bottom - h, width: step - 2, height: h })) rect.setAttribute(k, v);
    const title = document.createElementNS(ns, "title");
    title.textContent = `${new Date(m.minute_ms).toLocaleTimeString()}: ${m.count}`;
    rect.append(title);
    svg.append(rect);
  });
  const axis = document.createElementNS(ns, "line");
  for (const [k, v] of Object.entries({ x1: 0, x2: width, y1: height - bottom, y2: height - bottom })) axis.setAttribute(k, v);
  svg.append(axis);
  for (const [x, label, anchor] of [[0, "60 min ago", "start"], [width, "now", "end"]]) {
    const text = document.createElementNS(ns, "text");
    for (const [k, v] of Object.entries({ x, y: height - 3, "text-anchor": anchor })) text.setAttribute(k, v);
    text.textContent = label;
    svg.append(text);
  }
  return svg;
}

// --- executions -------------------------------------------------------------------------------------------

const FILTERS = ["kind", "phase", "state", "label", "text"];

async function listView(params, id) {
  const query = new URLSearchParams();
  for (const name of [...FILTERS, "page_token"]) if (params.get(name)) query.set(name, params.get(name));
  query.set("page_size", "100");
  const data = await api(`/v1/executions?${query}`);
  const select = (name, label, options) => el("label", { for: `filter-${name}` }, label,
    el("select", { id: `filter-${name}`, name }, el("option", { value: "" }, "any"),
      options.map((o) => el("option", { value: o, selected: params.get(name) === o }, o))));
  const input = (name, label, placeholder) => el("label", { for: `filter-${name}` }, label,
    el("input", { id: `filter-${name}`, name, value: params.get(name) || "", placeholder }));
  const form = el("form", { class: "filters", role: "search", "aria-label": "Filter executions" },
    select("kind", "Kind", ["agent", "workflow"]),
    select("phase", "Phase", ["PENDING", "IN_PROGRESS", "COMPLETED", "FAILED", "CANCELLED"]),
    select("state", "Callback", ["armed", "due", "delivering", "delivered", "gone", "dead", "none"]),
    input("label", "Label", "key=value"), input("text", "Text", "id or message"),
    el("button", { type: "submit" }, "Filter"));
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const next = new URLSearchParams();
    for (const name of FILTERS) { const v = form.elements[name].value.trim(); if (v) next.set(name, v); }
    location.hash = `#/executions?${next}`;
  });
  const rows = data.executions.map((e) => el("tr", { "data-id": e.id },
    el("td", { class: "id" }, executionLink(e.id)), el("td", {}, e.kind), el("td", {}, badge(e.phase)),
    el("td", {}, e.callback ? badge(e.callback.state) : el("span", { class: "muted" }, "none")),
    el("td", {}, progressText(e)), el("td", {}, ago(e.created_ms)), el("td", {}, ago(e.updated_ms))));
  const paging = el("div", { class: "row" });
  if (params.get("page_token")) {
    const first = new URLSearchParams(params);
    first.delete("page_token");
    paging.append(el("a", { href: `#/executions?${first}` }, "First page"));
  }
  if (data.next_page_token) {
    const next = new URLSearchParams(params);
    next.set("page_token", data.next_page_token);
    paging.append(el("a", { href: `#/executions?${next}`, id: "next-page" }, "Next page"));
  }
  render(id, el("h1", {}, "Executions"), el("section", { class: "card" }, form,
    el("table", { id: "executions", "aria-label": "Executions" },
      el("thead", {}, el("tr", {}, ["Id", "Kind", "Phase", "Callback", "Progress", "Created", "Updated"].map((h) => el("th", {}, h)))),
      el("tbody", {}, rows)),
    data.executions.length === 0 ? el("p", { class: "muted" }, "No execution matches.") : null,
    el("p", { class: "muted", id: "shown" }, `${data.executions.length} shown`), paging));
}

function progressText(e) {
  const p = e.progress || {};
  if (p.todos_total) return `${p.todos_done}/${p.todos_total} todos`;
  if (p.tasks_total) return `${p.tasks_done}/${p.tasks_total} tasks`;
  return p.last_message ? p.last_message.slice(0, 80) : "";
}

// --- one execution ----------------------------------------------------------------------------------------

// The actions card last shown: kept across live refreshes while what it offers stays the same, so that
// a person typing a result or a reason does not lose it.
let actions = { key: null, node: null };

async function executionView(executionId, id) {
  const e = await api(`/v1/executions/${encodeURIComponent(executionId)}?view=full`);
  const parts = [el("h1", {}, e.id), summary(e), specCard(e), statusCard(e)];
  if (e.callback) parts.push(callbackCard(e), parentCard(e));
  if (can("settle")) {
    const key = `${e.id}|${e.phase}|${e.callback ? e.callback.state : ""}`;
    if (actions.key !== key) actions = { key, node: actionsCard(e) };
    parts.push(actions.node);
  }
  render(id, ...parts);
}

function summary(e) {
  return el("section", { class: "card" }, el("dl", {},
    el("dt", {}, "Kind"), el("dd", {}, e.kind),
    el("dt", {}, "Phase"), el("dd", {}, badge(e.phase)),
    el("dt", {}, "Created"), el("dd", {}, when(e.created_ms)),
    el("dt", {}, "Updated"), el("dd", {}, when(e.updated_ms)),
    el("dt", {}, "Labels"), el("dd", {}, Object.keys(e.labels || {}).length
      ? Object.entries(e.labels).map(([k, v]) => el("span", { class: "badge" }, `${k}=${v}`)) : "-"),
    e.retry_of ? [el("dt", {}, "Retries"), el("dd", {}, executionLink(e.retry_of))] : null,
    e.outcome ? [el("dt", {}, "Ended with"), el("dd", {}, e.outcome, e.values ? json(e.values) : null)] : null));
}

function specCard(e) {
  const s = e.spec || {};
  const rows = Object.entries(s).filter(([, v]) => v !== "" && v !== null);
  return card("spec", "Spec",
    rows.length ? el("dl", {}, rows.map(([k, v]) => [el("dt", {}, k.replaceAll("_", " ")), el("dd", {}, el("pre", {}, String(v)))]))
      : el("p", { class: "muted" }, "Empty."));
}

function statusCard(e) {
  const s = e.status || {};
  const box = card("status", "Status");
  if (s.error) box.append(el("p", {}, el("strong", {}, "Error: "), `${s.error.message} `, s.error.type ? `(${s.error.type})` : "", s.error.non_retryable ? " non-retryable" : ""));
  if (s.todos && s.todos.length) {
    const done = s.todos.filter((t) => t.status === "COMPLETED").length;
    box.append(el("h3", {}, `Todos: ${done} done of ${s.todos.length}`),
      el("ul", {}, s.todos.map((t) => el("li", {}, badge(t.status || "?"), " ", t.content))));
  }
  if (s.tasks && s.tasks.length) {
    const done = s.tasks.filter((t) => t.status === "COMPLETED").length;
    box.append(el("h3", {}, `Tasks: ${done} done of ${s.tasks.length}`),
      el("ul", {}, s.tasks.map((t) => el("li", {}, badge(t.status || "?"), " ", t.name, ` (${t.type || "task"})`, t.error ? ` error: ${t.error}` : ""))));
  }
  if (s.tool_calls && s.tool_calls.length) {
    box.append(el("h3", {}, `Tool calls: ${s.tool_calls.length}`),
      el("table", {}, el("thead", {}, el("tr", {}, ["Tool", "Status", "Arguments", "Result or error"].map((h) => el("th", {}, h)))),
        el("tbody", {}, s.tool_calls.map((t) => el("tr", {}, el("td", {}, t.name), el("td", {}, badge(t.status || "?")),
          el("td", {}, t.args ? json(t.args) : "-"), el("td", {}, el("pre", {}, t.error || t.result || "-")))))));
  }
  if (s.messages && s.messages.length) {
    box.append(el("h3", {}, `Messages: ${s.messages.length}`),
      ...s.messages.map((m) => el("div", { class: "message" }, el("p", { class: "who" }, m.type || "message"), el("pre", {}, m.content))));
  }
  if (s.output) box.append(el("h3", {}, "Output"), json(s.output));
  if (box.children.length === 1) box.append(el("p", { class: "muted" }, "Nothing reported yet."));
  return box;
}

function callbackCard(e) {
  const c = e.callback;
  const path = ["armed", "due", "delivering"];
  const end = ["delivered", "gone", "dead"].includes(c.state) ? c.state : "delivered";
  const order = [...path, end];
  const at = order.indexOf(c.state);
  const steps = el("ol", { class: "steps", "aria-label": "Callback history" }, order.map((step, i) =>
    el("li", { class: i < at ? "passed" : i === at ? "current" : "", "aria-current": i === at ? "step" : null }, step)));
  return card("callback", "Callback", steps,
    el("dl", {},
      el("dt", {}, "State"), el("dd", {}, badge(c.state)),
      el("dt", {}, "Armed"), el("dd", {}, when(e.created_ms)),
      el("dt", {}, "Outcome recorded"), el("dd", {}, when(c.due_ms)),
      el("dt", {}, "Delivery ended"), el("dd", {}, when(c.ended_ms)),
      el("dt", {}, "Delivery attempts"), el("dd", {}, c.delivery_attempts),
      el("dt", {}, "Last error"), el("dd", {}, c.last_error || "-"),
      el("dt", {}, "Gone because"), el("dd", {}, c.gone_reason || "-"),
      el("dt", {}, "Token"), el("dd", { class: "mono" }, `fingerprint ${c.token_fingerprint}`)));
}

// The parent as stored at once; what Temporal shows of it (state, heartbeats) fills in when it answers.
function parentCard(e) {
  const c = e.callback;
  const box = card("parent", "Parent activity");
  const standalone = !c.workflow_id; // a standalone activity: started by a client, no workflow
  const workflow = el("dd", {}, standalone ? "none (a standalone activity)" : c.workflow_id);
  const temporal = el("dd", {}, "asking Temporal…");
  box.append(el("dl", {},
    el("dt", {}, "Workflow"), workflow,
    el("dt", {}, "Run"), el("dd", { class: "mono" }, c.run_id),
    el("dt", {}, "Activity"), el("dd", {}, `${c.activity_id} (attempt ${c.attempt})`),
    el("dt", {}, "As Temporal shows it"), temporal));
  api(`/console/parent/${encodeURIComponent(e.id)}`).then((parent) => {
    if (session.temporal_ui && !standalone) {
      const href = `${session.temporal_ui}/namespaces/${encodeURIComponent(parent.namespace)}/workflows/` +
        `${encodeURIComponent(c.workflow_id)}/${encodeURIComponent(c.run_id)}/history`;
      workflow.replaceChildren(el("a", { href, target: "_blank", rel: "noopener noreferrer" }, c.workflow_id));
    }
    const p = parent.pending;
    if (!p) return temporal.replaceChildren("not pending (it ended, or its workflow closed)");
    temporal.replaceChildren(`${p.state}${p.paused ? ", paused" : ""}, attempt ${p.attempt}`);
    box.querySelector("dl").append(
      el("dt", {}, "Last heartbeat"), el("dd", {}, when(p.last_heartbeat_ms)),
      el("dt", {}, "Heartbeat details"), el("dd", {}, p.heartbeat_details ? json(p.heartbeat_details) : "-"));
  }, (error) => temporal.replaceChildren(`Temporal could not be asked: ${error.message}`));
  return box;
}

// Each action asks once more before it runs: the button opens a confirmation with what will be sent.
function actionsCard(e) {
  const box = card("actions", "Actions");
  const ended = ["COMPLETED", "FAILED", "CANCELLED"].includes(e.phase);
  const confirmArea = el("div", { id: "confirm-area" });
  const confirm = (what, verb, body) => {
    const yes = el("button", { type: "button", id: "confirm", class: verb === "complete" || verb === "redeliver" ? "" : "danger" }, `Confirm: ${what}`);
    const no = el("button", { type: "button", class: "secondary" }, "Back");
    no.addEventListener("click", () => confirmArea.replaceChildren());
    yes.addEventListener("click", async () => {
      yes.disabled = true;
      try {
        const settled = await api(`/v1/executions/${encodeURIComponent(e.id)}:${verb}`, { method: "POST", body });
        confirmArea.replaceChildren();
        show(`${what}: ${settled.outcome}${settled.detail ? ` (${settled.detail})` : ""}`, settled.outcome === "delivered");
        refresh();
      } catch (error) {
        yes.disabled = false;
        show(`${what} refused: ${error.message}`);
      }
    });
    confirmArea.replaceChildren(el("div", { class: "confirm", role: "group", "aria-label": "Confirm" },
      el("p", {}, `${what} execution ${e.id}?`), body !== undefined ? json(body) : null, el("div", { class: "row" }, yes, no)));
    yes.focus();
  };
  if (e.callback && e.callback.state === "dead") {
    const redeliver = el("button", { type: "button", id: "redeliver" }, "Redeliver…");
    redeliver.addEventListener("click", () => confirm("Redeliver the callback", "redeliver", undefined));
    box.append(el("p", {}, "The delivery was dead-lettered. Once what refused it is fixed, deliver the recorded outcome again."), redeliver);
  }
  if (!ended) {
    const result = el("textarea", { id: "result", "aria-describedby": "result-help" }, "null");
    const complete = el("button", { type: "button", id: "complete" }, "Complete…");
    complete.addEventListener("click", () => {
      let value;
      try { value = JSON.parse(result.value); } catch (error) { return show(`The result is not JSON: ${error.message}`); }
      confirm("Complete", "complete", value);
    });
    const message = el("input", { id: "fail-message" });
    const type = el("input", { id: "fail-type" });
    const final = el("input", { id: "fail-non-retryable", type: "checkbox" });
    const fail = el("button", { type: "button", id: "fail", class: "danger" }, "Fail…");
    fail.addEventListener("click", () => {
      if (!message.value.trim()) return show("A failure needs a message.");
      confirm("Fail", "fail", { message: message.value, type: type.value, non_retryable: final.checked });
    });
    const cancel = el("button", { type: "button", id: "cancel", class: "danger" }, "Cancel…");
    cancel.addEventListener("click", () => confirm("Cancel", "cancel", {}));
    box.append(
      el("label", { for: "result" }, "Result (JSON)", result), el("p", { id: "result-help", class: "muted" }, "The value the parent activity returns."),
      el("div", { class: "row" }, complete),
      el("div", { class: "row" }, el("label", { for: "fail-message" }, "Failure message", message), el("label", { for: "fail-type" }, "Failure type", type),
        el("label", { class: "inline", for: "fail-non-retryable" }, final, "Non-retryable"), fail),
      el("div", { class: "row" }, cancel));
  } else if (!(e.callback && e.callback.state === "dead")) {
    box.append(el("p", { class: "muted" }, "It has ended: nothing to do."));
  }
  box.append(confirmArea);
  return box;
}

start();
