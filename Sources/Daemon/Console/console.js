// Ferry's web console: a thin page over the daemon's JSON API (/api/v1, the same calls as the
// CLI). Every element is built with textContent, never from HTML text: names from the catalog
// are data. The session is a cookie the script cannot read (HttpOnly); the CSRF token for POSTs
// comes from GET /ui/session. See Sources/Daemon/HTTP/Console.swift.
"use strict";

const STATES = ["no_status", "scheduled", "queued", "running", "success", "failed", "up_for_retry",
  "up_for_reschedule", "upstream_failed", "skipped", "deferred"];
const PAGE = 100;  // jobs per page
const ENTRIES = 1000;  // directory entries per page (keyset paging: a 1,000,000-entry directory is never read whole)

const app = { lang: "en", words: {}, session: null, view: "overview", jobsAfter: [], entries: null, timer: null };

function $(id) { return document.getElementById(id); }

function t(key, vars) {
  let s = app.words[key];
  if (s === undefined) s = key;
  for (const [k, v] of Object.entries(vars || {})) s = s.split("{" + k + "}").join(String(v));
  return s;
}

function el(tag, text, attrs) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = String(text);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  return e;
}

function row(cells) {
  const tr = document.createElement("tr");
  for (const c of cells) {
    if (c instanceof Node) { const td = document.createElement("td"); td.appendChild(c); tr.appendChild(td); }
    else if (c && typeof c === "object") tr.appendChild(el("td", c.text, c.attrs));
    else tr.appendChild(el("td", c));
  }
  return tr;
}

// A row of the entries' grid (#entries: roles row and cell, see index.html).
function gridRow(cells) {
  const r = document.createElement("div");
  r.setAttribute("role", "row");
  r.className = "erow";
  for (const c of cells) {
    if (c instanceof Node) { const d = document.createElement("div"); d.setAttribute("role", "cell"); d.appendChild(c); r.appendChild(d); }
    else if (c && typeof c === "object") { const d = el("div", c.text, c.attrs); d.setAttribute("role", "cell"); r.appendChild(d); }
    else r.appendChild(el("div", c, { role: "cell" }));
  }
  return r;
}

function fillEntries(rows) { $("entries-body").replaceChildren(...rows); }

function fill(tableId, rows) {
  const body = $(tableId).tBodies[0];
  body.replaceChildren(...rows);
}

function bytes(n) {
  const units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
  let v = Number(n) || 0, i = 0;
  while (v >= 1024 && i < units.length - 1) { v /= 1024; i++; }
  return (i === 0 ? v.toFixed(0) : v.toFixed(1)) + " " + units[i];
}

// One formatter per language (toLocaleString made one per call: a page of 1,000 entries spent
// most of its rendering there).
const formats = new Map();
function when(unix) {
  if (!unix) return "–";
  if (!formats.has(app.lang)) formats.set(app.lang, new Intl.DateTimeFormat(app.lang, { dateStyle: "short", timeStyle: "medium" }));
  return formats.get(app.lang).format(new Date(unix * 1000));
}

function stateName(s) { return t("state." + s); }

function say(text) { $("status").textContent = text || ""; }
function fail(text) { $("error").textContent = text || ""; }

async function api(method, path, body) {
  const headers = { "Accept": "application/json" };
  if (method !== "GET") {
    headers["Content-Type"] = "application/json";
    if (app.session) headers["X-Ferry-CSRF"] = app.session.csrf;
  }
  const r = await fetch(path, { method, headers, credentials: "same-origin", body: body === undefined ? undefined : JSON.stringify(body) });
  let data = null;
  if (r.status !== 204) { try { data = await r.json(); } catch (e) { data = null; } }
  if (r.status === 401 && path !== "/ui/session") { app.session = null; show("signin"); }
  if (!r.ok) {
    const why = data && (data.detail || data.error) ? (data.detail || data.error) : "HTTP " + r.status;
    const err = new Error(why);
    err.status = r.status;
    throw err;
  }
  return data;
}

// MARK: language

