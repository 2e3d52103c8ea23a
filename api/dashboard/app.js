// GLAI training dashboard: a job list and a job page with live curves, drawn as hand-made SVG.
// No framework, no build step. Reads the REST API under /v1 with the API key as a Bearer token.
"use strict";

(() => {
  const API = document.querySelector('meta[name="glai-api-base"]').content;
  const KEY_STORE = "glai.apiKey";
  const ACTIVE = new Set(["queued", "running", "cancelling"]);
  const REFRESH_ACTIVE_MS = 3000;
  const REFRESH_IDLE_MS = 20000;
  const MAX_POINTS = 400;
  // Okabe-Ito: readable for the common kinds of colour blindness.
  const COLORS = ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#999999"];
  const PHASE_TITLES = {
    embedding: "Embedding", structural: "Structural phase", quantitative: "Quantitative phase (GLAI)",
    pruning: "Pruning", baseline: "Baseline (MLP)", exporting: "Exporting",
  };
  const TRAINING_PHASES = ["structural", "quantitative", "baseline"];

  // ---------------------------------------------------------------- DOM helpers

  const $ = (selector, root = document) => root.querySelector(selector);
  const SVG_NS = "http://www.w3.org/2000/svg";

  function build(element, attrs, children) {
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (name === "text") element.textContent = value;
      // Through the CSSOM: the page's Content-Security-Policy forbids inline style attributes.
      else if (name === "style") element.style.cssText = value;
      else if (name.startsWith("on")) element.addEventListener(name.slice(2), value);
      else element.setAttribute(name, value === true ? "" : String(value));
    }
    for (const child of children.flat(Infinity)) {
      if (child === null || child === undefined || child === false) continue;
      element.append(child instanceof Node ? child : String(child));
    }
    return element;
  }
  const h = (tag, attrs, ...children) => build(document.createElement(tag), attrs, children);
  const svg = (tag, attrs, ...children) => build(document.createElementNS(SVG_NS, tag), attrs, children);

  // ---------------------------------------------------------------- formatting

  const isNum = (v) => typeof v === "number" && Number.isFinite(v);
  const pct = (v, digits = 1) => (isNum(v) ? `${(v * 100).toFixed(digits)}%` : "—");
  function num(v) {
    if (!isNum(v)) return "—";
    if (Number.isInteger(v)) return v.toLocaleString("en-US");
    const a = Math.abs(v);
    if (a !== 0 && (a < 1e-3 || a >= 1e5)) return v.toExponential(2);
    return v.toPrecision(4).replace(/\.?0+$/, "");
  }
  function seconds(v) {
    if (!isNum(v)) return "—";
    if (v === 0) return "0 s";
    if (v < 1) return `${Math.round(v * 1000)} ms`;
    if (v < 60) return `${v.toFixed(v < 10 ? 1 : 0)} s`;
    const m = Math.floor(v / 60), s = Math.round(v % 60);
    if (m < 60) return `${m}m ${String(s).padStart(2, "0")}s`;
    return `${Math.floor(m / 60)}h ${String(m % 60).padStart(2, "0")}m`;
  }
  function bytes(v) {
    if (!isNum(v)) return "—";
    const units = ["B", "KiB", "MiB", "GiB"];
    let i = 0;
    while (v >= 1024 && i < units.length - 1) { v /= 1024; i += 1; }
    return `${i === 0 ? v : v.toFixed(1)} ${units[i]}`;
  }
  const dateFormat = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "medium" });
  // Timestamps are UTC; one without an offset (SQLite drops it) is read as UTC, not local time.
  const parseDate = (s) => (s ? new Date(/[zZ]|[+-]\d\d:?\d\d$/.test(s) ? s : `${s}Z`) : null);
  const when = (s) => (s ? dateFormat.format(parseDate(s)) : "—");
  function ago(s) {
    if (!s) return "—";
    const d = (Date.now() - parseDate(s).getTime()) / 1000;
    if (d < 45) return "just now";
    if (d < 3600) return `${Math.round(d / 60)} min ago`;
    if (d < 86400) return `${Math.round(d / 3600)} h ago`;
    return `${Math.round(d / 86400)} d ago`;
  }
  function duration(job) {
    const start = parseDate(job.started_at);
    if (!start) return null;
    const end = parseDate(job.finished_at) || new Date();
    return Math.max(0, (end - start) / 1000);
  }
  const shortId = (id) => String(id).slice(0, 8);
  // A finished job's last phase (e.g. exporting) is no news; where a job failed or stopped is.
  const shownPhase = (job) => (job.state === "succeeded" ? "—" : job.phase || "—");

  // ---------------------------------------------------------------- auth and API

  function storedKey() {
    try { return localStorage.getItem(KEY_STORE) || ""; } catch { return ""; }
  }
  function storeKey(key) {
    try {
      if (key) localStorage.setItem(KEY_STORE, key); else localStorage.removeItem(KEY_STORE);
    } catch { /* storage disabled: the key lives for this page only */ }
    memoryKey = key;
  }
  let memoryKey = storedKey();

  // A ready link from `glai serve` carries the key as #token=… (never sent to the server) or ?token=….
  // Take it once, keep it, and strip it from the address bar and history.
  function takeKeyFromUrl() {
    const url = new URL(location.href);
    let token = url.searchParams.get("token");
    let hash = url.hash;
    const m = hash.match(/^#token=([^&]*)/);
    if (m) { token = token || decodeURIComponent(m[1]); hash = "#/"; }
    if (!token) return;
    storeKey(token.trim());
    url.searchParams.delete("token");
    history.replaceState(null, "", url.pathname + url.search + hash);
  }

  class ApiError extends Error {
    constructor(status, message) { super(message); this.status = status; }
  }

  function errorText(body, fallback) {
    if (!body) return fallback;
    const d = body.detail ?? body.error ?? body.message;
    if (typeof d === "string") return d;
    if (Array.isArray(d)) return d.map((e) => e.msg || JSON.stringify(e)).join("; ");
    if (d && typeof d === "object") return d.message || JSON.stringify(d);
    return fallback;
  }

  async function request(path, method = "GET") {
    const headers = { Accept: "application/json" };
    if (memoryKey) headers.Authorization = `Bearer ${memoryKey}`;
    const res = await fetch(API + path, { method, headers, cache: "no-store" });
    if (!res.ok) {
      let body = null;
      try { body = await res.json(); } catch { /* not JSON */ }
      throw new ApiError(res.status, errorText(body, `${res.status} ${res.statusText}`));
    }
    return res;
  }
  const getJson = async (path) => (await request(path)).json();

  function showAuth(message) {
    $("#auth").hidden = false;
    $("#view").hidden = true;
    $("#change-key").hidden = true;
    $("#auth-message").textContent = message ||
      "Enter your API key. It is kept in this browser (localStorage) and sent as a Bearer token with every request.";
    $("#api-key").value = "";
    $("#api-key").focus();
  }
  function hideAuth() {
    $("#auth").hidden = true;
    $("#view").hidden = false;
    $("#change-key").hidden = !memoryKey;
  }

  // ---------------------------------------------------------------- errors and polling

  function showError(message) {
    const banner = $("#error");
    banner.replaceChildren(message ? h("span", { text: message }) : "");
    banner.hidden = !message;
  }

  function handleFailure(err) {
    if (err instanceof ApiError && err.status === 401) {
      const hadKey = Boolean(memoryKey);
      stopView();
      storeKey("");
      showAuth(hadKey ? "That API key was not accepted (401). Enter a valid key." : null);
      return;
    }
    showError(err instanceof ApiError ? err.message : `Cannot reach the API: ${err.message}`);
  }

  // One view at a time; each may poll. Polling pauses while the tab is hidden.
  let activeView = null;
  function stopView() {
    if (activeView) { activeView.stopped = true; clearTimeout(activeView.timer); }
    activeView = null;
    setLive(false);
  }
  function startPolling(view, refresh) {
    view.stopped = false;
    const tick = async () => {
      if (view.stopped) return;
      let delay = REFRESH_IDLE_MS;
      try {
        if (!document.hidden) {
          const live = await refresh();
          if (view.stopped) return;
          setLive(live);
          delay = live ? REFRESH_ACTIVE_MS : REFRESH_IDLE_MS;
          showError("");
        }
      } catch (err) {
        if (view.stopped) return;
        handleFailure(err);
        if (err instanceof ApiError && err.status === 401) return;
      }
      view.timer = setTimeout(tick, delay);
    };
    view.poke = () => { clearTimeout(view.timer); tick(); };
    tick();
  }
  document.addEventListener("visibilitychange", () => {
    if (!document.hidden && activeView && activeView.poke) activeView.poke();
  });
  function setLive(on) { $("#live").hidden = !on; }

  // ---------------------------------------------------------------- small widgets

  function badge(state) {
    return h("span", { class: `badge state-${state}`, text: state });
  }
  function progressBar(job) {
    const value = Math.max(0, Math.min(1, isNum(job.progress) ? job.progress : 0));
    const label = job.state === "succeeded" ? "done" : `${Math.round(value * 100)}%`;
    return h("div", { class: "progress-wrap" },
      h("div", {
        class: `progress state-${job.state}`, role: "progressbar", "aria-valuemin": 0, "aria-valuemax": 100,
        "aria-valuenow": Math.round(value * 100), "aria-label": `Progress of job ${shortId(job.id)}`,
      }, h("div", { class: "bar", style: `width:${(value * 100).toFixed(1)}%` })),
      h("span", { class: "progress-label", text: label }));
  }

  // ---------------------------------------------------------------- job list

  function listView(root) {
    const view = { filter: sessionStorage.getItem("glai.filter") || "", limit: 50, items: [], next: null };
    const select = h("select", { id: "state-filter", onchange: () => {
      view.filter = select.value;
      sessionStorage.setItem("glai.filter", view.filter);
      view.limit = 50;
      view.poke();
    } }, h("option", { value: "", text: "All states" }),
    ["queued", "running", "cancelling", "succeeded", "failed", "cancelled"].map(
      (s) => h("option", { value: s, text: s, selected: s === view.filter })));
    const updated = h("span", { class: "muted small", "aria-live": "off" });
    const tbody = h("tbody");
    const empty = h("p", { class: "empty", hidden: true });
    const more = h("button", { type: "button", class: "secondary", hidden: true, onclick: () => {
      view.limit += 50;
      view.poke();
    }, text: "Load more" });
    root.replaceChildren(h("section", { class: "card", "aria-labelledby": "jobs-title" },
      h("div", { class: "card-head" },
        h("h1", { id: "jobs-title", text: "Jobs" }),
        h("div", { class: "tools" }, h("label", { for: "state-filter", class: "sr-only", text: "Filter by state" }),
          select, updated)),
      h("div", { class: "table-scroll" },
        h("table", { class: "jobs" },
          h("thead", {}, h("tr", {}, ["Job", "Dataset", "State", "Phase", "Progress", "Accuracy", "Created",
            "Duration"].map((t) => h("th", { scope: "col", class: t === "Accuracy" ? "num acc" : null, text: t })))),
          tbody)),
      empty, h("div", { class: "more" }, more)));

    const rows = new Map();
    function rowFor(job) {
      const acc = job.summary && job.summary.glai_accuracy;
      const cells = [
        h("td", {}, h("a", { href: `#/jobs/${job.id}`, class: "job-link mono", title: job.id,
          text: shortId(job.id) })),
        h("td", { class: "mono muted", title: job.dataset_id, text: shortId(job.dataset_id || "") }),
        h("td", {}, badge(job.state)),
        h("td", { text: shownPhase(job) }),
        h("td", {}, progressBar(job)),
        h("td", { class: "num acc", text: pct(acc) }),
        h("td", { title: when(job.created_at), text: ago(job.created_at) }),
        h("td", { class: "num", text: seconds(duration(job)) }),
      ];
      const tr = h("tr", { "data-job-id": job.id, "data-state": job.state, onclick: (e) => {
        if (!e.target.closest("a")) location.hash = `#/jobs/${job.id}`;
      } }, cells);
      return tr;
    }

    async function refresh() {
      const q = new URLSearchParams({ limit: String(view.limit) });
      if (view.filter) q.set("state", view.filter);
      const page = await getJson(`/jobs?${q}`);
      view.items = page.items || [];
      view.next = page.next_cursor || null;
      // Keep unchanged rows as they are (focus and hover survive a refresh); rebuild the others.
      const seen = new Set();
      const ordered = view.items.map((job) => {
        const sig = JSON.stringify([job.state, job.phase, job.progress, job.epoch, job.finished_at,
          job.started_at, job.summary && job.summary.glai_accuracy, ACTIVE.has(job.state) ? Date.now() : 0]);
        seen.add(job.id);
        const known = rows.get(job.id);
        if (known && known.sig === sig) return known.tr;
        const tr = rowFor(job);
        rows.set(job.id, { sig, tr });
        if (known) known.tr.replaceWith(tr);
        return tr;
      });
      for (const id of [...rows.keys()]) if (!seen.has(id)) { rows.get(id).tr.remove(); rows.delete(id); }
      const current = [...tbody.children];
      if (ordered.length !== current.length || ordered.some((tr, i) => tr !== current[i])) {
        tbody.replaceChildren(...ordered);
      }
      // The accuracy column shows only when the list carries summaries (a listing may leave them out).
      tbody.parentElement.classList.toggle("no-acc", !view.items.some((j) => j.summary));
      empty.hidden = view.items.length > 0;
      empty.textContent = view.filter ? `No ${view.filter} jobs.` :
        "No jobs yet. Start one with `glai train` or POST /v1/jobs.";
      more.hidden = !view.next;
      updated.textContent = `Updated ${new Date().toLocaleTimeString()}`;
      return view.items.some((j) => ACTIVE.has(j.state));
    }
    startPolling(view, refresh);
    return view;
  }

  // ---------------------------------------------------------------- curves

  // {series:[{key, phase, points}]} -> {phase: {key: [[step, value, wall_time], ...]}}
  function groupCurves(curves) {
    const byPhase = {};
    for (const s of (curves && curves.series) || []) {
      const pts = (s.points || []).filter((p) => isNum(p.value)).map((p) => [p.step, p.value, p.wall_time]);
      pts.sort((a, b) => a[0] - b[0]);
      (byPhase[s.phase] ||= {})[s.key] = pts;
    }
    return byPhase;
  }
  const lastStep = (seriesMap) => Math.max(-Infinity,
    ...Object.values(seriesMap || {}).map((pts) => (pts.length ? pts[pts.length - 1][0] : -Infinity)));
  const lastWall = (seriesMap) => Math.max(0,
    ...Object.values(seriesMap || {}).flat().map((p) => (isNum(p[2]) ? p[2] : 0)));

  function accuracyVsSparsity(byPhase, summary) {
    const pruning = byPhase.pruning || {};
    const acc = pruning.pruned_accuracy || [];
    const level = new Map((pruning.sparsity || []).map((p) => [p[0], p[1]]));
    let pts = acc.filter((p) => level.has(p[0])).map((p) => [level.get(p[0]), p[1]]);
    if (!pts.length && summary && summary.pruned) {
      pts = Object.entries(summary.pruned).map(([s, a]) => [Number(s), a]).filter((p) => isNum(p[0]) && isNum(p[1]));
    }
    return pts.sort((a, b) => a[0] - b[0]);
  }

  // GLAI's time to accuracy runs through both of its phases: quantitative starts where structural ended.
  function timeToAccuracy(byPhase) {
    const structural = byPhase.structural || {};
    const offset = lastWall(structural);
    const glai = [
      ...(structural.val_accuracy || []).map((p) => [p[2], p[1]]),
      ...((byPhase.quantitative || {}).val_accuracy || []).map((p) => [p[2] + offset, p[1]]),
    ].filter((p) => isNum(p[0]));
    const baseline = ((byPhase.baseline || {}).val_accuracy || []).map((p) => [p[2], p[1]]).filter((p) => isNum(p[0]));
    return { glai, baseline };
  }

  function chartsFor(byPhase, summary) {
    const groups = [];
    const handled = new Set(["train_loss", "val_loss", "val_accuracy", "train_accuracy", "unit_distance",
      "path_distance"]);
    for (const phase of [...TRAINING_PHASES, ...Object.keys(byPhase).filter(
      (p) => !TRAINING_PHASES.includes(p) && p !== "pruning")]) {
      const s = byPhase[phase];
      if (!s) continue;
      const charts = [];
      const steps = (pts) => pts.map((p) => [p[0], p[1]]);
      if (s.train_loss || s.val_loss) {
        charts.push({ id: `${phase}-loss`, title: "Loss", xLabel: "epoch", yLabel: "loss", series: [
          s.train_loss && { name: "train", points: steps(s.train_loss) },
          s.val_loss && { name: "validation", points: steps(s.val_loss), dash: true },
        ] });
      }
      if (s.val_accuracy || s.train_accuracy) {
        charts.push({ id: `${phase}-accuracy`, title: "Accuracy", xLabel: "epoch", yLabel: "accuracy", yFormat: pct,
          series: [
            s.train_accuracy && { name: "train", points: steps(s.train_accuracy) },
            s.val_accuracy && { name: "validation", points: steps(s.val_accuracy), dash: !!s.train_accuracy },
          ] });
      }
      if (s.unit_distance || s.path_distance) {
        const stop = lastStep(s);
        charts.push({ id: `${phase}-distances`, title: "Structure distances (stop point marked)", xLabel: "epoch",
          yLabel: "distance",
          series: [
            s.unit_distance && { name: "unit distance", points: steps(s.unit_distance) },
            s.path_distance && { name: "path distance", points: steps(s.path_distance), dash: true },
          ],
          vlines: isNum(stop) ? [{ x: stop, label: `stopped at epoch ${stop}`, cls: "stop" }] : [] });
      }
      const other = Object.keys(s).filter((k) => !handled.has(k));
      if (other.length) {
        charts.push({ id: `${phase}-other`, title: "Other metrics", xLabel: "step", yLabel: "value",
          series: other.map((k) => ({ name: k, points: steps(s[k]) })) });
      }
      if (charts.length) groups.push({ phase, title: PHASE_TITLES[phase] || phase, charts });
    }

    const comparison = [];
    const sparsity = accuracyVsSparsity(byPhase, summary);
    if (sparsity.length || byPhase.pruning) {
      const hl = [];
      if (isNum(summary.glai_accuracy)) hl.push({ y: summary.glai_accuracy, label: "unpruned GLAI" });
      if (isNum(summary.baseline_accuracy)) hl.push({ y: summary.baseline_accuracy, label: "MLP baseline", cls: "ref" });
      comparison.push({ id: "pruning-sparsity", title: "Accuracy vs sparsity", xLabel: "sparsity",
        yLabel: "accuracy", xFormat: (v) => pct(v, 0), yFormat: pct, markers: true,
        series: [{ name: "pruned GLAI", points: sparsity }], hlines: hl });
    }
    const tta = timeToAccuracy(byPhase);
    if (tta.glai.length || tta.baseline.length) {
      const target = summary.target_accuracy;
      const hl = isNum(target) ? [{ y: target, label: "target", cls: "target", left: true }] : [];
      const vl = [];
      for (const [key, who, colorIndex] of [["glai_time_to_target_s", "GLAI", 0], ["baseline_time_to_target_s", "MLP", 1]]) {
        const t = summary[key];
        if (isNum(t)) vl.push({ x: t, y: target, label: `${who} at target: ${seconds(t)}`, colorIndex, bottom: true });
      }
      comparison.push({ id: "time-to-accuracy", title: "Time to accuracy: GLAI vs MLP baseline",
        xLabel: "wall time", yLabel: "validation accuracy", xFormat: seconds, yFormat: pct,
        series: [
          tta.glai.length && { name: "GLAI (structural → quantitative)", points: tta.glai },
          tta.baseline.length && { name: "MLP baseline", points: tta.baseline, dash: true },
        ], hlines: hl, vlines: vl });
    }
    if (comparison.length) groups.unshift({ phase: "comparison", title: "Time to accuracy and pruning", charts: comparison.reverse() });
    return groups;
  }

  // ---------------------------------------------------------------- the SVG line chart

  function niceStep(range, count) {
    const raw = range / Math.max(1, count);
    const mag = 10 ** Math.floor(Math.log10(raw));
    const f = raw / mag;
    return (f <= 1 ? 1 : f <= 2 ? 2 : f <= 2.5 ? 2.5 : f <= 5 ? 5 : 10) * mag;
  }
  function ticks(lo, hi, count, integer = false) {
    if (!(hi > lo)) { const pad = integer ? 1 : Math.abs(lo) * 0.1 || 1; lo -= pad; hi += pad; }
    let step = niceStep(hi - lo, count);
    if (integer) step = Math.max(1, Math.round(step));  // epochs and steps: no 1.2, 1.4, ...
    const start = Math.floor(lo / step + 1e-9) * step, end = Math.ceil(hi / step - 1e-9) * step;
    const out = [];
    for (let v = start; v <= end + step * 1e-6; v += step) out.push(Number(v.toPrecision(12)));
    return { lo: start, hi: end, ticks: out };
  }

  // spec: {id, title, xLabel, yLabel, series:[{name, points:[[x,y]], dash}], hlines, vlines, xFormat, yFormat}
  function lineChart(spec) {
    const W = 460, H = 250, M = { l: 56, r: 14, t: 14, b: 42 };
    const series = spec.series.filter((s) => s && s.points && s.points.length)
      .map((s, i) => ({ ...s, color: COLORS[spec.series.indexOf(s) % COLORS.length] || COLORS[i] }));
    const hlines = spec.hlines || [], vlines = spec.vlines || [];
    const xFmt = spec.xFormat || num, yFmt = spec.yFormat || num;
    const figure = h("figure", { class: "chart", "data-chart": spec.id });
    figure.append(h("figcaption", { text: spec.title }));
    if (!series.length) {
      figure.classList.add("empty-chart");
      figure.append(h("p", { class: "muted", text: "No points yet." }));
      return figure;
    }
    const xs = [...series.flatMap((s) => s.points.map((p) => p[0])), ...vlines.map((v) => v.x)];
    const ys = [...series.flatMap((s) => s.points.map((p) => p[1])), ...hlines.map((v) => v.y)];
    const xt = ticks(Math.min(...xs), Math.max(...xs), 5, xs.every(Number.isInteger));
    const yt = ticks(Math.min(...ys), Math.max(...ys), 4);
    const X = (v) => M.l + ((v - xt.lo) / (xt.hi - xt.lo)) * (W - M.l - M.r);
    const Y = (v) => H - M.b - ((v - yt.lo) / (yt.hi - yt.lo)) * (H - M.t - M.b);

    const summaryText = series.map((s) => `${s.name}: last ${yFmt(s.points[s.points.length - 1][1])}`).join("; ");
    const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": `${spec.title}. ${summaryText}` });
    const grid = svg("g", { class: "grid" });
    for (const v of yt.ticks) {
      grid.append(svg("line", { x1: M.l, x2: W - M.r, y1: Y(v), y2: Y(v) }),
        svg("text", { x: M.l - 6, y: Y(v) + 4, "text-anchor": "end", text: yFmt(v) }));
    }
    for (const v of xt.ticks) {
      grid.append(svg("line", { class: "xtick", x1: X(v), x2: X(v), y1: H - M.b, y2: H - M.b + 4 }),
        svg("text", { x: X(v), y: H - M.b + 16, "text-anchor": "middle", text: xFmt(v) }));
    }
    grid.append(svg("line", { class: "axis", x1: M.l, x2: W - M.r, y1: H - M.b, y2: H - M.b }),
      svg("text", { class: "label", x: (M.l + W - M.r) / 2, y: H - 6, "text-anchor": "middle", text: spec.xLabel }),
      svg("text", { class: "label", transform: `translate(13 ${(M.t + H - M.b) / 2}) rotate(-90)`,
        "text-anchor": "middle", text: spec.yLabel }));
    root.append(grid);

    const refs = svg("g", { class: "refs" });
    for (const l of hlines) {
      refs.append(svg("line", { class: `href ${l.cls || ""}`, x1: M.l, x2: W - M.r, y1: Y(l.y), y2: Y(l.y) }),
        svg("text", { class: `ref-label ${l.cls || ""}`, x: l.left ? M.l + 4 : W - M.r - 4, y: Y(l.y) - 4,
          "text-anchor": l.left ? "start" : "end", text: `${l.label} ${yFmt(l.y)}` }));
    }
    vlines.forEach((l, i) => {
      const color = isNum(l.colorIndex) ? COLORS[l.colorIndex] : null;
      const right = X(l.x) > (M.l + W - M.r) / 2;  // keep the label inside the plot
      const y = l.bottom ? H - M.b - 8 - 13 * i : M.t + 10 + 13 * i;
      refs.append(svg("line", { class: `vref ${l.cls || ""}`, x1: X(l.x), x2: X(l.x), y1: M.t, y2: H - M.b,
        style: color ? `stroke:${color}` : null }),
      svg("text", { class: `ref-label ${l.cls || ""}`, x: X(l.x) + (right ? -4 : 4), y,
        "text-anchor": right ? "end" : "start", style: color ? `fill:${color}` : null, text: l.label }));
      if (isNum(l.y)) {
        refs.append(svg("circle", { class: "ref-point", cx: X(l.x), cy: Y(l.y), r: 4.5,
          style: color ? `stroke:${color}` : null }));
      }
    });
    root.append(refs);

    for (const s of series) {
      const d = s.points.map((p, i) => `${i ? "L" : "M"}${X(p[0]).toFixed(1)} ${Y(p[1]).toFixed(1)}`).join("");
      const g = svg("g", { class: "series-group" });
      g.append(svg("path", { class: "series", d, stroke: s.color, "data-series": s.name,
        "data-points": s.points.length, "stroke-dasharray": s.dash ? "6 4" : null }));
      const marks = spec.markers || s.points.length === 1 ? s.points : [s.points[s.points.length - 1]];
      for (const p of marks) g.append(svg("circle", { cx: X(p[0]), cy: Y(p[1]), r: 3, fill: s.color }));
      root.append(g);
    }

    // Hover: a guide at the nearest x with every series' value there.
    const guide = svg("line", { class: "guide", y1: M.t, y2: H - M.b, visibility: "hidden" });
    root.append(guide);
    const tip = h("div", { class: "tip", hidden: true });
    root.addEventListener("pointermove", (e) => {
      const box = root.getBoundingClientRect();
      const px = ((e.clientX - box.left) / box.width) * W;
      const xv = xt.lo + ((px - M.l) / (W - M.l - M.r)) * (xt.hi - xt.lo);
      const lines = [];
      let gx = null;
      for (const s of series) {
        let best = s.points[0];
        for (const p of s.points) if (Math.abs(p[0] - xv) < Math.abs(best[0] - xv)) best = p;
        gx = gx === null ? best[0] : gx;
        lines.push(h("div", {}, h("span", { class: "swatch", style: `background:${s.color}` }),
          `${s.name}: ${yFmt(best[1])} @ ${xFmt(best[0])}`));
      }
      guide.setAttribute("x1", X(gx)); guide.setAttribute("x2", X(gx));
      guide.setAttribute("visibility", "visible");
      tip.replaceChildren(...lines);
      tip.hidden = false;
      const left = ((X(gx) / W) * box.width);
      tip.style.left = `${Math.min(left + 10, box.width - 200)}px`;
    });
    root.addEventListener("pointerleave", () => { guide.setAttribute("visibility", "hidden"); tip.hidden = true; });

    const legend = h("ul", { class: "legend" }, series.map((s) => h("li", {},
      h("span", { class: `swatch${s.dash ? " dashed" : ""}`, style: `--c:${s.color}` }),
      `${s.name} `, h("span", { class: "muted", text: yFmt(s.points[s.points.length - 1][1]) }))));
    figure.append(h("div", { class: "plot" }, root, tip), legend);
    return figure;
  }

  // ---------------------------------------------------------------- job page

  const times = (v) => (isNum(v) ? `${v.toFixed(2)}×` : "—");

  const SUMMARY_ROWS = [
    ["Accuracy", [["glai_accuracy", "GLAI (trained)", pct], ["structure_accuracy", "Structural MLP", pct],
      ["warm_start_accuracy", "Warm start (before quantitative)", pct], ["baseline_accuracy", "MLP baseline", pct]]],
    ["(a) Time to target: MLP's best − 0.5 pp", [["target_accuracy", "Target accuracy", pct],
      ["glai_time_to_target_s", "GLAI time to target", seconds],
      ["baseline_time_to_target_s", "Baseline time to target", seconds], ["speedup", "Speedup to target", times]]],
    ["(b) Total training time, early stopping included", [["glai_seconds", "GLAI training time", seconds],
      ["baseline_seconds", "Baseline training time", seconds], ["total_time_speedup", "Total-time speedup", times]]],
    ["Training", [["structural_epochs", "Structural epochs", num], ["baseline_epochs", "Baseline epochs", num],
      ["phase2_solver", "Quantitative solver", (v) => v ?? "—"],
      ["stopped_by", "Structural phase stopped by", (v) => v ?? "—"]]],
    ["Size", [["glai_hidden", "GLAI hidden", (v) => (Array.isArray(v) ? v.join(" × ") : num(v))],
      ["reference_hidden", "Reference hidden", (v) => (Array.isArray(v) ? v.join(" × ") : num(v))],
      ["mlp_params", "MLP parameters", num], ["glai_trainable_params", "GLAI trainable parameters", num],
      ["structure_params", "Structure parameters", num],
      ["reduction_factor", "Reduction factor", (v) => (isNum(v) ? `${v.toFixed(2)}×` : "—")]]],
  ];

  function summarySection(summary) {
    const tiles = [
      ["GLAI accuracy", pct(summary.glai_accuracy)],
      ["Baseline accuracy", pct(summary.baseline_accuracy)],
      ["Speedup to target (a)", times(summary.speedup)],
      ["Total-time speedup (b)", times(summary.total_time_speedup)],
      ["Parameter reduction", isNum(summary.reduction_factor) ? `${summary.reduction_factor.toFixed(2)}×` : "—"],
    ];
    const groups = SUMMARY_ROWS.map(([group, rows]) => [group,
      rows.filter(([key]) => key in summary).map(([key, label, fmt]) => [key, label, fmt(summary[key])])]);
    const pruned = Object.entries(summary.pruned || {}).sort((a, b) => Number(a[0]) - Number(b[0]));
    groups.push(["Pruned accuracy", pruned.map(([s, a]) => [`pruned-${s}`, `${pct(Number(s), 0)} sparsity`, pct(a)])]);
    const chosen = (summary.effective_settings && summary.effective_settings.chosen) || {};
    const effective = summary.effective_settings || {};
    groups.push(["Settings chosen from the data", Object.entries(chosen).map(([key, why]) => {
      const [section, field] = key.split(".");
      const value = effective[section] ? effective[section][field] : undefined;
      return [`setting-${key}`, `${key} = ${value ?? "?"}`, why];
    })]);
    const tables = groups.filter(([, rows]) => rows.length).map(([group, rows]) =>
      h("table", { class: "summary" }, h("caption", { text: group }),
        h("tbody", {}, rows.map(([key, label, value]) => h("tr", { "data-key": key },
          h("th", { scope: "row", text: label }), h("td", { class: "num", text: value }))))));
    return h("section", { class: "card", "aria-labelledby": "summary-title" },
      h("h2", { id: "summary-title", text: "Summary" }),
      h("div", { class: "tiles" }, tiles.map(([label, value]) => h("div", { class: "tile" },
        h("div", { class: "tile-value", text: value }), h("div", { class: "tile-label muted", text: label })))),
      h("div", { class: "summary-grid" }, tables));
  }

  async function download(job, artifact, link, status) {
    status.className = "dl-status muted";
    status.textContent = "Downloading…";
    link.setAttribute("aria-busy", "true");
    try {
      const res = await request(`/jobs/${encodeURIComponent(job.id)}/artifacts/${encodeURIComponent(artifact.name)}`);
      const total = Number(res.headers.get("Content-Length")) || artifact.size_bytes || 0;
      const reader = res.body.getReader();
      const chunks = [];
      let got = 0;
      for (;;) {
        const { done, value } = await reader.read();
        if (done) break;
        chunks.push(value);
        got += value.length;
        if (total) status.textContent = `Downloading… ${Math.round((got / total) * 100)}%`;
      }
      const blob = new Blob(chunks, { type: "application/octet-stream" });
      const disposition = res.headers.get("Content-Disposition") || "";
      const named = disposition.match(/filename="?([^";]+)"?/);
      const filename = named ? named[1] : fileName(artifact);
      let note = `Saved (${bytes(blob.size)})`;
      if (artifact.sha256 && window.crypto && crypto.subtle) {
        const digest = await crypto.subtle.digest("SHA-256", await blob.arrayBuffer());
        const hex = [...new Uint8Array(digest)].map((b) => b.toString(16).padStart(2, "0")).join("");
        if (hex !== artifact.sha256) throw new Error("SHA-256 does not match: the download is corrupt");
        note += " · SHA-256 verified";
      }
      const url = URL.createObjectURL(blob);
      const a = h("a", { href: url, download: filename, hidden: true });
      document.body.append(a);
      a.click();
      a.remove();
      setTimeout(() => URL.revokeObjectURL(url), 60000);
      status.className = "dl-status ok";
      status.textContent = note;
    } catch (err) {
      if (err instanceof ApiError && err.status === 401) { handleFailure(err); return; }
      status.className = "dl-status err";
      status.textContent = `Download failed: ${err.message}`;
    } finally {
      link.removeAttribute("aria-busy");
    }
  }

  // A model is `<name>.safetensors`; an ONNX copy (`trained.onnx`) or `config.json` has its extension.
  function fileName(artifact) {
    return artifact.name.includes(".") ? artifact.name : `${artifact.name}.safetensors`;
  }

  function artifactsSection(job) {
    const list = job.artifacts || [];
    const rows = list.map((art) => {
      const status = h("span", { class: "dl-status", "aria-live": "polite" });
      const href = art.url || `${API}/jobs/${job.id}/artifacts/${encodeURIComponent(art.name)}`;
      const link = h("a", { class: "button download", href, "data-artifact": art.name,
        download: fileName(art), text: "Download" });
      link.addEventListener("click", (e) => { e.preventDefault(); download(job, art, link, status); });
      return h("tr", {}, h("th", { scope: "row", class: "mono", text: art.name }),
        h("td", { class: "num", text: bytes(art.size_bytes) }),
        h("td", { class: "mono muted", title: art.sha256 || "", text: art.sha256 ? `${art.sha256.slice(0, 12)}…` : "—" }),
        h("td", {}, link, " ", status));
    });
    return h("section", { class: "card", "aria-labelledby": "artifacts-title" },
      h("h2", { id: "artifacts-title", text: "Artifacts" }),
      rows.length ? h("div", { class: "table-scroll" }, h("table", { class: "artifacts" },
        h("thead", {}, h("tr", {}, ["Name", "Size", "SHA-256", ""].map((t) => h("th", { scope: "col", text: t })))),
        h("tbody", {}, rows)))
        : h("p", { class: "muted", text: ACTIVE.has(job.state) ? "Artifacts appear when the job has exported them." : "No artifacts." }),
      rows.length ? h("p", { class: "muted small", text: "Downloads use your API key and are checked against their SHA-256. " +
        "Load one in Python with glai_core.predict.Predictor.load(path)." }) : null);
  }

  function timelineSection(job) {
    const items = job.transitions || [];
    if (!items.length) return null;
    return h("section", { class: "card", "aria-labelledby": "timeline-title" },
      h("h2", { id: "timeline-title", text: "Timeline" }),
      h("ol", { class: "timeline" }, items.map((t) => h("li", {},
        h("time", { datetime: t.at, text: when(t.at) }), " ",
        h("span", { class: "muted", text: t.field }), " ",
        t.from_value ? [h("span", { text: t.from_value }), " → "] : null,
        t.field === "state" ? badge(t.to_value) : h("strong", { text: t.to_value }),
        t.reason ? h("span", { class: "muted reason", text: ` — ${t.reason}` }) : null))));
  }

  function headerSection(job) {
    const facts = [
      ["Dataset", h("span", { class: "mono", text: job.dataset_id || "—" })],
      ["Phase", shownPhase(job)], ["Epoch", job.epoch ?? "—"],
      ["Created", when(job.created_at)], ["Started", when(job.started_at)], ["Finished", when(job.finished_at)],
      ["Duration", seconds(duration(job))],
    ];
    const parts = [
      h("div", { class: "card-head" },
        h("h1", { id: "job-title" }, "Job ", h("span", { class: "mono", title: job.id, text: shortId(job.id) })), badge(job.state)),
      h("dl", { class: "facts" }, facts.map(([k, v]) => h("div", {}, h("dt", { text: k }), h("dd", {}, v)))),
      progressBar(job),
    ];
    if (job.state === "failed") {
      parts.push(h("div", { class: "banner error failure", role: "alert" },
        h("strong", { text: `Failed: ${job.failure_kind || "internal"}` }),
        h("pre", { text: job.failure_message || "No message was recorded." })));
    } else if (job.state === "cancelled") {
      parts.push(h("div", { class: "banner info", text: "This job was cancelled." }));
    } else if (job.state === "cancelling") {
      parts.push(h("div", { class: "banner info", text: "Cancelling: the worker stops at the next step boundary." }));
    }
    const head = parts[0];
    if (job.state === "queued" || job.state === "running") {
      head.append(jobAction(job, "cancel", "Cancel job", "secondary danger",
        `Cancel job ${shortId(job.id)}? Its progress so far is kept.`));
    } else if (job.state === "failed" && job.failure_kind !== "user_error") {
      // On from its checkpoints, within its attempts (the API's 409 says when not).
      head.append(jobAction(job, "resume", "Resume job", "secondary"));
    }
    return h("section", { class: "card job-head", "aria-labelledby": "job-title" }, ...parts);
  }

  // A button that POSTs /jobs/{id}/<action> (after a confirmation, if given) and reloads the view.
  function jobAction(job, action, label, cls, confirmation = null) {
    const button = h("button", { type: "button", class: cls, text: label });
    button.addEventListener("click", async () => {
      if (confirmation && !window.confirm(confirmation)) return;
      button.disabled = true;
      try {
        await request(`/jobs/${encodeURIComponent(job.id)}/${action}`, "POST");
        if (activeView && activeView.poke) activeView.poke();
      } catch (err) {
        button.disabled = false;
        handleFailure(err);
      }
    });
    return h("div", { class: "head-actions" }, button);
  }

  function chartsSection(groups, job) {
    if (!groups.length) {
      return h("section", { class: "card" }, h("h2", { text: "Curves" }),
        h("p", { class: "muted", text: ACTIVE.has(job.state) ? "Waiting for the first epoch…" : "No curves were recorded." }));
    }
    return h("section", { class: "charts", "aria-label": "Curves" }, groups.map((g) =>
      h("section", { class: "card chart-group", "data-phase": g.phase },
        h("h2", { text: g.title }), h("div", { class: "chart-grid" }, g.charts.map(lineChart)))));
  }

  // Lineage (incremental children, merges, sweeps): where the structure and the rows come from.
  function jobLink(id) {
    return h("a", { href: `#/jobs/${id}`, class: "job-link mono", title: id, text: shortId(id) });
  }

  function factsList(facts) {
    return h("dl", { class: "facts" }, facts.filter(([, v]) => v !== null && v !== undefined && v !== "")
      .map(([k, v]) => h("div", {}, h("dt", { text: k }), h("dd", {}, v))));
  }

  function smallTable(caption, headers, rows) {
    return h("div", { class: "table-scroll" }, h("table", { class: "lineage-table" },
      h("caption", { text: caption }),
      h("thead", {}, h("tr", {}, headers.map((t) => h("th", { scope: "col", text: t })))),
      h("tbody", {}, rows.map((cells) => h("tr", {}, cells.map((c) => h("td", {}, c)))))));
  }

  function lineageSection(job, children) {
    const lineage = job.lineage || { kind: "train" };
    const summary = job.summary || {};
    const kids = (children || []).map((c) => h("span", { class: "child" }, jobLink(c.id), " ", badge(c.state)));
    if (lineage.kind === "train" && !kids.length) return "";
    const words = { train: "trained from scratch", incremental: "incremental (continues its parent's frozen structure)",
      merge: "merge of jobs on one structure", sweep: "sweep (a grid of heads in one pass)" };
    const info = summary.incremental || {};
    const parts = [h("h2", { id: "lineage-title", text: "Lineage" }), factsList([
      ["Kind", words[lineage.kind] || lineage.kind],
      ["Parent", lineage.parent_job_id ? jobLink(lineage.parent_job_id) : null],
      ["Structure from", lineage.structure_job_id && lineage.structure_job_id !== job.id ? jobLink(lineage.structure_job_id) : null],
      ["Merged", lineage.sources && lineage.sources.length ? h("span", {}, ...lineage.sources.flatMap((s, i) => (i ? [", ", jobLink(s)] : [jobLink(s)]))) : null],
      ["Rows used", lineage.rows ? (lineage.rows === "own" ? "its own dataset only" : "the parent's and its own") : null],
      ["Dataset holds", lineage.data ? (lineage.data === "appended" ? "the parent's rows with rows appended" : "new rows only") : null],
      ["Rows added", isNum(lineage.rows_added) ? lineage.rows_added.toLocaleString() : null],
      ["Training rows", isNum(lineage.train_rows) ? lineage.train_rows.toLocaleString() : null],
      ["Datasets", lineage.datasets && lineage.datasets.length > 1 ? h("span", { class: "mono", text: lineage.datasets.map(shortId).join(" → ") }) : null],
      ["Path weights", info.mode ? `${info.mode}: ${info.why || ""}` : (summary.merge ? `${summary.merge.method}: ${summary.merge.what}` : null)],
      ["Children", kids.length ? h("span", { class: "children" }, ...kids) : null],
    ])];
    if (info.parts && info.parts.length) {
      parts.push(smallTable("Validation accuracy on each part", ["Dataset", "Rows", "Validation rows", "Accuracy"],
        info.parts.map((p) => [h("span", { class: "mono", text: shortId(p.dataset_id) }), String(p.rows), String(p.val_rows), pct(p.val_accuracy)])));
    }
    if (summary.merge && summary.merge.parts) {
      parts.push(smallTable("Each part's validation rows: the merged model and the job fitted on that part",
        ["Job", "Dataset", "Validation rows", "Merged", "That job"],
        summary.merge.parts.map((p) => [jobLink(p.job_id), h("span", { class: "mono", text: shortId(p.dataset_id) }),
          String(p.val_rows), pct(p.merged_val_accuracy), pct(p.source_val_accuracy)])));
    }
    if (summary.sweep && summary.sweep.heads) {
      const sweep = summary.sweep;
      const front = new Set([...(sweep.front.glai || []), ...(sweep.front.mlp || [])]);
      const best = new Set([sweep.best.glai, sweep.best.mlp]);
      const cut = sweep.halving ? `, ✂ cut by successive halving at that epoch (eta ${sweep.halving.eta})` : "";
      parts.push(smallTable(`Heads (★ kept as the job's model, • on the accuracy / parameters / time front${cut})`,
        ["Head", "Kind", "lr", "r", "Seed", "Widths", "Parameters", "Validation", "Seconds", ""],
        sweep.heads.map((hd) => [`h${hd.id}`, hd.kind === "glai" ? "GLAI" : "MLP", String(hd.lr),
          hd.reduction_factor === null || hd.reduction_factor === undefined ? "—" : String(hd.reduction_factor),
          String(hd.seed), hd.hidden.join("×"), hd.params.toLocaleString(), pct(hd.val_accuracy),
          seconds(hd.seconds), `${best.has(hd.id) ? "★" : ""}${front.has(hd.id) ? "•" : ""}` +
          (hd.pruned_at ? `✂ ${hd.pruned_at}` : "")])));
    }
    return h("section", { class: "card lineage", "aria-labelledby": "lineage-title", "data-kind": lineage.kind }, ...parts);
  }

  function jobView(root, id) {
    const view = {};
    root.replaceChildren(h("p", { class: "muted", text: "Loading…" }));
    const sig = { head: null, charts: null, artifacts: null };
    const slots = { head: h("div"), lineage: h("div"), summary: h("div"), charts: h("div"), artifacts: h("div"),
      timeline: h("div") };
    let first = true;
    async function refresh() {
      const [job, curves, children] = await Promise.all([
        getJson(`/jobs/${encodeURIComponent(id)}`),
        getJson(`/jobs/${encodeURIComponent(id)}/curves?max_points=${MAX_POINTS}`),
        getJson(`/jobs?parent_job_id=${encodeURIComponent(id)}&limit=50`).catch(() => ({ items: [] })),
      ]);
      if (first) {
        root.replaceChildren(h("nav", { class: "crumbs", "aria-label": "Breadcrumb" },
          h("a", { href: "#/", text: "Jobs" }), " / ", h("span", { class: "mono", text: shortId(job.id) })),
        slots.head, slots.lineage, slots.summary, slots.charts, slots.artifacts, slots.timeline);
        document.title = `Job ${shortId(job.id)} · GLAI`;
        first = false;
      }
      const summary = job.summary || {};
      const headSig = JSON.stringify([job, children.items, ACTIVE.has(job.state) ? Date.now() : 0]);
      if (headSig !== sig.head) {
        sig.head = headSig;
        slots.head.replaceChildren(headerSection(job));
        slots.lineage.replaceChildren(lineageSection(job, children.items));
        slots.summary.replaceChildren(Object.keys(summary).length ? summarySection(summary) : "");
        slots.timeline.replaceChildren(timelineSection(job) || "");
      }
      const artSig = JSON.stringify(job.artifacts || []);
      if (artSig !== sig.artifacts) { sig.artifacts = artSig; slots.artifacts.replaceChildren(artifactsSection(job)); }
      const chartSig = JSON.stringify([curves, summary]);
      if (chartSig !== sig.charts) {
        sig.charts = chartSig;
        slots.charts.replaceChildren(chartsSection(chartsFor(groupCurves(curves), summary), job));
      }
      return ACTIVE.has(job.state);
    }
    startPolling(view, refresh);
    return view;
  }

  // ---------------------------------------------------------------- routing

  function route() {
    takeKeyFromUrl();  // also on hashchange: a #token= link pasted into an open tab
    stopView();
    showError("");
    hideAuth();
    const root = $("#view");
    const path = location.hash.replace(/^#/, "") || "/";
    const m = path.match(/^\/jobs\/([A-Za-z0-9_-]+)$/);
    if (m) {
      activeView = jobView(root, m[1]);
    } else if (path === "/") {
      document.title = "Jobs · GLAI";
      activeView = listView(root);
    } else {
      root.replaceChildren(h("section", { class: "card" }, h("h1", { text: "Not found" }),
        h("p", {}, "No such page. ", h("a", { href: "#/", text: "Back to the jobs" }))));
    }
  }

  function init() {
    $("#auth-form").addEventListener("submit", (e) => {
      e.preventDefault();
      const key = $("#api-key").value.trim();
      if (!key) return;
      storeKey(key);
      route();
    });
    $("#change-key").addEventListener("click", () => { stopView(); showAuth(); });
    window.addEventListener("hashchange", route);
    // With no key stored we still try: a server started with auth disabled needs none, and a 401 asks.
    route();
  }

  init();
})();
