// foedus console: what every page shares. Calls the coordinator's own API (/v1/...) with the
// session cookie; every change carries the session's CSRF token. No framework, no build step.
"use strict";

const Console = (() => {
  const csrf = () => document.querySelector('meta[name="csrf-token"]')?.content || "";
  let troubleSince = null;
  const TROUBLE = {
    unreachable: "Cannot reach the coordinator",
    failing: "The coordinator answers only with errors (its log says why)",
  };

  // How the coordinator answered the page's last request: "ok", "unreachable" (it restarts,
  // the network is down) or "failing" (a 5xx: e.g. its database is down). While it is not
  // "ok" a banner says so: what the page shows is what it last read.
  function reachable(how) {
    const banner = document.getElementById("connection");
    if (how === "ok") troubleSince = null;
    else if (troubleSince === null) troubleSince = new Date();
    if (!banner) return;
    banner.hidden = how === "ok";
    if (how !== "ok") {
      banner.textContent = `${TROUBLE[how]} since ${troubleSince.toLocaleTimeString()}: ` +
        "this page shows what it last read, and keeps trying.";
    }
  }
  const answered = (response) => reachable(response.status >= 500 ? "failing" : "ok");

  // The session ended (logged out elsewhere, idle too long, the token replaced): the page is
  // loaded again, which goes to the login page and comes back here after logging in.
  function sessionEnded() {
    window.location.reload();
  }

  // One API call: {ok, status, data, error}; error is the coordinator's one-line reason.
  async function api(method, path, body) {
    const init = {method, credentials: "same-origin", headers: {"Accept": "application/json"}};
    if (method !== "GET") {
      init.headers["X-CSRF-Token"] = csrf();
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body || {});
    }
    let response;
    try {
      response = await fetch(path, init);
    } catch (err) {
      reachable("unreachable");
      return {ok: false, status: 0, data: null, error: "cannot reach the coordinator"};
    }
    answered(response);
    // a poll (GET) of a page whose session ended; a change (a submit, a cancel) shows the
    // API's answer where it was asked, so a pasted job file is not lost
    if (response.status === 401 && method === "GET") sessionEnded();
    let data = null;
    try { data = await response.json(); } catch (err) { data = null; }
    const error = response.ok ? null : (data && data.error) ||
      `the coordinator answered ${response.status}`;
    return {ok: response.ok, status: response.status, data, error};
  }

  // What identifies a focusable element across a re-render: its link or its cancel target.
  function focusKey(node) {
    if (node?.dataset?.cancel) return `[data-cancel="${CSS.escape(node.dataset.cancel)}"]`;
    const href = node?.getAttribute?.("href");
    return href ? `[href="${CSS.escape(href)}"]` : null;
  }

  // Elements with data-live="URL" are re-rendered from that URL (a server-rendered fragment)
  // every few seconds when it changed, and at once after an action of the page (a cancel);
  // a keyboard user's focus stays on the same link or button, and a scrolled table keeps its
  // scroll position.
  async function refresh(el) {
    if (document.hidden) return;
    try {
      let response;
      try {
        response = await fetch(el.dataset.live, {credentials: "same-origin"});
      } catch (err) {
        reachable("unreachable");
        return;
      }
      answered(response);
      if (response.status === 401) { sessionEnded(); return; }
      if (!response.ok) return;
      const html = await response.text();
      if (html === el.dataset.last) return;
      const key = el.contains(document.activeElement) ? focusKey(document.activeElement) : null;
      const scroll = el.querySelector(".scroll")?.scrollLeft || 0;
      el.dataset.last = html;
      el.innerHTML = html;
      const scroller = el.querySelector(".scroll");
      if (scroller) scroller.scrollLeft = scroll;
      if (key) el.querySelector(key)?.focus();
    } catch (err) { /* the next tick tries again */ }
  }

  function live(seconds) {
    const regions = [...document.querySelectorAll("[data-live]")];
    for (const el of regions) setInterval(() => refresh(el), seconds * 1000);
    document.addEventListener("job-changed", () => regions.forEach(refresh));
  }

  // Buttons with data-cancel="JOB" cancel that job (the API decides who may).
  function cancelButtons() {
    document.addEventListener("click", async (event) => {
      const button = event.target.closest("button[data-cancel]");
      if (!button) return;
      const job = button.dataset.cancel;
      const out = document.getElementById("action-message");
      button.disabled = true;
      const answer = await Console.api("POST", `/v1/jobs/${encodeURIComponent(job)}/cancel`);
      button.disabled = false;
      if (out) {
        out.className = answer.ok ? "message" : "message error";
        out.textContent = answer.ok ? `Job ${job} cancelled.` : answer.error;
      }
      // cancelled, or ended meanwhile (409: another operator, or its last round): shown now
      if (answer.ok || answer.status === 409) {
        document.dispatchEvent(new CustomEvent("job-changed", {detail: job}));
      }
    });
  }

  document.addEventListener("DOMContentLoaded", () => {
    live(2);
    cancelButtons();
  });
  return {api, csrf};
})();