async function setLanguage(lang) {
  const r = await fetch("/ui/i18n/" + lang, { credentials: "same-origin" });
  app.words = await r.json();
  app.lang = lang;
  document.documentElement.lang = lang;
  $("lang").value = lang;
  try { localStorage.setItem("ferry.lang", lang); } catch (e) { /* private mode */ }
  for (const e of document.querySelectorAll("[data-i18n]")) e.textContent = t(e.dataset.i18n);
  document.title = t("title");
  fillStateFilter();
  if (app.session) { renderWho(); refresh(); }
}

function chosenLanguage() {
  try { const saved = localStorage.getItem("ferry.lang"); if (saved === "en" || saved === "zh-CN") return saved; } catch (e) { /* none */ }
  for (const l of navigator.languages || [navigator.language || "en"]) {
    if (l.toLowerCase().startsWith("zh")) return "zh-CN";
    if (l.toLowerCase().startsWith("en")) return "en";
  }
  return "en";
}

// MARK: session

function renderWho() {
  const s = app.session;
  $("whoami").textContent = s ? t("signedin", { user: s.user }) + (s.operator ? " (" + t("operator") + ")" : "") : "";
  $("center").textContent = s ? t("center", { center: s.center }) : "";
}

async function signIn(ev) {
  ev.preventDefault();
  fail("");
  let token = $("token").value.trim();
  const file = $("token-file").files[0];
  if (!token && file) token = (await file.text()).trim();
  if (!token) { fail(t("signin.empty")); return; }
  try {
    app.session = await api("POST", "/ui/session", { token });
    $("token").value = "";
    $("token-file").value = "";
    started();
  } catch (e) {
    fail(t("signin.refused", { why: e.message }));
  }
}

async function signOut() {
  try { await api("POST", "/ui/session/end"); } catch (e) { /* ended anyway */ }
  app.session = null;
  renderWho();
  show("signin");
}

function started() {
  renderWho();
  $("nav").hidden = false;
  $("nav-staging").hidden = !app.session.operator;
  $("signout").hidden = false;
  show(location.hash.replace("#", "") || "overview");
}

// MARK: views

function show(view) {
  if (!app.session) view = "signin";
  const views = ["signin", "overview", "files", "jobs", "staging"];
  if (!views.includes(view) || (view === "staging" && !(app.session && app.session.operator))) view = "overview";
  app.view = view;
  for (const v of views) $("view-" + v).hidden = v !== view;
  for (const b of document.querySelectorAll("#nav button")) {
    if (b.dataset.view === view) b.setAttribute("aria-current", "page"); else b.removeAttribute("aria-current");
  }
  if (view === "signin") { $("nav").hidden = true; $("signout").hidden = true; }
  else if (location.hash !== "#" + view) history.pushState(null, "", "#" + view);
  clearInterval(app.timer);
  app.timer = null;
  follow([]);
  say("");
  fail("");
  if (view === "jobs") { app.jobsAfter = []; app.timer = setInterval(() => loadJobs(true).catch(() => {}), 5000); }
  refresh();
}

function refresh() {
  if (app.view === "overview") loadOverview().catch(e => fail(e.message));
  if (app.view === "files") (app.entries ? loadEntries(app.entries.path, app.entries.after) : loadDatasets()).catch(e => fail(e.message));
  if (app.view === "jobs") loadJobs(false).catch(e => fail(e.message));
  if (app.view === "staging") loadStaging().catch(e => fail(e.message));
}

