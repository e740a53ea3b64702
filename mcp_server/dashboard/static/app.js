// trainguard's dashboard page: polls the JSON views and draws its own charts on canvases.
// Every text that comes from a run (names, notes, logs) goes in with textContent, never as HTML.
"use strict";

const TOKEN = new URLSearchParams(location.search).get("token") || "";
const COLORS = ["#1f6feb", "#d97706", "#16a34a", "#9333ea", "#dc2626", "#0891b2", "#4b5563", "#db2777"];
let timer = null;

async function api(path, options = {}) {
  const response = await fetch(path, {
    ...options,
    headers: { "X-Trainguard-Token": TOKEN, ...(options.headers || {}) },
    cache: "no-store",
  });
  const data = await response.json();
  if (!response.ok) throw new Error(data.error || response.statusText);
  return data;
}

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "class") node.className = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value);
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function fmt(value) {
  if (value === null || value === undefined) return "";
  if (typeof value === "number") return Math.abs(value) >= 1e4 || (value !== 0 && Math.abs(value) < 1e-3) ? value.toExponential(3) : String(+value.toPrecision(4));
  return String(value);
}

function elapsed(seconds) {
  if (seconds === null || seconds === undefined) return "";
  const s = Math.round(seconds);
  return s >= 3600 ? `${Math.floor(s / 3600)}h${String(Math.floor((s % 3600) / 60)).padStart(2, "0")}` : s >= 60 ? `${Math.floor(s / 60)}m${String(s % 60).padStart(2, "0")}` : `${s}s`;
}

// One page polls at a time; a hidden tab polls nothing; a poll still under way is not doubled.
function every(ms, fn) {
  clearInterval(timer);
  let busy = false;
  const tick = async () => {
    if (busy || document.hidden) return;
    busy = true;
    try { await fn(); } catch (error) { showError(error); } finally { busy = false; }
  };
  tick();
  timer = setInterval(tick, ms);
}

function showError(error) {
  const bar = document.getElementById("error");
  bar.textContent = error ? `The dashboard could not update: ${error.message}` : "";
  bar.hidden = !error;
}

// The server's clock, as the page last heard it: elapsed times count on between polls.
let skew = 0;
function serverNow() { return Date.now() / 1000 + skew; }
function heard(data) { if (data.at) skew = data.at - Date.now() / 1000; showError(null); }
function elapsedOf(r) { return r.started_at ? (r.finished_at || serverNow()) - r.started_at : null; }

// ---------------------------------------------------------------------------- charts

function drawChart(canvas, series, { log = false, title = "" } = {}) {
  const ratio = window.devicePixelRatio || 1;
  const width = canvas.clientWidth || 460, height = canvas.clientHeight || 220;
  canvas.width = width * ratio; canvas.height = height * ratio;
  const ctx = canvas.getContext("2d");
  ctx.scale(ratio, ratio);
  ctx.clearRect(0, 0, width, height);
  const pad = { l: 56, r: 10, t: 8, b: 22 };
  const ys = v => (log ? Math.log10(v) : v);
  let xmin = Infinity, xmax = -Infinity, ymin = Infinity, ymax = -Infinity, drawn = 0;
  for (const s of series) {
    for (let i = 0; i < s.x.length; i++) {
      const y = s.y[i];
      if (y === null || (log && y <= 0)) continue;
      xmin = Math.min(xmin, s.x[i]); xmax = Math.max(xmax, s.x[i]);
      ymin = Math.min(ymin, ys(y)); ymax = Math.max(ymax, ys(y));
    }
  }
  if (!isFinite(xmin)) { ctx.fillStyle = "#6b7280"; ctx.fillText("no points yet", pad.l, height / 2); canvas.dataset.points = "0"; return; }
  if (xmax === xmin) xmax = xmin + 1;
  if (ymax === ymin) { ymax += 0.5; ymin -= 0.5; }
  const X = x => pad.l + ((x - xmin) / (xmax - xmin)) * (width - pad.l - pad.r);
  const Y = y => height - pad.b - ((ys(y) - ymin) / (ymax - ymin)) * (height - pad.t - pad.b);
  ctx.strokeStyle = "#e3e6eb"; ctx.fillStyle = "#6b7280"; ctx.font = "11px system-ui";
  for (let i = 0; i <= 4; i++) {
    const v = ymin + ((ymax - ymin) * i) / 4, py = height - pad.b - ((height - pad.t - pad.b) * i) / 4;
    ctx.beginPath(); ctx.moveTo(pad.l, py); ctx.lineTo(width - pad.r, py); ctx.stroke();
    ctx.fillText(fmt(log ? 10 ** v : v), 4, py + 4);
  }
  ctx.fillText(fmt(xmin), pad.l, height - 6);
  ctx.fillText(fmt(xmax), width - pad.r - 40, height - 6);
  series.forEach((s, k) => {
    ctx.strokeStyle = COLORS[k % COLORS.length]; ctx.lineWidth = 1.2; ctx.beginPath();
    let pen = false;
    for (let i = 0; i < s.x.length; i++) {
      const y = s.y[i];
      if (y === null || (log && y <= 0)) { pen = false; continue; }
      const px = X(s.x[i]), py = Y(y);
      if (pen) ctx.lineTo(px, py); else ctx.moveTo(px, py);
      pen = true; drawn++;
    }
    ctx.stroke();
    if (s.nonfinite_at !== null && s.nonfinite_at !== undefined) {
      const px = X(Math.min(Math.max(s.nonfinite_at, xmin), xmax));
      ctx.strokeStyle = "#dc2626"; ctx.setLineDash([4, 3]); ctx.beginPath();
      ctx.moveTo(px, pad.t); ctx.lineTo(px, height - pad.b); ctx.stroke(); ctx.setLineDash([]);
      ctx.fillStyle = "#dc2626"; ctx.fillText(`${s.name} non-finite from ${fmt(s.nonfinite_at)}`, Math.min(px + 3, width - 160), pad.t + 10);
    }
  });
  canvas.dataset.points = String(drawn);
  canvas.dataset.title = title;
}

