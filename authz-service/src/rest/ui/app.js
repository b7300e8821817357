// The approvers' page: lists pending approvals, approves or denies them, polls for changes.
//
// Plain JS, no dependencies, served under a strict Content-Security-Policy (no inline script
// or style). Every value from the API is rendered with textContent or set as a property:
// tool names, subjects and arguments come from callers and must never become markup.
// The token lives in sessionStorage and travels only in the Authorization header.
// `?approval=ID` (the link in approval notices) highlights that approval.
"use strict";

(() => {
  const TOKEN_KEY = "gatehouse.approver-token";
  const POLL_MS = 2000;
  const RECENT_EVERY_POLLS = 5;
  const RECENT_MAX = 20;
  const FLASH_MS = 10000;
  const STATUSES = ["pending", "approved", "denied", "expired", "used"];

  const $ = (id) => document.getElementById(id);
  const ui = {
    whoami: $("whoami"),
    changeToken: $("change-token"),
    forgetToken: $("forget-token"),
    tokenPanel: $("token-panel"),
    tokenForm: $("token-form"),
    tokenInput: $("token-input"),
    tokenMessage: $("token-message"),
    status: $("status"),
    flash: $("flash"),
    linked: $("linked"),
    pendingSection: $("pending-section"),
    pendingCount: $("pending-count"),
    pendingEmpty: $("pending-empty"),
    pendingList: $("pending-list"),
    recentSection: $("recent-section"),
    recentEmpty: $("recent-empty"),
    recentTable: $("recent-table"),
    recentList: $("recent-list"),
    template: $("approval-template"),
  };

  let token = null;
  let claims = null; // the token's payload, decoded for display only (the server verifies it)
  let pollTimer = null;
  let inFlight = false;
  let pollAgain = false;
  let polls = 0;
  let recentDue = true;
  // Bumped around every decision: a list fetched before or during one may be stale.
  let epoch = 0;
  let clockSkewMs = 0; // server clock minus ours, from the Date header
  let flashTimer = null;
  const rows = new Map(); // approval id -> {root, approval, busy, fields...}
  const linkedId = new URLSearchParams(location.search).get("approval");
  let linkedDone = false;
  let recent = [];

  // --- the token ----------------------------------------------------------------------

  function storedToken() {
    try {
      return sessionStorage.getItem(TOKEN_KEY);
    } catch (_) {
      return null;
    }
  }

  function useToken(value) {
    let t = String(value).trim();
    if (/^bearer\s+/i.test(t)) t = t.replace(/^bearer\s+/i, "");
    if (!t) return false;
    token = t;
    claims = decodeClaims(t);
    try {
      sessionStorage.setItem(TOKEN_KEY, t);
    } catch (_) {
      // Storage refused (private mode): the token lives in this page's memory only.
    }
    renderWho();
    return true;
  }

  function forgetToken(message) {
    token = null;
    claims = null;
    try {
      sessionStorage.removeItem(TOKEN_KEY);
    } catch (_) {
      // Nothing stored.
    }
    clearTimeout(pollTimer);
    pollTimer = null;
    clearLists();
    renderWho();
    showTokenPanel(message);
  }

  // `#token=...` once (the demo prints such a link); the fragment never reaches a server,
  // and it is removed from the address bar and the history at once.
  function tokenFromFragment() {
    if (location.hash.length < 2) return false;
    const value = new URLSearchParams(location.hash.slice(1)).get("token");
    if (value === null) return false;
    history.replaceState(null, "", location.pathname + location.search);
    return useToken(value);
  }

  function decodeClaims(t) {
    const parts = t.split(".");
    if (parts.length !== 3) return null;
    try {
      const b64 = parts[1].replace(/-/g, "+").replace(/_/g, "/");
      const bin = atob(b64 + "===".slice((b64.length + 3) % 4));
      const value = JSON.parse(new TextDecoder().decode(Uint8Array.from(bin, (c) => c.charCodeAt(0))));
      return value && typeof value === "object" ? value : null;
    } catch (_) {
      return null;
    }
  }

  function mySubject() {
    return claims && typeof claims.sub === "string" ? claims.sub : null;
  }

  function renderWho() {
    if (!token) {
      setText(ui.whoami, "No token");
      ui.changeToken.hidden = true;
      ui.forgetToken.hidden = true;
      return;
    }
    let label = "Signed in";
    if (mySubject() !== null) label += " as " + mySubject();
    if (claims && Array.isArray(claims.groups)) {
      const groups = claims.groups.filter((g) => typeof g === "string");
      if (groups.length) label += " (" + groups.join(", ") + ")";
    }
    if (claims && typeof claims.exp === "number" && claims.exp * 1000 < serverNow()) label += " — token expired";
    setText(ui.whoami, label);
    ui.changeToken.hidden = false;
    ui.forgetToken.hidden = false;
  }

  function showTokenPanel(message) {
    ui.tokenPanel.hidden = false;
    ui.tokenMessage.textContent = message || "";
    ui.tokenMessage.hidden = !message;
    ui.tokenInput.value = "";
    ui.tokenInput.focus();
  }

  function hideTokenPanel() {
    ui.tokenPanel.hidden = true;
    ui.tokenMessage.hidden = true;
    ui.tokenInput.value = "";
  }

  // --- the API --------------------------------------------------------------------------

  class ApiError extends Error {
    constructor(status, message, body) {
      super(message);
      this.status = status;
      this.body = body;
    }
  }

  async function api(method, path, body) {
    const headers = { accept: "application/json", authorization: "Bearer " + token };
    const init = { method, headers, cache: "no-store", credentials: "omit", redirect: "error" };
    if (body !== undefined) {
      headers["content-type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    let resp;
    try {
      resp = await fetch(path, init);
    } catch (_) {
      throw new ApiError(0, "cannot reach the Gatehouse service", null);
    }
    noteServerDate(resp.headers.get("date"));
    let data = null;
    try {
      const text = await resp.text();
      data = text ? JSON.parse(text) : null;
    } catch (_) {
      data = null;
    }
    if (!resp.ok) {
      const message = data && typeof data.error === "string" ? data.error : "HTTP " + resp.status;
      throw new ApiError(resp.status, message, data);
    }
    return data;
  }

  function approvalsOf(data) {
    const list = data && Array.isArray(data.approvals) ? data.approvals : [];
    return list.filter((a) => a && typeof a === "object" && typeof a.id === "string");
  }

  // --- polling ----------------------------------------------------------------------------

  function schedule(ms) {
    clearTimeout(pollTimer);
    pollTimer = token ? setTimeout(poll, ms) : null;
  }

  function refreshNow() {
    schedule(0);
  }

  async function poll() {
    pollTimer = null;
    if (!token) return;
    if (inFlight) {
      pollAgain = true;
      return;
    }
    inFlight = true;
    const started = epoch;
    const withRecent = recentDue || polls % RECENT_EVERY_POLLS === 0;
    polls += 1;
    try {
      const pending = await api("GET", "/v1/approvals?status=pending");
      if (started === epoch) {
        renderPending(approvalsOf(pending));
        setStatus("Updated " + new Date().toLocaleTimeString() + ", every " + POLL_MS / 1000 + " s.", false);
      } else {
        pollAgain = true;
      }
      if (withRecent) {
        try {
          const all = await api("GET", "/v1/approvals");
          recentDue = false;
          renderRecent(approvalsOf(all).filter((a) => a.status !== "pending"));
        } catch (e) {
          if (e.status === 401) throw e;
          ui.recentSection.hidden = false;
          ui.recentEmpty.hidden = false;
          ui.recentEmpty.textContent = "Cannot list recent decisions: " + e.message;
        }
      }
    } catch (e) {
      if (e.status === 401) {
        inFlight = false;
        forgetToken("Your token was refused (" + e.message + "). Paste a fresh one.");
        return;
      }
      if (e.status === 0) setStatus("Cannot reach the Gatehouse service; retrying…", true);
      else setStatus("Cannot list approvals: " + e.message, true);
    } finally {
      inFlight = false;
    }
    const again = pollAgain;
    pollAgain = false;
    schedule(again ? 0 : POLL_MS);
  }

  function setStatus(text, isError) {
    ui.status.textContent = text;
    ui.status.classList.toggle("error", isError);
  }

  function flash(text, isError) {
    ui.flash.textContent = text;
    ui.flash.classList.toggle("error", isError);
    ui.flash.hidden = false;
    clearTimeout(flashTimer);
    flashTimer = setTimeout(() => {
      ui.flash.hidden = true;
    }, FLASH_MS);
  }

  // --- time ---------------------------------------------------------------------------------

  function noteServerDate(header) {
    const server = header ? Date.parse(header) : NaN;
    if (Number.isNaN(server)) return;
    const skew = server - Date.now();
    // The header has whole seconds: only a larger difference is a real skew.
    clockSkewMs = Math.abs(skew) > 2000 ? skew : 0;
  }

  function serverNow() {
    return Date.now() + clockSkewMs;
  }

  function duration(ms) {
    const s = Math.max(0, Math.round(ms / 1000));
    if (s < 60) return s + " s";
    const m = Math.floor(s / 60);
    if (m < 60) return m + " min";
    const h = Math.floor(m / 60);
    if (h < 24) return m % 60 ? h + " h " + (m % 60) + " min" : h + " h";
    return Math.floor(h / 24) + " d";
  }

  function ago(iso) {
    const t = Date.parse(iso);
    if (Number.isNaN(t)) return "at an unknown time";
    const d = serverNow() - t;
    return d < 5000 ? "just now" : duration(d) + " ago";
  }

  function expiresIn(iso) {
    const t = Date.parse(iso);
    if (Number.isNaN(t)) return "no expiry given";
    const d = t - serverNow();
    return d <= 0 ? "expired" : "expires in " + duration(d);
  }

  function tick() {
    for (const row of rows.values()) renderTimes(row);
    for (const tr of ui.recentList.children) {
      const cell = tr.firstChild;
      if (cell && cell.dataset.at) cell.textContent = ago(cell.dataset.at);
    }
    if (token) renderWho();
  }

  // --- pending approvals ----------------------------------------------------------------

  function text(value) {
    if (value === null || value === undefined) return "—";
    return typeof value === "string" ? value : JSON.stringify(value);
  }

  function setText(node, value) {
    // Only when changed: resetting a node drops the reader's text selection.
    if (node.textContent !== value) node.textContent = value;
  }

  function createRow(approval) {
    const root = ui.template.content.firstElementChild.cloneNode(true);
    const q = (cls) => root.querySelector("." + cls);
    const row = {
      root,
      approval,
      busy: false,
      tool: q("tool"),
      upstream: q("upstream"),
      subject: q("subject"),
      age: q("age"),
      expires: q("expires"),
      waiting: q("waiting"),
      rule: q("rule"),
      group: q("group"),
      grant: q("grant"),
      requestId: q("request-id"),
      approvalId: q("approval-id"),
      args: q("args"),
      masked: q("masked-warning"),
      maskedSummary: q("masked-summary"),
      maskedSpans: q("masked-spans"),
      argsClearTitle: q("args-clear-title"),
      argsClear: q("args-clear"),
      reason: q("reason"),
      approve: q("approve"),
      deny: q("deny"),
      note: q("note"),
      error: q("row-error"),
    };
    root.dataset.approvalId = approval.id;
    root.id = "approval-" + approval.id;
    root.classList.toggle("linked", approval.id === linkedId);
    row.approve.addEventListener("click", () => decide(row, "approve"));
    row.deny.addEventListener("click", () => decide(row, "deny"));
    return row;
  }

  function renderTimes(row) {
    const a = row.approval;
    setText(row.age, ago(a.requested_at));
    row.age.title = text(a.requested_at);
    setText(row.expires, expiresIn(a.expires_at));
    row.expires.title = text(a.expires_at);
    // The caller's call is held in the gateway right now, waiting for this decision.
    const w = a.waiting && typeof a.waiting === "object" ? a.waiting : null;
    const since = w ? Date.parse(w.since) : NaN;
    row.waiting.hidden = Number.isNaN(since);
    if (!Number.isNaN(since)) {
      const calls = typeof w.calls === "number" && w.calls > 1 ? " (" + w.calls + " calls)" : "";
      setText(row.waiting, text(a.subject) + " is waiting" + calls + " (" + duration(serverNow() - since) + ")");
    }
  }

  function updateRow(row) {
    const a = row.approval;
    setText(row.tool, text(a.tool));
    setText(row.upstream, text(a.upstream));
    setText(row.subject, text(a.subject));
    setText(row.rule, text(a.rule));
    setText(row.group, text(a.approver_group));
    setText(row.grant, a.single_use === false ? "repeated calls while the grant lasts" : "one call");
    setText(row.requestId, text(a.request_id));
    setText(row.approvalId, a.id);
    setText(row.args, a.arguments === undefined ? "(none)" : JSON.stringify(a.arguments, null, 2));
    renderMasked(row, a);
    renderTimes(row);

    const allowed = a.can_decide === true;
    // Approving needs arguments the approver can read (the server refuses it too).
    const approvable = allowed && a.can_approve !== false;
    row.root.dataset.canDecide = String(allowed);
    row.root.classList.toggle("readonly", !allowed);
    row.root.classList.toggle("busy", row.busy);
    row.reason.disabled = !allowed || row.busy;
    row.approve.disabled = !approvable || row.busy;
    row.deny.disabled = !allowed || row.busy;
    row.note.hidden = allowed;
    if (!allowed) setText(row.note, whyNot(a));
  }

  // Masking changed the arguments: say what, where and how long, and show the clear
  // arguments when the server gives them (approvers only, while pending).
  function renderMasked(row, a) {
    const m = a.masked && typeof a.masked === "object" ? a.masked : null;
    row.masked.hidden = !m;
    const hasClear = a.arguments_clear !== undefined;
    row.argsClear.hidden = !hasClear;
    row.argsClearTitle.hidden = !hasClear;
    if (hasClear) setText(row.argsClear, JSON.stringify(a.arguments_clear, null, 2));
    if (!m) return;
    let summary = "Masking changed these arguments: " + text(m.summary) + ".";
    if (m.mode === "show_clear") {
      summary += m.clear_available === false
        ? " Their clear text is no longer held (the service restarted): this call cannot be approved; deny it or wait for the caller to send it again."
        : " Read the clear arguments below before you approve.";
    } else {
      summary += " You see them masked: approve only if the masked values need no reading.";
    }
    setText(row.maskedSummary, summary);
    const spans = Array.isArray(m.spans) ? m.spans : [];
    const items = spans.map((s) => {
      const li = document.createElement("li");
      const where = (s.pointer ? s.pointer : "(the arguments)") + (s.inner_pointer ? " → JSON " + s.inner_pointer : "");
      const at = typeof s.offset === "number" ? ", at character " + s.offset : "";
      const len = typeof s.length === "number" ? ", " + s.length + " characters" : ", length unknown";
      li.textContent = text(s.kind) + " in " + where + at + len;
      return li;
    });
    if (typeof m.more === "number" && m.more > 0) {
      const li = document.createElement("li");
      li.textContent = m.more + " more";
      items.push(li);
    }
    row.maskedSpans.replaceChildren(...items);
  }

  function whyNot(a) {
    const group = "“" + text(a.approver_group) + "”";
    const me = mySubject();
    if (me !== null && me === a.subject) {
      return "This is your own request: another member of " + group + " must decide it.";
    }
    return "You cannot decide this request: only members of " + group + " other than the requester can.";
  }

  function showRowError(row, message) {
    setText(row.error, message);
    row.error.hidden = !message;
  }

  function renderPending(list) {
    // What this approver can decide first, newest first within each part (the server's
    // order; the sort is stable).
    const pending = list
      .filter((a) => a.status === "pending")
      .sort((x, y) => Number(y.can_decide === true) - Number(x.can_decide === true));
    const seen = new Set();
    let prev = null;
    for (const a of pending) {
      if (seen.has(a.id)) continue;
      seen.add(a.id);
      let row = rows.get(a.id);
      if (!row) {
        row = createRow(a);
        rows.set(a.id, row);
      }
      row.approval = a;
      updateRow(row);
      // In that order; a row already in place is not moved (moving it would take the
      // focus from its reason field).
      const slot = prev ? prev.nextSibling : ui.pendingList.firstChild;
      if (slot !== row.root) ui.pendingList.insertBefore(row.root, slot);
      prev = row.root;
    }
    for (const [id, row] of rows) {
      if (!seen.has(id) && !row.busy) {
        removeRow(row);
        recentDue = true;
      }
    }
    ui.pendingSection.hidden = false;
    ui.pendingSection.dataset.loaded = "true";
    if (linkedId && !linkedDone) {
      linkedDone = true;
      const row = rows.get(linkedId);
      if (row) row.root.scrollIntoView({ block: "center" });
      else explainLinked();
    }
    setText(ui.pendingCount, "(" + rows.size + ")");
    ui.pendingEmpty.hidden = rows.size > 0;
  }

  function removeRow(row) {
    row.root.remove();
    rows.delete(row.approval.id);
    setText(ui.pendingCount, "(" + rows.size + ")");
    ui.pendingEmpty.hidden = rows.size > 0;
  }

  function clearLists() {
    linkedDone = false;
    ui.linked.hidden = true;
    for (const row of rows.values()) row.root.remove();
    rows.clear();
    ui.recentList.replaceChildren();
    recent = [];
    ui.pendingSection.hidden = true;
    ui.recentSection.hidden = true;
    delete ui.pendingSection.dataset.loaded;
    setStatus("", false);
  }

  async function decide(row, action) {
    const a = row.approval;
    const reason = row.reason.value.trim();
    showRowError(row, "");
    if (action === "deny" && !reason) {
      showRowError(row, "Give a reason to deny.");
      row.reason.focus();
      return;
    }
    if (row.busy || !token) return;
    row.busy = true;
    updateRow(row);
    epoch += 1;
    const what = text(a.tool) + " on " + text(a.upstream) + " for " + text(a.subject);
    try {
      const path = "/v1/approvals/" + encodeURIComponent(a.id) + "/" + action;
      const decided = await api("POST", path, reason ? { reason } : {});
      const status = decided && typeof decided.status === "string" ? decided.status : action + "d";
      flash((status === "denied" ? "Denied: " : "Approved: ") + what + ".", false);
      row.busy = false;
      removeRow(row);
    } catch (e) {
      row.busy = false;
      if (e.status === 401) {
        forgetToken("Your token was refused (" + e.message + "). Paste a fresh one.");
        return;
      }
      if (e.status === 409 || e.status === 404) {
        // Someone else decided it, or it expired: it is no longer pending.
        const now = e.body && e.body.approval && typeof e.body.approval === "object" ? e.body.approval : null;
        let message = e.message;
        if (now && typeof now.status === "string") {
          message += " (" + now.status + (typeof now.decided_by === "string" ? " by " + now.decided_by : "") + ")";
        }
        flash(what + ": " + message, true);
        removeRow(row);
      } else {
        showRowError(row, e.status === 0 ? "Cannot reach the Gatehouse service: try again." : e.message);
        updateRow(row);
      }
    } finally {
      epoch += 1;
      recentDue = true;
    }
    refreshNow();
  }

  // The linked approval is not pending (any more): say what became of it.
  async function explainLinked() {
    let message;
    try {
      const a = await api("GET", "/v1/approvals/" + encodeURIComponent(linkedId));
      if (!a || a.status === "pending") return;
      const what = text(a.tool) + " on " + text(a.upstream) + " for " + text(a.subject);
      message = "The linked request (" + what + ") is no longer pending: " + text(a.status);
      if (typeof a.decided_by === "string") message += " by " + a.decided_by;
      if (typeof a.decided_at === "string") message += ", " + ago(a.decided_at);
      if (typeof a.reason === "string" && a.reason) message += " (“" + a.reason + "”)";
      message += ".";
    } catch (e) {
      if (e.status === 401) return; // the next poll asks for a token
      message =
        e.status === 404
          ? "The linked approval does not exist, or you may not see it."
          : "Cannot show the linked approval: " + e.message;
    }
    ui.linked.textContent = message;
    ui.linked.hidden = false;
  }

  // --- recent decisions ---------------------------------------------------------------

  function renderRecent(list) {
    recent = list.slice(0, RECENT_MAX);
    const trs = recent.map((a) => {
      const tr = document.createElement("tr");
      tr.dataset.testid = "recent-row";
      tr.dataset.approvalId = a.id;
      const cell = (value) => {
        const td = document.createElement("td");
        td.textContent = value;
        tr.appendChild(td);
        return td;
      };
      const at = typeof a.decided_at === "string" ? a.decided_at : a.expires_at;
      const when = cell(ago(at));
      when.dataset.at = text(at);
      when.title = text(at);
      const status = cell(text(a.status));
      status.className = "status-" + (STATUSES.includes(a.status) ? a.status : "other");
      cell(text(a.tool) + " on " + text(a.upstream));
      cell(text(a.subject));
      cell(text(a.decided_by));
      cell(typeof a.reason === "string" ? a.reason : "");
      return tr;
    });
    ui.recentList.replaceChildren(...trs);
    ui.recentSection.hidden = false;
    ui.recentTable.hidden = recent.length === 0;
    ui.recentEmpty.hidden = recent.length > 0;
    ui.recentEmpty.textContent = "None yet.";
  }

  // --- start ----------------------------------------------------------------------------------

  ui.tokenForm.addEventListener("submit", (event) => {
    event.preventDefault();
    if (!useToken(ui.tokenInput.value)) {
      ui.tokenMessage.textContent = "Paste a token first.";
      ui.tokenMessage.hidden = false;
      return;
    }
    hideTokenPanel();
    clearLists();
    refreshNow();
  });
  ui.changeToken.addEventListener("click", () => showTokenPanel(""));
  ui.forgetToken.addEventListener("click", () => forgetToken(""));
  window.addEventListener("hashchange", () => {
    if (tokenFromFragment()) {
      hideTokenPanel();
      clearLists();
      refreshNow();
    }
  });

  if (tokenFromFragment() || useToken(storedToken() || "")) {
    hideTokenPanel();
    refreshNow();
  } else {
    renderWho();
    showTokenPanel("");
  }
  setInterval(tick, 1000);
})();