// Staging (operators): the cache's use against its quota, each entry with the scheduler jobs
// that pin it, and for one still staging, its transfer's state and error (why they wait).
async function loadStaging() {
  const c = await api("GET", "/api/v1/stage/cache");
  const staged = (c.entries || []).reduce((n, e) => n + (e.state === "ready" ? e.bytes : 0), 0);
  const pct = c.quota > 0 ? Math.round(100 * c.ready_bytes / c.quota) : 0;
  $("staging-use").textContent = t("staging.use", { used: bytes(c.ready_bytes), quota: bytes(c.quota), pct, root: c.root });
  drawBars($("staging-chart"), [[t("staging.ready"), c.ready_bytes], [t("staging.quota"), c.quota]], bytes, t("staging.title"));
  const waiting = (c.entries || []).filter(e => e.state === "staging" && e.job);
  const jobs = {};
  await Promise.all(waiting.slice(0, 50).map(async e => {
    try { jobs[e.job] = await api("GET", "/api/v1/transfers/" + e.job); } catch (x) { /* gone */ }
  }));
  fill("staging", (c.entries || []).map(e => {
    const j = e.job ? jobs[e.job] : null;
    const transfer = e.job ? "#" + e.job + (j ? " " + jobState(j) + (j.error ? ": " + j.error : "") : "") : "";
    return row([{ text: e.id, attrs: { class: "num" } }, { text: e.source, attrs: { class: "path" } }, t("staging.state." + e.state) + (e.error ? ": " + e.error : ""),
      { text: e.state === "ready" ? bytes(e.bytes) : "", attrs: { class: "num" } }, (e.pins || []).join(", "), transfer, when(e.last_used)]);
  }));
  const evictions = c.evictions || [];
  fill("staging-evictions", evictions.map(v => row([when(v.at), { text: v.source, attrs: { class: "path" } }, { text: bytes(v.bytes), attrs: { class: "num" } },
    when(v.last_used), v.reason])));
  $("staging-evictions").hidden = evictions.length === 0;
  $("staging-evictions-none").hidden = evictions.length > 0;
  say(t("staging.count", { n: (c.entries || []).length, staged: bytes(staged) }));
}

// Overview: jobs by state (a bar chart drawn here, each bar labelled with its state and
// count, so colour says nothing the text does not), peers, centers.
async function loadOverview() {
  const [health, centers, stats] = await Promise.all([api("GET", "/api/v1/health"), api("GET", "/api/v1/catalog/centers"), api("GET", "/api/v1/stats?days=14")]);
  const peerName = p => p === "" ? t("local") : p;
  // Per day: a bar per day (all peers), and a row per day and peer.
  const perDay = new Map();
  for (const d of stats.days) perDay.set(d.start, (perDay.get(d.start) || 0) + d.bytes);
  const day = unix => new Date(unix * 1000).toISOString().slice(0, 10);
  drawBars($("overview-days-chart"), [...perDay.entries()].map(([s, b]) => [day(s), b]), bytes, t("overview.days"));
  fill("overview-days", stats.days.map(d => row([day(d.start), peerName(d.peer), { text: bytes(d.bytes), attrs: { class: "num" } }, { text: d.jobs, attrs: { class: "num" } }])));
  // The last hour per peer, as the runner measured it while jobs ran: a line of its rate in
  // each span (a minute), the last span's rate and the hour's average.
  const span = stats.span_seconds;
  const now = Math.floor(Date.now() / 1000);
  const first = Math.floor((now - 3600) / span) * span;
  const points = Math.floor(3600 / span) + 1;
  const hourly = new Map();
  for (const m of stats.last_hour) {
    if (!hourly.has(m.peer)) hourly.set(m.peer, new Array(points).fill(0));
    const i = Math.round((m.start - first) / span);
    if (i >= 0 && i < points) hourly.get(m.peer)[i] += m.bytes / span;
  }
  fill("overview-hour", [...hourly.entries()].sort().map(([p, rates]) => {
    const hour = rates.reduce((a, b) => a + b, 0) * span / 3600;
    return row([peerName(p), spark(rates, t("overview.hourof", { peer: peerName(p) })), { text: bytes(rates[rates.length - 1]) + "/s", attrs: { class: "num" } },
      { text: bytes(hour) + "/s", attrs: { class: "num" } }]);
  }));
  if (!hourly.size) fill("overview-hour", [row([{ text: t("overview.hourempty"), attrs: { colspan: 4 } }])]);

  // The staging cache: totals only (its entries are the operators' Staging view).
  const u = stats.staging;
  if (u) {
    const pct = u.quota > 0 ? Math.round(100 * u.ready_bytes / u.quota) : 0;
    $("overview-staging").textContent = t("overview.staginguse", { used: bytes(u.ready_bytes), quota: bytes(u.quota), pct, entries: u.entries, pinned: u.pinned,
      evicted: u.evicted_day });
    drawBars($("overview-staging-chart"), [[t("staging.ready"), u.ready_bytes], [t("staging.quota"), u.quota]], bytes, t("overview.staging"));
  } else {
    $("overview-staging").textContent = t("overview.nostaging");
    $("overview-staging-chart").replaceChildren();
  }
  const counts = health.jobs || {};
  fill("overview-states", STATES.map(s => row([stateName(s), { text: counts[s] || 0, attrs: { class: "num" } }])));
  drawBars($("overview-chart"), STATES.map(s => [stateName(s), counts[s] || 0]));
  const peers = Object.entries(health.peers || {}).sort();
  $("peer-names").replaceChildren(...peers.map(([name]) => el("option", null, { value: name })));
  // The link tuner's figures: its rate is that of the last transfer big enough to tune by
  // (none yet: "–"); what moves now is the measured line above.
  fill("overview-peers", peers.map(([name, p]) => row([name, p.rate_bytes_per_second > 0 ? bytes(p.rate_bytes_per_second) + "/s" : "–", { text: p.streams, attrs: { class: "num" } },
    { text: p.active, attrs: { class: "num" } }, { text: p.errors, attrs: { class: "num" } }])));
  fill("overview-centers", (centers.centers || []).map(c => row([c.name, c.name === centers.center ? t("here") : (c.reachable ? t("yes") : t("no")), when(c.last_sync)])));
}

