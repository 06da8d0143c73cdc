// A job's page, live: polls the coordinator's API (/v1/jobs/ID and /v1/jobs/ID/rounds) every
// second while the job may change, and redraws the charts (uPlot), the per-site and per-round
// tables and the events, without reloading the page.
"use strict";

(() => {
  const root = document.getElementById("job");
  const jobId = root.dataset.job;
  const totalRounds = Number(root.dataset.rounds) || 0;
  const ACTIVE = ["queued", "running"];
  const PREFERRED = ["accuracy", "loss", "dp_epsilon"];
  const COLORS = ["#0b5cad", "#a40e26", "#116329", "#7d4e00", "#6639ba", "#1b7c83"];
  const charts = new Map(); // name -> {plot, figure}
  let rounds = [];
  let state = root.dataset.state;
  let timer = null;

  const el = (tag, attrs = {}, text) => {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
    if (text !== undefined) node.textContent = text;
    return node;
  };
  const fmt = (v) => typeof v === "number" ? (Math.abs(v) >= 1000 ? v.toFixed(0) : v.toFixed(4)) : "–";
  const kB = (n) => n / 1000;

  // What to chart: every metric the rounds carry (accuracy and loss first), the bytes the
  // server received (updates, up) and sent (models, down), and each round's time.
  function series() {
    const names = new Set();
    for (const r of rounds) for (const k of Object.keys(r.metrics || {})) names.add(k);
    const metrics = [...names].sort((a, b) => {
      const ia = PREFERRED.indexOf(a), ib = PREFERRED.indexOf(b);
      return (ia < 0 ? 99 : ia) - (ib < 0 ? 99 : ib) || a.localeCompare(b);
    }).filter((k) => k !== "dp_delta" && k !== "dp_rounds");
    const out = metrics.map((k) => ({name: k, title: k === "dp_epsilon" ? "ε spent" : k,
      lines: [{label: k, value: (r) => (r.metrics || {})[k] ?? null}]}));
    out.push({name: "bytes", title: "kB per round", lines: [
      {label: "up (updates received)", value: (r) => kB(r.bytes_in || 0)},
      {label: "down (models sent)", value: (r) => kB(r.bytes_out || 0)}]});
    out.push({name: "time", title: "round time (s)",
      lines: [{label: "seconds", value: (r) => r.duration_s ?? null}]});
    return out;
  }

  function chartWidth(figure) {
    return Math.max(260, Math.floor(figure.clientWidth - 16));
  }

  function drawCharts() {
    const holder = document.getElementById("charts");
    const xs = rounds.map((r) => r.round);
    const all = series();
    for (const s of all) {
      const data = [xs, ...s.lines.map((line) => rounds.map(line.value))];
      let chart = charts.get(s.name);
      if (!chart) {
        const figure = el("figure", {"data-chart": s.name, "data-points": "0"});
        figure.append(el("figcaption", {}, s.title));
        holder.append(figure);
        const opts = {
          width: chartWidth(figure), height: 200, legend: {live: false},
          scales: {x: {time: false, range: [1, Math.max(totalRounds, 2)]}},
          axes: [{label: "round", incrs: [1, 2, 5, 10, 20, 50, 100]}, {size: 60}],
          series: [{label: "round"}, ...s.lines.map((line, i) => ({
            label: line.label, stroke: COLORS[i % COLORS.length], width: 2,
            points: {show: true, size: 5}}))],
        };
        chart = {plot: new uPlot(opts, data, figure), figure};
        charts.set(s.name, chart);
      } else {
        chart.plot.setData(data, false);
        chart.plot.redraw();
      }
      chart.figure.dataset.points = String(xs.length);
    }
    // a metric that appears later takes its place in the order (accuracy, loss, ..., bytes)
    for (const s of all) holder.append(charts.get(s.name).figure);
    holder.dataset.points = String(xs.length);
  }

  function drawRounds(job) {
    const sites = Object.fromEntries((job.assignments || []).map((a) => [a.actor, a.site]));
    const body = document.querySelector("#rounds tbody");
    body.replaceChildren(...rounds.slice().reverse().map((r) => {
      const rejected = Object.entries(r.rejected || {}).map(([k, n]) => `${k}: ${n}`).join(", ");
      const failed = (r.failed_clients || []).map((c) => sites[c] ? `${c} (${sites[c]})` : c).join(", ");
      const metrics = Object.entries(r.metrics || {}).map(([k, v]) => `${k} ${fmt(v)}`).join("  ");
      const row = el("tr", {"data-round": r.round});
      row.append(el("th", {scope: "row"}, String(r.round)), el("td", {}, r.status || ""),
        el("td", {class: "num"}, String(r.accepted ?? "")), el("td", {}, rejected || "–"),
        el("td", {}, failed || "–"), el("td", {class: "num"}, String(r.missing_clients ?? 0)),
        el("td", {class: "num"}, `${(r.duration_s || 0).toFixed(2)} s`), el("td", {}, metrics));
      return row;
    }));
  }

  function drawSites(job) {
    const failedIn = {};
    for (const r of rounds) for (const c of r.failed_clients || []) failedIn[c] = (failedIn[c] || 0) + 1;
    const body = document.querySelector("#participation tbody");
    body.replaceChildren(...(job.assignments || []).map((a) => {
      const row = el("tr", {"data-site": a.site});
      row.append(el("th", {scope: "row"}, a.site), el("td", {}, a.actor),
        el("td", {}, a.state), el("td", {class: "num"}, String(failedIn[a.actor] || 0)),
        el("td", {class: "reason"}, a.reason || ""));
      return row;
    }));
  }

  function drawEvents(job) {
    const list = document.getElementById("events");
    list.replaceChildren(...(job.events || []).map((e) => {
      const item = el("li");
      const at = new Date(e.at * 1000);
      item.append(el("time", {datetime: at.toISOString()}, at.toLocaleTimeString()),
        document.createTextNode(e.text));
      return item;
    }));
  }

  function drawState(job) {
    state = job.state;
    root.dataset.state = state;
    const badge = document.getElementById("job-state");
    badge.textContent = state;
    badge.className = `badge ${state}`;
    document.getElementById("job-round").textContent = String(rounds.length ? rounds[rounds.length - 1].round : 0);
    document.getElementById("job-reason").textContent = job.reason || "";
    const cancel = document.getElementById("cancel");
    if (cancel) cancel.hidden = !ACTIVE.includes(state);
    document.getElementById("model").hidden = state !== "finished";
  }

  async function poll() {
    const [job, recs] = await Promise.all([
      Console.api("GET", `/v1/jobs/${encodeURIComponent(jobId)}`),
      Console.api("GET", `/v1/jobs/${encodeURIComponent(jobId)}/rounds`)]);
    if (job.ok && recs.ok) {
      rounds = recs.data.rounds;
      drawState(job.data);
      drawCharts();
      drawRounds(job.data);
      drawSites(job.data);
      drawEvents(job.data);
    }
    // keep polling while the job may change; an unreachable coordinator is retried
    clearTimeout(timer);
    if (!job.ok || ACTIVE.includes(state)) timer = setTimeout(poll, 1000);
  }

  window.addEventListener("resize", () => {
    for (const {plot, figure} of charts.values()) plot.setSize({width: chartWidth(figure), height: 200});
  });
  document.addEventListener("job-changed", () => poll());
  document.addEventListener("DOMContentLoaded", poll);
})();