function panelBox(panel) {
  const canvas = el("canvas", { "data-panel": panel.panel });
  const legend = el("div", { class: "legend" }, ...panel.series.map((s, k) =>
    el("span", { class: `c${k % COLORS.length}` }, `${s.name} (${s.count.toLocaleString()} points, last ${fmt(s.last)})`)));
  const box = el("div", { class: "panel" }, el("h3", {}, panel.panel + (panel.log ? " (log scale)" : "")), canvas, legend);
  requestAnimationFrame(() => drawChart(canvas, panel.series, { log: panel.log, title: panel.panel }));
  return box;
}

// ---------------------------------------------------------------------------- pages

function runsPage(query) {
  const main = document.getElementById("main");
  const keys = ["experiment", "status", "sweep"];
  const inputs = keys.map(key => el("input", { placeholder: key, value: query.get(key) || "", id: `filter-${key}` }));
  const selected = new Set();
  const table = el("table", { id: "runs" });
  const count = el("p", { class: "muted", id: "runs-count" });
  const apply = () => { const q = new URLSearchParams(); inputs.forEach((i, n) => i.value && q.set(keys[n], i.value)); location.hash = `#/?${q}`; };
  inputs.forEach(i => i.addEventListener("keydown", e => { if (e.key === "Enter") apply(); }));
  main.replaceChildren(el("h2", {}, "Runs"), el("div", { class: "filters" }, ...inputs, el("button", { onclick: apply }, "Filter"),
    el("button", { id: "compare", onclick: () => { location.hash = `#/compare?runs=${[...selected].map(encodeURIComponent).join(",")}`; } }, "Compare selected")), count, table);
  const params = new URLSearchParams(keys.map(k => [k, query.get(k) || ""]).filter(([, v]) => v));
  let version = null, rows = [];
  const clocks = [];
  every(3000, async () => {
    if (version) params.set("since", version);
    const data = await api(`api/runs?${params}`);
    heard(data);
    if (!data.unchanged) {
      version = data.version; rows = data.runs;
      clocks.length = 0;
      const head = el("tr", {}, ...["", "run", "experiment", "status", "backend", "sweep", "headline", "findings", "elapsed"].map(h => el("th", {}, h)));
      table.replaceChildren(head, ...rows.map(r => {
        const clock = el("td", { class: "elapsed" }, elapsed(elapsedOf(r)));
        clocks.push([clock, r]);
        return el("tr", { "data-run": r.run_id, "data-status": r.status },
          el("td", {}, el("input", { type: "checkbox", ...(selected.has(r.run_id) ? { checked: "" } : {}), onchange: e => { e.target.checked ? selected.add(r.run_id) : selected.delete(r.run_id); } })),
          el("td", {}, el("a", { href: `#/run/${encodeURIComponent(r.run_id)}` }, r.run_id)),
          el("td", {}, r.experiment || ""),
          el("td", { class: `status-${r.status}` }, r.status + (r.queue_position ? ` (#${r.queue_position} in the queue)` : "")),
          el("td", {}, r.backend || ""),
          el("td", {}, r.sweep_id ? `${r.sweep_id} #${r.trial}` : ""),
          el("td", {}, r.headline || r.error || ""),
          el("td", {}, r.findings ? String(r.findings) : ""),
          clock);
      }));
      table.dataset.shown = String(data.shown);
      count.textContent = data.matched > data.shown ? `the newest ${data.shown} of ${data.matched} runs that match (${data.total} in all)` : `${data.shown} of ${data.total} runs`;
    }
    for (const [clock, r] of clocks) clock.textContent = elapsed(elapsedOf(r));
  });
}