// A line of the values (rates), drawn in the page; its label says what it is, and the cells
// beside it give the figures.
function spark(values, label) {
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  const w = 160, h = 28, max = Math.max(1, ...values);
  svg.setAttribute("viewBox", "0 0 " + w + " " + h);
  svg.setAttribute("width", w); svg.setAttribute("height", h);
  svg.setAttribute("role", "img");
  svg.setAttribute("aria-label", label);
  const line = document.createElementNS(ns, "polyline");
  line.setAttribute("points", values.map((v, i) => (i * w / (values.length - 1)).toFixed(1) + "," + (h - 2 - (h - 4) * v / max).toFixed(1)).join(" "));
  line.setAttribute("fill", "none");
  line.setAttribute("stroke", "#0b4fa8");
  line.setAttribute("stroke-width", "2");
  svg.appendChild(line);
  return svg;
}

function drawBars(box, pairs, format, title) {
  const ns = "http://www.w3.org/2000/svg";
  const max = Math.max(1, ...pairs.map(p => p[1]));
  const h = 18, w = 560, label = 170;
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("viewBox", "0 0 " + w + " " + (pairs.length * h + 4));
  svg.setAttribute("role", "img");
  svg.setAttribute("aria-label", title || t("overview.jobs"));
  pairs.forEach(([name, n], i) => {
    const text = document.createElementNS(ns, "text");
    text.setAttribute("x", 0); text.setAttribute("y", i * h + 13);
    text.textContent = name;
    const bar = document.createElementNS(ns, "rect");
    bar.setAttribute("x", label); bar.setAttribute("y", i * h + 3);
    bar.setAttribute("height", h - 6); bar.setAttribute("width", Math.max(n ? 2 : 0, (w - label - 100) * n / max));
    const count = document.createElementNS(ns, "text");
    count.setAttribute("x", label + (w - label - 100) * n / max + 6); count.setAttribute("y", i * h + 13);
    count.textContent = format ? format(n) : String(n);
    svg.append(text, bar, count);
  });
  box.replaceChildren(svg);
}

