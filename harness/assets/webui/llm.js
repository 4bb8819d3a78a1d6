// The LLM tab's live charts: TTFT p50/p95, output tokens/s and errors over time, per host and model,
// drawn as inline SVG from /llm/stats.json (harness.webui_figures' series: bins by end time, from the
// raw records, merged on the master). Locust's own charts use ECharts, but inside its bundle, where no
// other page can reach it, and nothing may be fetched from the internet: so plain SVG, no library.
//
// Loaded two ways: by Locust's page (harness.locust.webui adds this script to it), where it puts the
// charts under the LLM tab's table while that tab is shown; and by the /llm page, which calls
// HarnessLLM.render itself. Every chart carries its scales as data-* attributes so a test can read
// the drawn lines back as numbers (tests/test_webui.py).
"use strict";
(() => {
  const SVG = "http://www.w3.org/2000/svg";
  const COLORS = ["#1e88e5", "#e53935", "#43a047", "#fb8c00", "#8e24aa", "#00acc1", "#6d4c41", "#d81b60"];
  const POLL_MS = 2000;
  // Where this script was served from: <base>/llm/llm.js, so <base> is the web UI's root (with
  // Locust's --web-base-path, if any).
  const script = document.currentScript;
  const BASE = new URL("../", script ? script.src : location.href).href;

  const CHARTS = [
    {
      id: "ttft",
      title: "TTFT (ms)",
      lines: [
        {key: "ttft_p95_ms", dash: "", label: "p95"},
        {key: "ttft_p50_ms", dash: "5 4", label: "p50"},
      ],
      digits: 1,
    },
    {id: "tps", title: "Output tokens/s", lines: [{key: "tokens_per_s", dash: "", label: ""}], digits: 1},
    {id: "errors", title: "Errors per bin", lines: [{key: "errors", dash: "", label: ""}], digits: 0},
  ];

  const groupName = g => (g.all ? "∑ all hosts and models" : `${g.model} @ ${g.label}`);
  // One host and one model: the sum would draw the same lines twice.
  const shownGroups = s => {
    const several = s.groups.filter(g => !g.all);
    return several.length > 1 ? s.groups : several;
  };
  const fmt = (v, d) => (v === null || v === undefined ? "–" : Number(v).toFixed(d));
  const clock = t =>
    new Date(t * 1000).toLocaleTimeString([], {hour: "2-digit", minute: "2-digit", second: "2-digit", hour12: false});

  function el(name, attrs, parent) {
    const e = document.createElementNS(SVG, name);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
    if (parent) parent.appendChild(e);
    return e;
  }

  // A step of 1, 2 or 5 times a power of ten giving about `n` intervals up to `max`.
  function niceStep(max, n) {
    const raw = max / n;
    const p = Math.pow(10, Math.floor(Math.log10(raw)));
    return [1, 2, 5, 10].map(m => m * p).find(s => s >= raw) || 10 * p;
  }
  const TIME_STEPS = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 14400, 21600, 43200, 86400];

  function drawChart(svg, spec, stats, groups, width, height) {
    while (svg.firstChild) svg.removeChild(svg.firstChild);
    const L = 52, R = 14, T = 10, B = 26;
    svg.setAttribute("width", width);
    svg.setAttribute("height", height);
    svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
    let tmax = 0, vmax = 0;
    for (const g of groups) {
      const s = g.series;
      tmax = Math.max(tmax, s.t_s.length ? s.t_s[s.t_s.length - 1] : 0);
      for (const line of spec.lines) for (const v of s[line.key] || []) if (v !== null) vmax = Math.max(vmax, v);
    }
    tmax = Math.max(tmax, stats.bin_s);
    const vstep = niceStep(vmax > 0 ? vmax : 1, 4);
    const vtop = vstep * Math.max(1, Math.ceil((vmax > 0 ? vmax : 1) / vstep - 1e-9));
    const x0 = L, x1 = width - R, y0 = height - B, y1 = T;
    const x = t => x0 + ((x1 - x0) * t) / tmax;
    const y = v => y0 - ((y0 - y1) * v) / vtop;
    // The scales, for readers of the drawing (and the browser test).
    Object.entries({x0, x1, y0, y1, tmax, vmax: vtop, generated: stats.generated_unix, since: stats.since_unix})
      .forEach(([k, v]) => svg.setAttribute(`data-${k}`, v));
    svg.setAttribute("data-chart", spec.id);

    const axes = el("g", {"font-size": 11, fill: "currentColor", stroke: "none"}, svg);
    for (let v = 0; v <= vtop + vstep / 2; v += vstep) {
      el("line", {x1: x0, x2: x1, y1: y(v), y2: y(v), stroke: "currentColor", "stroke-opacity": v ? 0.12 : 0.45}, axes);
      el("text", {x: x0 - 6, y: y(v) + 4, "text-anchor": "end"}, axes).textContent =
        vstep < 1 ? v.toFixed(Math.ceil(-Math.log10(vstep))) : v.toFixed(0);
    }
    const tstep = TIME_STEPS.find(s => tmax / s <= 6) || 86400;
    for (let t = 0; t <= tmax + 1e-9; t += tstep) {
      el("line", {x1: x(t), x2: x(t), y1: y0, y2: y0 + 4, stroke: "currentColor", "stroke-opacity": 0.45}, axes);
      el("text", {x: x(t), y: y0 + 17, "text-anchor": t === 0 ? "start" : "middle"}, axes).textContent = clock(
        stats.since_unix + t,
      );
    }

    groups.forEach((g, n) => {
      const color = COLORS[n % COLORS.length];
      const s = g.series;
      for (const line of spec.lines) {
        const values = s[line.key] || [];
        let d = "", pen = false, count = 0, last = null;
        for (let i = 0; i < s.t_s.length; i++) {
          const v = values[i];
          if (v === null || v === undefined) {
            pen = false;
            continue;
          }
          last = [x(s.t_s[i]), y(v), s.t_s[i], v];
          d += `${pen ? "L" : "M"}${last[0].toFixed(2)},${last[1].toFixed(2)}`;
          pen = true;
          count++;
        }
        if (!count) continue;
        el("path", {
          d,
          fill: "none",
          stroke: color,
          "stroke-width": g.all ? 2.5 : 1.8,
          "stroke-dasharray": line.dash,
          "stroke-linejoin": "round",
          "data-group": groupName(g),
          "data-key": line.key,
          "data-points": count,
        }, svg);
        // The newest point, marked (a lone point would draw nothing as a path).
        const dot = el("circle", {cx: last[0].toFixed(2), cy: last[1].toFixed(2), r: 3, fill: color}, svg);
        el("title", {}, dot).textContent =
          `${groupName(g)}${line.label ? " " + line.label : ""}: ${fmt(last[3], spec.digits)} at ${clock(stats.since_unix + last[2])}`;
      }
    });
    return {x, y, x0, x1, y0, y1, tmax};
  }

  // Hover: a vertical line at the nearest bin and every line's value there.
  function hover(box, svg, spec, stats, groups, scale) {
    const tip = box.querySelector(".harness-llm-tip");
    const guide = el("line", {y1: scale.y1, y2: scale.y0, stroke: "currentColor", "stroke-opacity": 0.4, visibility: "hidden"}, svg);
    svg.onmousemove = ev => {
      const r = svg.getBoundingClientRect();
      const t = ((ev.clientX - r.left - scale.x0) / (scale.x1 - scale.x0)) * scale.tmax;
      const ref = groups.find(g => g.series.t_s.length);
      if (!ref || t < 0 || t > scale.tmax * 1.02) return svg.onmouseleave();
      const ts = ref.series.t_s;
      let i = Math.round(t / stats.bin_s) - 1;
      i = Math.max(0, Math.min(ts.length - 1, i));
      guide.setAttribute("x1", scale.x(ts[i]));
      guide.setAttribute("x2", scale.x(ts[i]));
      guide.setAttribute("visibility", "visible");
      const rows = groups.map((g, n) =>
        spec.lines
          .map(l => `${l.label ? l.label + " " : ""}${fmt((g.series[l.key] || [])[i], spec.digits)}`)
          .join(", ")
          .replace(/^/, `<i style="background:${COLORS[n % COLORS.length]}"></i>${esc(groupName(g))}: `),
      );
      tip.innerHTML = `<b>${clock(stats.since_unix + ts[i])}</b> (bin of ${stats.bin_s} s)<br>${rows.join("<br>")}`;
      tip.style.display = "block";
      const br = box.getBoundingClientRect();
      tip.style.left = `${ev.clientX - br.left + 14}px`;
      tip.style.top = `${ev.clientY - br.top + 10}px`;
    };
    svg.onmouseleave = () => {
      guide.setAttribute("visibility", "hidden");
      tip.style.display = "none";
    };
  }

  const esc = s => String(s).replace(/[&<>"]/g, c => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;"})[c]);

  const STYLE = `
.harness-llm-charts { position: relative; margin: 16px 0; }
.harness-llm-charts .harness-llm-note { opacity: .75; font-size: 13px; margin: 0 0 8px; }
.harness-llm-charts .harness-llm-row { display: flex; flex-wrap: wrap; gap: 16px; }
.harness-llm-charts h3 { font-size: 14px; font-weight: 600; margin: 0 0 4px; }
.harness-llm-charts .harness-llm-legend { font-size: 12px; margin: 8px 0 0; }
.harness-llm-charts .harness-llm-legend span { display: inline-block; margin-right: 14px; }
.harness-llm-charts i { display: inline-block; width: 14px; height: 3px; vertical-align: middle; margin-right: 5px; }
.harness-llm-charts .harness-llm-tip { position: absolute; display: none; pointer-events: none; z-index: 5; font-size: 12px;
  padding: 6px 8px; border-radius: 4px; background: rgba(30, 30, 30, .92); color: #fff; white-space: nowrap; }
`;

  // Draw every chart of `stats` into `box` (made the first time).
  function render(box, stats) {
    if (!box.querySelector(".harness-llm-row")) {
      if (!document.getElementById("harness-llm-style")) {
        const style = document.createElement("style");
        style.id = "harness-llm-style";
        style.textContent = STYLE;
        document.head.appendChild(style);
      }
      box.classList.add("harness-llm-charts");
      box.innerHTML =
        `<p class="harness-llm-note"></p><div class="harness-llm-row">` +
        CHARTS.map(c => `<div class="harness-llm-chart" data-chart="${c.id}"><h3></h3><svg></svg></div>`).join("") +
        `</div><div class="harness-llm-legend"></div><div class="harness-llm-tip"></div>`;
    }
    const groups = shownGroups(stats);
    const width = box.clientWidth || 1200;
    const per = width >= 1400 ? 3 : width >= 800 ? 2 : 1;
    const w = Math.max(280, Math.floor((width - 16 * (per - 1)) / per) - 1);
    box.querySelector(".harness-llm-note").textContent =
      `Per ${stats.bin_s} s bin, by the time requests ended, from the raw records` +
      (stats.lag_s ? ` (workers send records every ${stats.lag_s} s, so the last bin shown ended that long ago)` : "") +
      `; TTFT percentiles over the bin's successful requests. Hover for values.`;
    for (const spec of CHARTS) {
      const holder = box.querySelector(`.harness-llm-chart[data-chart="${spec.id}"]`);
      const title = spec.id === "errors" ? `Errors per ${stats.bin_s} s bin` : spec.title;
      holder.querySelector("h3").textContent =
        spec.lines.length > 1 ? `${title}: ${spec.lines.map(l => l.label + (l.dash ? " dashed" : " solid")).join(", ")}` : title;
      const svg = holder.querySelector("svg");
      const scale = drawChart(svg, spec, stats, groups, w, 230);
      hover(box, svg, spec, stats, groups, scale);
    }
    box.querySelector(".harness-llm-legend").innerHTML = groups.length
      ? groups.map((g, n) => `<span><i style="background:${COLORS[n % COLORS.length]}"></i>${esc(groupName(g))}</span>`).join("")
      : "No measured requests yet.";
    box.setAttribute("data-generated", stats.generated_unix);
  }

  async function fetchStats() {
    const resp = await fetch(BASE + "llm/stats.json", {cache: "no-store", credentials: "same-origin"});
    if (!resp.ok) throw new Error(`llm/stats.json: HTTP ${resp.status}`);
    return resp.json();
  }

  window.HarnessLLM = {render, fetchStats, BASE};

  // In Locust's page: keep a chart box under the LLM tab's table while that tab is selected.
  if (!document.getElementById("root")) return;
  const BOX_ID = "harness-llm-charts";
  let lastFetch = 0, busy = false;
  function llmTable() {
    const tab = [...document.querySelectorAll("[role=tab]")].find(t => t.textContent.trim() === "LLM");
    if (!tab || tab.getAttribute("aria-selected") !== "true") return null;
    return [...document.querySelectorAll("table")].find(t =>
      [...t.querySelectorAll("th")].some(th => th.textContent.trim() === "TTFT p95 ms"),
    );
  }
  async function tick() {
    const table = llmTable();
    let box = document.getElementById(BOX_ID);
    if (!table) {
      if (box) box.remove();
      return;
    }
    // Beside React's nodes, never inside them: React re-renders the table, not its siblings.
    const anchor = table.closest(".MuiTableContainer-root") || table;
    if (!box || box.previousElementSibling !== anchor) {
      if (box) box.remove();
      box = document.createElement("div");
      box.id = BOX_ID;
      anchor.after(box);
      lastFetch = 0;
    }
    if (busy || Date.now() - lastFetch < POLL_MS) return;
    busy = true;
    lastFetch = Date.now();
    try {
      render(box, await fetchStats());
    } catch (e) {
      box.textContent = `Could not draw the LLM charts: ${e}`;
    } finally {
      busy = false;
    }
  }
  setInterval(tick, 250);
})();