function runPage(runId) {
  const main = document.getElementById("main");
  const header = el("div", { id: "run-header" });
  const panels = el("div", { class: "panels", id: "panels" });
  const ppo = el("div", { id: "ppo-panel" });
  const details = el("div", { id: "details" });
  const ppoBox = el("div", { id: "ppo-box", hidden: "" }, el("h3", {}, "Seed 004's panel, per mode: episode rewards and lengths, policy and value loss, entropy, actions"), ppo);
  main.replaceChildren(header, ppoBox, el("h3", {}, "Curves"), panels, details);
  let version = null, view = null;
  every(2000, async () => {
    const data = await api(`api/runs/${encodeURIComponent(runId)}${version ? `?since=${encodeURIComponent(version)}` : ""}`);
    heard(data);
    if (!data.unchanged) {
      version = data.version; view = data;
      renderDetails(details, view);
      const curves = view.curves;
      panels.replaceChildren(...curves.panels.map(panelBox));
      if (curves.series_shown < curves.series_total) panels.append(el("p", { class: "muted" }, `${curves.series_shown} of ${curves.series_total} series drawn`));
      ppo.replaceChildren(...curves.ppo.map(mode => el("div", { class: "ppo-mode", "data-mode": mode.mode }, el("h4", {}, mode.mode),
        el("div", { class: "panels" }, ...mode.charts.map(chart => panelBox({ panel: chart.title, log: false, series: chart.series }))))));
      ppoBox.hidden = curves.ppo.length === 0;
      panels.dataset.points = String(curves.points);
    }
    renderHeader(header, view);
  });
}

function renderHeader(header, view) {
  const r = view.run;
  const epoch = view.curves.epoch ?? r.epoch;
  const buttons = [];
  if (view.can_stop) buttons.push(el("button", { class: "danger", id: "stop", onclick: () => act(r.run_id, "stop") }, "Stop training"));
  if (view.can_resume) buttons.push(el("button", { id: "resume", onclick: () => act(r.run_id, "resume") }, "Resume"));
  header.replaceChildren(
    el("h2", {}, `${r.run_id} `, el("span", { class: `status-${r.status}`, id: "run-status" }, r.status + (r.queue_position ? ` (#${r.queue_position} in the queue)` : ""))),
    el("div", {}, view.title),
    el("div", { class: "muted", id: "headline" }, view.headline ? `${view.headline} (as of ${new Date(view.details_at * 1000).toLocaleTimeString()})` : ""),
    el("div", {}, epoch ? `epoch ${epoch}${r.epochs ? ` of ${r.epochs}` : ""} · ` : "", `elapsed ${elapsed(elapsedOf(r))}`, ` · ${r.backend}`, r.stopped_because ? ` · ${r.stopped_because}` : ""),
    el("div", {}, ...buttons));
}

function renderDetails(details, view) {
  const parts = [];
  if (view.diagnosis) {
    const d = view.diagnosis;
    parts.push(el("div", { class: "box", id: "diagnosis" }, el("h3", {}, `Diagnosis: ${d.failure_class}`), el("p", {}, d.summary),
      el("pre", {}, d.evidence.map(e => `${e.source}: ${e.text}`).join("\n")), el("ul", {}, ...d.remedies.map(x => el("li", {}, x)))));
  }
  if (view.findings.length) {
    parts.push(el("div", { class: "box", id: "findings" }, el("h3", {}, "Findings"), el("ul", {}, ...view.findings.map(f =>
      el("li", { class: `finding-${f.severity}` }, `${f.rule} (${f.metric}${f.step !== null && f.step !== undefined ? ` at step ${fmt(f.step)}` : ""}): ${f.evidence}`, f.remedy ? el("div", { class: "muted" }, `Remedy: ${f.remedy}`) : null)))));
  }
  if (view.events.length) {
    parts.push(el("div", { class: "box", id: "events" }, el("h3", {}, "Watchdog"), el("ul", {}, ...view.events.map(e => el("li", {}, `${new Date(e.t * 1000).toLocaleTimeString()} ${e.kind} (${e.action}): ${e.detail}`)))));
  }
  const pre = view.preflight || {};
  parts.push(el("div", { class: "box", id: "preflight" }, el("h3", {}, `Pre-flight: ${pre.verdict || "?"}`), el("ul", {}, ...(pre.warnings || []).map(w => el("li", {}, w)))));
  parts.push(el("div", { class: "box" }, el("h3", {}, "Overrides"), el("pre", {}, JSON.stringify(view.overrides, null, 1))));
  details.replaceChildren(...parts);
}