// Global Files: datasets, then a directory a page at a time (keyset paging: `next_after`).
async function loadDatasets() {
  app.entries = null;
  $("entries").hidden = true;
  $("entries-more").hidden = true;
  $("details").hidden = true;
  $("find").hidden = true;
  $("datasets").hidden = false;
  crumbs(null);
  const list = await api("GET", "/api/v1/catalog/datasets");
  fill("datasets", (list.datasets || []).map(v => {
    const d = v;  // a dataset's fields and `stale`, side by side
    const name = d.version ? d.name + "@" + d.version : d.name;
    const open = el("button", name, { type: "button" });
    open.addEventListener("click", () => loadEntries("gfs://" + d.center + "/" + name, null).catch(e => fail(e.message)));
    return row([open, d.center + (v.stale ? " (" + t("stale") + ")" : ""), d.owner, { text: d.file_count, attrs: { class: "num" } },
      { text: bytes(d.bytes), attrs: { class: "num" } }, when(d.updated)]);
  }));
}

function crumbs(path) {
  const nav = $("files-crumbs");
  const top = el("button", t("files.datasets"), { type: "button" });
  top.addEventListener("click", () => loadDatasets().catch(e => fail(e.message)));
  const parts = [top];
  if (path) {
    const rest = path.slice("gfs://".length).split("/");
    let acc = "gfs:/";
    rest.forEach((p, i) => {
      acc += "/" + p;
      const target = acc;
      const b = el("button", p, { type: "button" });
      if (i === rest.length - 1) b.setAttribute("aria-current", "location");
      if (i >= 1) b.addEventListener("click", () => loadEntries(target, null).catch(e => fail(e.message)));
      else b.disabled = true;
      parts.push(b);
    });
  }
  nav.replaceChildren(...parts);
}

async function loadEntries(path, after) {
  const q = "path=" + encodeURIComponent(path) + "&limit=" + ENTRIES + (after ? "&after=" + encodeURIComponent(after) : "");
  const page = await api("GET", "/api/v1/catalog/ls?" + q);
  app.entries = { path, after, next: page.more ? page.next_after : null };
  $("datasets").hidden = true;
  $("details").hidden = true;
  $("entries").hidden = false;
  $("find").hidden = false;
  crumbs(path);
  $("entries-caption").textContent = path + (page.stale ? " (" + t("stale") + ")" : "");
  // Each name a link (a button each cost the page of 1,000 a third more style and layout); one
  // listener on the table opens what was clicked (entriesClicked).
  fillEntries((page.entries || []).map(e => {
    const name = el("a", e.name, { href: "#files", class: "entry", "data-path": path + "/" + e.name, "data-kind": e.kind });
    return gridRow([name, t("kind." + e.kind), { text: e.kind === "d" ? "" : bytes(e.size), attrs: { class: "num" } }, when(Math.floor(e.mtime_ns / 1e9))]);
  }));
  $("entries-more").hidden = !page.more;
  say(t("files.page", { n: (page.entries || []).length }) + (page.more ? " " + t("files.more") : ""));
}

// "10M" and the like as bytes (K, M, G, T: powers of 1,024, as the CLI reads them); null when
// it is not a size.
function sizeOf(text) {
  const m = /^(\d+(?:\.\d+)?)\s*([KMGT]?)(i?B)?$/i.exec(text);
  if (!m) return null;
  return Math.round(Number(m[1]) * Math.pow(1024, " KMGT".indexOf((m[2] || " ").toUpperCase())));
}

function entriesClicked(ev) {
  const b = ev.target.closest("a.entry");
  if (!b) return;
  ev.preventDefault();
  (b.dataset.kind === "d" ? loadEntries(b.dataset.path, null) : loadDetails(b.dataset.path)).catch(x => fail(x.message));
}

