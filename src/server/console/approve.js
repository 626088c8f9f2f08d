// The approval page of one callback URL: a person without an account sees what is asked and approves
// (complete) or rejects with a reason (fail, non-retryable, type REJECTED). The URL's capability is the
// credential; nothing here is stored in the browser. Text is set with textContent only.

const main = document.getElementById("main");
const url = location.pathname; // /v1/callbacks/<capability>

function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === false || value === null || value === undefined) continue;
    node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

async function call(path, method, body) {
  const response = await fetch(path, {
    method, credentials: "omit", headers: { accept: "application/json", "content-type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const data = await response.json().catch(() => ({}));
  if (!response.ok) {
    const error = new Error((data.error && data.error.message) || response.statusText);
    error.type = data.error && data.error.type;
    throw error;
  }
  return data;
}

function outcome(text, refused = false) {
  const box = el("div", { class: refused ? "outcome refused" : "outcome", role: "status", id: "outcome", tabindex: "-1" }, text);
  main.replaceChildren(el("h1", {}, refused ? "This link cannot be used" : "Done"), box);
  box.focus();
}

// Why a link is refused, in plain words.
function plainly(error) {
  const message = error.message || "";
  if (message.includes("expired")) return "This link has expired. Ask for a new one.";
  if (error.type === "CapabilityError") return "This link is not valid (it was changed or belongs elsewhere). Nothing was changed.";
  if (error.type === "ExecutionNotFound") return "What this link was for no longer exists. Nothing was changed.";
  return `This link cannot be used: ${message}`;
}

function describeEnd(settled) {
  if (settled.outcome === "already_settled") return `This request was already settled${settled.detail ? ` (${settled.detail})` : ""}. Nothing was changed.`;
  return null;
}

async function start() {
  let view;
  try {
    view = await call(url, "GET");
  } catch (error) {
    return outcome(plainly(error), true);
  }
  const ask = view.spec ? view.spec.message || view.spec.trigger_message || "" : "";
  const ended = ["COMPLETED", "FAILED", "CANCELLED"].includes(view.phase);
  const progress = view.progress || {};
  const parts = [
    el("h1", {}, "Approval requested"),
    el("section", { class: "card", "aria-labelledby": "asked" }, el("h2", { id: "asked" }, "What is asked"),
      el("pre", { id: "ask" }, ask || "(no message)"),
      progress.last_message ? el("p", {}, el("strong", {}, "Latest: "), progress.last_message) : null,
      progress.todos_total ? el("p", {}, `${progress.todos_done} of ${progress.todos_total} todos done`) : null,
      progress.tasks_total ? el("p", {}, `${progress.tasks_done} of ${progress.tasks_total} tasks done`) : null,
      el("p", { class: "muted" }, `Request ${view.id}; this link works until ${new Date(view.expires_ms).toLocaleString()}.`)),
  ];
  if (ended) {
    parts.push(el("div", { class: "outcome", role: "status", id: "outcome" }, `This request was already settled: ${view.phase}. Nothing more to do.`));
    return main.replaceChildren(...parts);
  }
  const allowed = view.allowed_outcomes || [];
  const comment = el("textarea", { id: "comment" });
  const reason = el("input", { id: "reason" });
  const approve = el("button", { type: "button", id: "approve" }, "Approve");
  const reject = el("button", { type: "button", id: "reject", class: "danger" }, "Reject");
  const actions = el("section", { class: "card", "aria-labelledby": "decide" }, el("h2", { id: "decide" }, "Your decision"));
  if (allowed.includes("complete")) actions.append(el("label", { for: "comment" }, "Comment (optional)", comment), el("div", { class: "row" }, approve));
  if (allowed.includes("fail")) actions.append(el("div", { class: "row" }, el("label", { for: "reason" }, "Reason for rejecting", reason), reject));
  const settle = async (verb, body, button) => {
    approve.disabled = reject.disabled = true;
    try {
      const settled = await call(`${url}:${verb}`, "POST", body);
      const again = describeEnd(settled);
      if (again) return outcome(again, true);
      outcome(verb === "complete" ? "Approved. Thank you: the workflow goes on." : "Rejected. The workflow was told why.");
    } catch (error) {
      approve.disabled = reject.disabled = false;
      outcome(plainly(error), true);
    }
    button.blur();
  };
  approve.addEventListener("click", () => settle("complete", { approved: true, comment: comment.value }, approve));
  reject.addEventListener("click", () => {
    if (!reason.value.trim()) {
      reason.setAttribute("aria-invalid", "true");
      reason.focus();
      return;
    }
    settle("fail", { message: reason.value.trim(), type: "REJECTED", non_retryable: true }, reject);
  });
  parts.push(actions);
  main.replaceChildren(...parts);
}

start();