async function act(runId, what) {
  if (what === "stop" && !window.confirm(`Stop run ${runId}? It saves a checkpoint and stops.`)) return;
  try {
    const result = await api(`api/runs/${encodeURIComponent(runId)}/${what}`, { method: "POST" });
    if (what === "resume" && result.run_id) location.hash = `#/run/${encodeURIComponent(result.run_id)}`;
  } catch (error) {
    window.alert(`${what} failed: ${error.message}`);
  }
}

function gpusPage() {
  const main = document.getElementById("main");
  const body = el("div", { id: "gpus" });
  main.replaceChildren(el("h2", {}, "GPUs"), body);
  let history = [];
  every(2000, async () => {
    const last = history.length ? history[history.length - 1].t : null;
    const data = await api(`api/gpus${last ? `?since=${last}` : ""}`);
    heard(data);
    history = history.concat(data.history).filter(s => s.t > serverNow() - 600);
    const hist = history;
    const boxes = data.devices.map(d => {
      const metric = key => ({ name: key, x: hist.map(s => s.t - hist[hist.length - 1].t), y: hist.map(s => (s.devices.find(x => x.index === d.index) || {})[key] ?? null), nonfinite_at: null });
      const box = el("div", { class: "panel", "data-gpu": String(d.index) }, el("h3", {}, `GPU ${d.index} ${d.name || ""}`));
      for (const key of ["memory_used_gib", "utilization_percent", "temperature_c", "power_w"]) {
        const canvas = el("canvas", { "data-metric": key });
        box.append(el("div", { class: "muted" }, key), canvas);
        requestAnimationFrame(() => drawChart(canvas, [metric(key)]));
      }
      box.append(el("ul", {}, ...d.processes.map(p => el("li", {}, `pid ${p.pid} ${p.run_id ? `run ${p.run_id}` : p.command || ""} ${fmt(p.memory_gib)} GiB`))));
      return box;
    });
    const host = data.host;
    body.replaceChildren(el("p", {}, data.note), el("p", {}, `Host: ${host.cpu_count} CPUs at ${fmt(host.cpu_percent)}%, RAM ${fmt(host.ram_used_bytes / 2 ** 30)} / ${fmt(host.ram_total_bytes / 2 ** 30)} GiB; the last ${elapsed(hist.length ? hist[hist.length - 1].t - hist[0].t : 0)}`), el("div", { class: "panels" }, ...boxes));
  });
}

function comparePage(query) {
  const main = document.getElementById("main");
  const ids = (query.get("runs") || "").split(",").filter(Boolean);
  main.replaceChildren(el("h2", {}, `Compare ${ids.length} runs`), el("p", {}, "Loading..."));
  clearInterval(timer);
  api(`api/compare?runs=${ids.map(encodeURIComponent).join(",")}`).then(data => {
    const table = data.table;
    const series = data.curves.map(c => ({ ...c, name: c.run_id }));
    const canvas = el("canvas", { id: "compare-chart" });
    const differ = [...new Set(table.rows.flatMap(r => Object.keys(r.differs || {})))];
    const rows = table.rows.map(r => el("tr", { "data-run": r.run_id }, el("td", {}, r.run_id), el("td", {}, fmt(r.best)), ...differ.map(k => el("td", {}, fmt((r.differs || {})[k])))));
    main.replaceChildren(el("h2", {}, `Compare on ${table.metric} (${table.direction === "max" ? "higher" : "lower"} is better)`), el("div", { class: "panel" }, canvas,
      el("div", { class: "legend" }, ...series.map((s, k) => el("span", { class: `c${k % COLORS.length}` }, s.name)))),
      el("table", { id: "compare-table" }, el("tr", {}, el("th", {}, "run"), el("th", {}, "best"), ...differ.map(k => el("th", {}, k))), ...rows),
      el("p", { class: "muted" }, table.note));
    requestAnimationFrame(() => drawChart(canvas, series));
  }).catch(error => main.replaceChildren(el("p", {}, `compare failed: ${error.message}`)));
}

function route() {
  const [path, qs] = (location.hash.slice(1) || "/").split("?");
  const query = new URLSearchParams(qs || "");
  if (path.startsWith("/run/")) runPage(decodeURIComponent(path.slice(5)));
  else if (path === "/gpus") gpusPage();
  else if (path === "/compare") comparePage(query);
  else runsPage(query);
}

window.addEventListener("hashchange", route);
setInterval(() => { document.getElementById("clock").textContent = new Date().toLocaleTimeString(); }, 1000);
route();