async function findEntries(ev) {
  ev.preventDefault();
  if (!app.entries) return;
  const name = $("find-name").value.trim();
  let q = "path=" + encodeURIComponent(app.entries.path) + "&limit=" + ENTRIES + (name ? "&name=" + encodeURIComponent(name) : "");
  for (const [id, key] of [["find-min", "min_size"], ["find-max", "max_size"]]) {
    const text = $(id).value.trim();
    if (!text) continue;
    const n = sizeOf(text);
    if (n === null) { fail(t("find.badsize", { text })); return; }
    q += "&" + key + "=" + n;
  }
  if ($("find-newer").value) q += "&newer=" + Math.floor(Date.parse($("find-newer").value + "T00:00:00Z") / 1000);
  fail("");
  // The daemon bounds each search request (a page may come back short, or empty, with
  // more): ask on until a page's worth is found or the search ends, at most 50 requests.
  let page = { entries: [], more: true, next_after: null };
  const found = [];
  for (let k = 0; k < 50 && page.more && found.length < ENTRIES; k++) {
    page = await api("GET", "/api/v1/catalog/find?" + q.replace("&limit=" + ENTRIES, "&limit=" + (ENTRIES - found.length))
      + (page.next_after ? "&after=" + encodeURIComponent(page.next_after) : ""));
    found.push(...(page.entries || []));
  }
  page.entries = found;
  const base = app.entries.path.split("/").slice(0, 4).join("/");
  fillEntries((page.entries || []).map(e => {
    const full = base + "/" + (e.dir ? e.dir + "/" : "") + e.name;
    const b = el("a", (e.dir ? e.dir + "/" : "") + e.name, { href: "#files", class: "entry", "data-path": full, "data-kind": e.kind });
    return gridRow([b, t("kind." + e.kind), { text: e.kind === "d" ? "" : bytes(e.size), attrs: { class: "num" } }, when(Math.floor(e.mtime_ns / 1e9))]);
  }));
  $("entries-more").hidden = true;
  say(t("find.found", { n: (page.entries || []).length }) + (page.more ? " " + t("files.more") : ""));
}

async function loadDetails(path) {
  const s = await api("GET", "/api/v1/catalog/stat?path=" + encodeURIComponent(path));
  $("details").hidden = false;
  $("details-title").textContent = path;
  const fields = [[t("col.kind"), t("kind." + s.entry.kind)], [t("col.size"), bytes(s.entry.size)], [t("col.modified"), when(Math.floor(s.entry.mtime_ns / 1e9))],
    [t("col.owner"), s.dataset.owner], [t("col.digest"), s.entry.digest || "–"]];
  $("details-fields").replaceChildren(...fields.flatMap(([k, v]) => [el("dt", k), el("dd", v)]));
  fill("replicas", (s.replicas || []).map(r => row([r.center, r.state, { text: r.rank, attrs: { class: "num" } }, r.reason || ""])));
  const rep = $("replicate");
  rep.onclick = async () => {
    try {
      const dataset = path.split("/").slice(0, 4).join("/");
      const a = await api("POST", "/api/v1/catalog/replicate", { path: dataset });
      say(t("details.replicating", { state: a.state, job: a.job || "–" }));
      if (a.job) rep.dataset.job = String(a.job);
    } catch (e) { fail(e.message); }
  };
  // Copy to a path of this center or of a peer: one job from the best replica (the first
  // ranked), as `ferry cp gfs://...` makes.
  $("copy").onsubmit = async ev => {
    ev.preventDefault();
    const best = (s.replicas || []).find(r => r.rank === 1);
    const to = $("copy-to").value.trim();
    if (!best || !to) { fail(best ? t("details.copyempty") : t("details.noreplica")); return; }
    const within = (s.entry.dir ? s.entry.dir + "/" : "") + s.entry.name;
    const source = (best.center === app.session.center ? "" : "ferry://" + best.center) + best.path + "/" + within;
    try {
      const job = await api("POST", "/api/v1/transfers", { source, destination: to, recursive: s.entry.kind === "d" });
      $("copy-submit").dataset.job = String(job.id);
      say(t("details.copying", { job: job.id, source }));
    } catch (e) { fail(e.message); }
  };
  $("details").scrollIntoView();
}

// Jobs: the user's own (an operator's: all), by id, a page at a time; the page is read again
// every five seconds while shown (new jobs, states), and running jobs' progress is pushed.
function fillStateFilter() {
  const sel = $("jobs-state");
  const keep = sel.value;
  const all = el("option", t("jobs.all"), { value: "" });
  sel.replaceChildren(all, ...STATES.map(s => el("option", stateName(s), { value: s })));
  sel.value = keep;
}

