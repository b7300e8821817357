// The session replay page, for the auditor group: a list of sessions with the filters and
// search of /v1/sessions, and a session's timeline (/v1/sessions/{id}) with each exchange
// collapsible, played back with its real time gaps at 1x, 4x or 16x, linkable as
// /ui/sessions/{id}#exchange-N, and followed live while the session is open.
//
// Plain JS under a strict Content-Security-Policy (no inline script or style). Every value
// from the API is rendered with textContent or set as a property: arguments and answers come
// from callers and upstreams and must never become markup. The token lives in sessionStorage
// and travels only in the Authorization header.
"use strict";

(() => {
  const TOKEN_KEY = "gatehouse.auditor-token";
  const PAGE = 200;
  const MOST_EXCHANGES = 5000;
  const TAIL_MS = 2000;
  const MASK = /\[MASKED:[^\]\s]*\]/g;

  const $ = (id) => document.getElementById(id);
  let token = null;
  let nextBefore = null;
  let session = null;
  let exchanges = [];
  let cursor = -1; // the exchange played last
  let playTimer = null;
  let tailTimer = null;

  class ApiError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  // --- the token ----------------------------------------------------------------------

  function storedToken() {
    try {
      return sessionStorage.getItem(TOKEN_KEY);
    } catch (_) {
      return null;
    }
  }

  function setToken(value) {
    const t = String(value).trim().replace(/^bearer\s+/i, "");
    if (!t) return false;
    token = t;
    try {
      sessionStorage.setItem(TOKEN_KEY, t);
    } catch (_) {
      // Storage refused: this page's memory only.
    }
    return true;
  }

  function forgetToken() {
    token = null;
    try {
      sessionStorage.removeItem(TOKEN_KEY);
    } catch (_) {
      // nothing stored
    }
  }

  async function api(path) {
    let resp;
    try {
      resp = await fetch(path, {
        headers: { accept: "application/json", authorization: "Bearer " + token },
        cache: "no-store",
        credentials: "omit",
        redirect: "error",
      });
    } catch (_) {
      throw new ApiError(0, "cannot reach the Gatehouse service");
    }
    let data = null;
    try {
      const text = await resp.text();
      data = text ? JSON.parse(text) : null;
    } catch (_) {
      data = null;
    }
    if (!resp.ok) {
      throw new ApiError(resp.status, data && typeof data.error === "string" ? data.error : "HTTP " + resp.status);
    }
    return data;
  }

  // --- showing things -----------------------------------------------------------------

  function el(tag, className, text) {
    const e = document.createElement(tag);
    if (className) e.className = className;
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }

  // Text with each [MASKED:...] marker in a <mark>, built as nodes (never markup).
  function maskedText(parent, text) {
    let at = 0;
    for (const m of text.matchAll(MASK)) {
      if (m.index > at) parent.appendChild(document.createTextNode(text.slice(at, m.index)));
      parent.appendChild(el("mark", "masked", m[0]));
      at = m.index + m[0].length;
    }
    if (at < text.length) parent.appendChild(document.createTextNode(text.slice(at)));
    return parent;
  }

  function pretty(value) {
    if (value === null || value === undefined) return "";
    if (typeof value === "string") {
      try {
        return JSON.stringify(JSON.parse(value), null, 2);
      } catch (_) {
        return value;
      }
    }
    return JSON.stringify(value, null, 2);
  }

  function showError(err) {
    const box = $("error");
    box.textContent = err instanceof ApiError && err.status === 403
      ? "Sessions are for the auditor group only."
      : err instanceof ApiError && err.status === 401
        ? "This token is refused: use a token for the audit audience."
        : err && err.message ? err.message : String(err);
    box.hidden = false;
    $("list-view").hidden = true;
    $("session-view").hidden = true;
    if (err instanceof ApiError && (err.status === 401 || err.status === 403)) {
      forgetToken();
      $("token-panel").hidden = false;
    }
  }

  function seconds(ms) {
    return ms === null || ms === undefined ? "" : "+" + (ms / 1000).toFixed(3) + "s";
  }

  // --- the list -----------------------------------------------------------------------

  function filters() {
    const q = new URLSearchParams();
    for (const input of $("filters").elements) {
      if (input.name && input.value.trim()) q.set(input.name, input.value.trim());
    }
    return q;
  }

  async function loadList(more) {
    const q = filters();
    q.set("limit", "50");
    if (more && nextBefore) q.set("before", nextBefore);
    const data = await api("/v1/sessions?" + q.toString());
    const body = $("session-rows");
    if (!more) body.replaceChildren();
    for (const s of Array.isArray(data.sessions) ? data.sessions : []) {
      const tr = el("tr", "session-row");
      tr.dataset.testid = "session-row";
      tr.dataset.sessionId = String(s.id);
      const link = el("a", null, s.id);
      link.href = "/ui/sessions/" + encodeURIComponent(String(s.id));
      const first = el("td");
      first.appendChild(link);
      tr.appendChild(first);
      const client = s.client && s.client.name ? s.client.name + " " + (s.client.version || "") : "";
      const masked = Object.values(s.masked || {}).reduce((a, b) => a + Number(b || 0), 0);
      for (const cell of [s.status, s.subject, client, s.upstream, s.started_at, s.calls, s.denials, s.approvals, masked]) {
        tr.appendChild(el("td", null, cell));
      }
      tr.addEventListener("click", (ev) => {
        if (ev.target !== link) location.href = link.href;
      });
      body.appendChild(tr);
    }
    nextBefore = data.next || null;
    $("more").hidden = !nextBefore;
    $("list-empty").hidden = body.children.length > 0;
    $("sessions").dataset.loaded = "true";
  }

  // --- one session ----------------------------------------------------------------------

  function renderExchange(x) {
    const d = el("details", "exchange");
    d.id = "exchange-" + x.n;
    d.dataset.testid = "exchange";
    d.dataset.n = String(x.n);
    if (x.decision === "deny") d.classList.add("deny");
    if (Array.isArray(x.approval) && x.approval.length) d.classList.add("approval");
    const sum = el("summary");
    sum.appendChild(el("span", "offset", seconds(x.offset_ms)));
    sum.appendChild(el("span", "num", "#" + x.n));
    sum.appendChild(el("span", "method", [x.method || x.http_method, x.tool].filter(Boolean).join(" ")));
    if (x.decision) sum.appendChild(el("span", "badge " + x.decision, x.decision + (x.policy_rule ? " by " + x.policy_rule : "")));
    const latency = el("span", "latency");
    latency.dataset.testid = "latency";
    const bar = el("span", "bar");
    bar.style.width = Math.min(300, Math.max(1, Math.round((Number(x.latency_ms) || 0) / 4))) + "px";
    latency.appendChild(bar);
    latency.appendChild(el("span", null, x.latency_ms === null || x.latency_ms === undefined ? "no answer" : x.latency_ms + " ms"));
    sum.appendChild(latency);
    d.appendChild(sum);

    if (x.reason) d.appendChild(el("p", null, x.reason));
    if (x.arguments !== null && x.arguments !== undefined) {
      d.appendChild(el("p", "label", "Arguments (masked)"));
      d.appendChild(maskedText(el("pre", "arguments"), pretty(x.arguments)));
    }
    if (Array.isArray(x.approval) && x.approval.length) {
      d.appendChild(el("p", "label", "Approval"));
      const ul = el("ul", "steps");
      for (const a of x.approval) {
        ul.appendChild(el("li", null, [a.at, a.event, a.approver ? "by " + a.approver : "", a.reason ? "(" + a.reason + ")" : ""].filter(Boolean).join(" ")));
      }
      d.appendChild(ul);
    }
    for (const part of Array.isArray(x.responses) ? x.responses : []) {
      d.appendChild(el("p", "label", "Answer part " + part.part + (part.final ? " (final)" : "") + " " + seconds(part.offset_ms) + (part.withheld ? " withheld: " + part.withheld : "")));
      if (part.message !== null && part.message !== undefined) {
        d.appendChild(maskedText(el("pre", "answer"), pretty(part.message)));
      }
    }
    const rec = x.record;
    if (rec) d.appendChild(el("p", "meta mono", "record " + rec.writer + " #" + rec.seq + " " + rec.hash));
    return d;
  }

  function position() {
    $("position").textContent = (cursor + 1) + " / " + exchanges.length;
    document.body.dataset.played = String(cursor + 1);
  }

  function goTo(n, scroll) {
    const list = $("exchanges").children;
    for (let i = 0; i < list.length; i++) {
      list[i].classList.toggle("current", i === n);
      list[i].classList.toggle("unplayed", playTimer !== null && i > n);
    }
    cursor = n;
    const d = list[n];
    if (d) {
      d.open = true;
      if (scroll) d.scrollIntoView({ block: "nearest" });
      history.replaceState(null, "", "#exchange-" + n);
      const log = document.body.dataset.playLog;
      document.body.dataset.playLog = log ? log + "," + n : String(n);
    }
    position();
  }

  function stop() {
    if (playTimer !== null) clearTimeout(playTimer);
    playTimer = null;
    $("play").disabled = false;
    $("pause").disabled = true;
    for (const d of $("exchanges").children) d.classList.remove("unplayed");
  }

  function playNext() {
    const next = cursor + 1;
    if (next >= exchanges.length) {
      stop();
      return;
    }
    goTo(next, true);
    const after = exchanges[next + 1];
    if (!after) {
      stop();
      return;
    }
    const gap = Math.max(0, (Number(after.offset_ms) || 0) - (Number(exchanges[next].offset_ms) || 0));
    playTimer = setTimeout(playNext, gap / Number($("speed").value || 1));
  }

  function play() {
    if (cursor + 1 >= exchanges.length) cursor = -1;
    document.body.dataset.playLog = "";
    $("play").disabled = true;
    $("pause").disabled = false;
    playTimer = 0;
    playNext();
  }

  async function fetchExchanges(id, from) {
    const got = [];
    let at = from;
    while (at !== null && got.length + from < MOST_EXCHANGES) {
      const data = await api("/v1/sessions/" + encodeURIComponent(id) + "?from=" + at + "&limit=" + PAGE);
      session = data.session;
      got.push(...(Array.isArray(data.exchanges) ? data.exchanges : []));
      at = typeof data.next_from === "number" ? data.next_from : null;
    }
    return got;
  }

  function renderHeader() {
    const s = session;
    $("session-title").textContent = "Session " + s.id + " on " + s.upstream;
    const client = s.client && s.client.name ? s.client.name + " " + (s.client.version || "") : "unknown client";
    $("session-meta").textContent = [s.subject || "?", client, s.status, "started " + s.started_at, "last " + s.last_at,
      s.calls + " calls", s.denials + " denied", s.approvals + " with approvals"].join(" · ");
    $("tail").hidden = s.status !== "open";
  }

  async function tail(id) {
    try {
      const fresh = await fetchExchanges(id, exchanges.length);
      const box = $("exchanges");
      for (const x of fresh) {
        exchanges.push(x);
        box.appendChild(renderExchange(x));
      }
      renderHeader();
      position();
      if (session.status === "open") tailTimer = setTimeout(() => tail(id), TAIL_MS);
    } catch (err) {
      showError(err);
    }
  }

  async function download(id) {
    const button = $("download");
    button.disabled = true;
    try {
      const resp = await fetch("/v1/sessions/" + encodeURIComponent(id) + "/export", {
        headers: { authorization: "Bearer " + token },
        cache: "no-store",
        credentials: "omit",
        redirect: "error",
      });
      if (!resp.ok) throw new ApiError(resp.status, "the export failed (HTTP " + resp.status + ")");
      const url = URL.createObjectURL(await resp.blob());
      const a = el("a");
      a.href = url;
      a.download = "session-" + String(id).replace(/[^A-Za-z0-9_-]/g, "") + ".tar";
      document.body.appendChild(a);
      a.click();
      a.remove();
      setTimeout(() => URL.revokeObjectURL(url), 10000);
    } catch (err) {
      $("error").textContent = err.message;
      $("error").hidden = false;
    } finally {
      button.disabled = false;
    }
  }

  async function showSession(id) {
    exchanges = await fetchExchanges(id, 0);
    renderHeader();
    const box = $("exchanges");
    box.replaceChildren(...exchanges.map(renderExchange));
    $("session-view").hidden = false;
    $("session-view").dataset.loaded = "true";
    const m = /^#exchange-(\d+)$/.exec(location.hash);
    if (m && Number(m[1]) < exchanges.length) {
      goTo(Number(m[1]), true);
      document.body.dataset.playLog = "";
    } else {
      position();
    }
    $("play").addEventListener("click", play);
    $("pause").addEventListener("click", stop);
    $("step").addEventListener("click", () => {
      stop();
      if (cursor + 1 < exchanges.length) goTo(cursor + 1, true);
    });
    $("expand").addEventListener("click", () => {
      for (const d of box.children) d.open = true;
    });
    $("download").addEventListener("click", () => download(id));
    if (session.status === "open") tailTimer = setTimeout(() => tail(id), TAIL_MS);
  }

  // --- start ---------------------------------------------------------------------------

  async function start() {
    $("error").hidden = true;
    $("token-panel").hidden = true;
    $("forget-token").hidden = false;
    $("whoami").textContent = "Signed in with your auditor token";
    const m = /^\/ui\/sessions\/([^/]+)$/.exec(location.pathname);
    try {
      if (m) {
        await showSession(decodeURIComponent(m[1]));
      } else {
        $("list-view").hidden = false;
        await loadList(false);
      }
    } catch (err) {
      showError(err);
    }
  }

  $("token-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    if (setToken($("token-input").value)) {
      $("token-input").value = "";
      start();
    }
  });
  $("forget-token").addEventListener("click", () => {
    forgetToken();
    if (tailTimer !== null) clearTimeout(tailTimer);
    location.reload();
  });
  $("filters").addEventListener("submit", (ev) => {
    ev.preventDefault();
    loadList(false).catch(showError);
  });
  $("more").addEventListener("click", () => loadList(true).catch(showError));

  token = storedToken();
  if (token) {
    start();
  } else {
    $("token-panel").hidden = false;
  }
})();