async function loadJobs(quiet) {
  const state = $("jobs-state").value;
  const peer = $("jobs-peer").value.trim();
  const since = $("jobs-since").value ? Math.floor(Date.parse($("jobs-since").value + "T00:00:00Z") / 1000) : 0;
  const after = app.jobsAfter.length ? app.jobsAfter[app.jobsAfter.length - 1] : 0;
  const page = await api("GET", "/api/v1/transfers?limit=" + PAGE + (state ? "&state=" + state : "") + (after ? "&after=" + after : "")
    + (peer ? "&peer=" + encodeURIComponent(peer) : "") + (since ? "&since=" + since : ""));
  fill("jobs", (page.transfers || []).map(listed => {
    // A running job's progress is what its stream last said (the list carries none).
    const live = streamed.get(listed.id);
    const j = live && live.state === listed.state ? Object.assign({}, listed, { progress: live.progress }) : listed;
    const actions = document.createElement("span");
    if (["no_status", "scheduled", "queued", "running", "up_for_retry", "up_for_reschedule", "deferred"].includes(j.state)) {
      const b = el("button", t("jobs.cancel"), { type: "button", "aria-label": t("jobs.cancel") + " #" + j.id });
      b.addEventListener("click", () => act(j.id, "cancel"));
      actions.appendChild(b);
    }
    if (j.state === "failed" || j.state === "upstream_failed") {
      const b = el("button", t("jobs.retry"), { type: "button", "aria-label": t("jobs.retry") + " #" + j.id });
      b.addEventListener("click", () => act(j.id, "retry"));
      actions.appendChild(b);
    }
    const open = el("button", "#" + j.id, { type: "button", "aria-label": t("jobs.details", { id: j.id }) });
    open.addEventListener("click", () => loadJob(j.id).catch(e => fail(e.message)));
    const tr = row([open, { text: jobState(j), attrs: { class: "state" } },
      { text: j.source, attrs: { class: "path" } }, { text: j.destination, attrs: { class: "path" } }, { text: progressText(j), attrs: { class: "progress" } },
      (j.error_code ? "[" + j.error_code + "] " : "") + (j.error || ""), actions]);
    tr.id = "job-" + j.id;
    tr.dataset.state = j.state;
    return tr;
  }));
  follow((page.transfers || []).filter(j => j.state === "running").map(j => j.id));
  $("jobs-more").hidden = !page.more;
  $("jobs-more").onclick = () => { app.jobsAfter.push(page.next_after); loadJobs(false).catch(e => fail(e.message)); };
  if (!quiet) say(t("jobs.shown", { n: (page.transfers || []).length }) + (page.more ? " " + t("files.more") : ""));
}

function jobState(j) { return stateName(j.state) + (j.cancelled ? " (" + t("jobs.cancelled") + ")" : ""); }

// Bytes, rate and time left of a running job (its live progress), or what it moved.
function progressText(j) {
  const p = j.progress;
  if (!p) return j.bytes ? bytes(j.bytes) : "";
  const rate = p.seconds > 0 ? p.bytes_done / p.seconds : 0;
  let s = bytes(p.bytes_done) + " / " + bytes(p.bytes_total) + " · " + t("jobs.files", { done: p.files_done, total: p.files_total });
  if (rate > 0) {
    s += " · " + bytes(rate) + "/s";
    const left = (p.bytes_total - p.bytes_done) / rate;
    if (left >= 0 && isFinite(left)) s += " · " + t("jobs.eta", { s: Math.ceil(left) });
  }
  return s;
}

// Running jobs' progress, pushed by the daemon (server-sent events, its change feed): one
// stream per running job shown, at most ten; closed when the job ends or leaves the page.
const streams = new Map();
const streamed = new Map();
function follow(ids) {
  const keep = new Set(ids);
  for (const [id, es] of streams) if (!keep.has(id)) { es.close(); streams.delete(id); }
  for (const id of streamed.keys()) if (!keep.has(id)) streamed.delete(id);
  for (const id of ids) {
    if (streams.has(id) || streams.size >= 10) continue;
    const es = new EventSource("/api/v1/transfers/" + id + "/events");
    const update = ev => {
      let j;
      try { j = JSON.parse(ev.data); } catch (e) { return; }
      streamed.set(j.id, j);
      const tr = $("job-" + j.id);
      if (tr) {
        tr.dataset.state = j.state;
        tr.querySelector("td.state").textContent = jobState(j);
        tr.querySelector("td.progress").textContent = progressText(j);
      }
      if (ev.type === "end") { es.close(); streams.delete(id); }
    };
    es.addEventListener("progress", update);
    es.addEventListener("end", update);
    es.onerror = () => { es.close(); streams.delete(id); };
    streams.set(id, es);
  }
}

// One job: its fields, what it waits for, and each attempt with how it ended.
async function loadJob(id) {
  const [j, h] = await Promise.all([api("GET", "/api/v1/transfers/" + id), api("GET", "/api/v1/transfers/" + id + "/attempts")]);
  $("job-details").hidden = false;
  $("job-title").textContent = t("jobs.details", { id });
  const fields = [[t("col.state"), jobState(j)], [t("col.source"), j.source], [t("col.destination"), j.destination], [t("col.peer"), j.peer || t("local")],
    [t("col.owner"), j.owner], [t("jobs.created"), when(j.created)], [t("jobs.updated"), when(j.updated)],
    [t("jobs.tries"), j.attempts + " / " + j.max_attempts], [t("jobs.dependson"), (j.depends_on || []).map(d => "#" + d).join(", ") || "–"],
    [t("col.progress"), progressText(j) || "–"], [t("col.error"), (j.error_code ? "[" + j.error_code + "] " : "") + (j.error || "–")]];
  $("job-fields").replaceChildren(...fields.flatMap(([k, v]) => [el("dt", k), el("dd", v)]));
  fill("job-attempts", h.attempts.map(a => row([{ text: a.attempt, attrs: { class: "num" } }, when(a.ended), a.worker, stateName(a.state),
    { text: bytes(a.bytes), attrs: { class: "num" } }, (a.error_code ? "[" + a.error_code + "] " : "") + (a.error || "")])));
  $("job-details").scrollIntoView();
}

async function act(id, what) {
  try {
    await api("POST", "/api/v1/transfers/" + id + "/" + what);
    say(t("jobs.done." + what, { id }));
    await loadJobs(true);
  } catch (e) { fail(e.message); }
}

// MARK: start

window.addEventListener("DOMContentLoaded", async () => {
  $("signin").addEventListener("submit", signIn);
  $("signout").addEventListener("click", signOut);
  $("lang").addEventListener("change", () => setLanguage($("lang").value));
  $("find").addEventListener("submit", ev => findEntries(ev).catch(e => fail(e.message)));
  $("entries-body").addEventListener("click", entriesClicked);
  $("entries-more").addEventListener("click", () => {
    if (app.entries && app.entries.next) loadEntries(app.entries.path, app.entries.next).catch(e => fail(e.message));
  });
  $("jobs-state").addEventListener("change", () => { app.jobsAfter = []; loadJobs(false).catch(e => fail(e.message)); });
  $("jobs-filters").addEventListener("submit", ev => { ev.preventDefault(); app.jobsAfter = []; loadJobs(false).catch(e => fail(e.message)); });
  for (const b of document.querySelectorAll("#nav button")) b.addEventListener("click", () => show(b.dataset.view));
  // Back and forward, or a link to #jobs: the view the address names.
  window.addEventListener("hashchange", () => { if (app.session && location.hash.slice(1) !== app.view) show(location.hash.slice(1)); });
  await setLanguage(chosenLanguage());
  try {
    app.session = await api("GET", "/ui/session");
    started();
  } catch (e) {
    show("signin");
  }
  document.body.dataset.ready = "1";
});
