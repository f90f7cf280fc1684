// SVG drawings of the web screens: control chart, histogram, Pareto. Colours come from
// classes in style.css (the CSP allows no inline style); geometry is plain SVG attributes.
const NS = "http://www.w3.org/2000/svg";

function s(tag, attrs = {}, text) {
  const el = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs)) if (v !== null && v !== undefined) el.setAttribute(k, v);
  if (text !== undefined) el.textContent = text;
  return el;
}

const finite = (x) => x !== null && x !== undefined && Number.isFinite(x);

function fmt(x) {
  if (!finite(x)) return "";
  const a = Math.abs(x);
  return a !== 0 && (a >= 1e5 || a < 1e-3) ? x.toExponential(2) : String(Number(x.toPrecision(5)));
}

/** A polyline path through (x, y) pairs, broken where y is missing; steps when ``step``. */
function pathOf(xs, ys, step = false) {
  let d = "";
  let pen = false;
  for (let i = 0; i < xs.length; i++) {
    if (!finite(ys[i])) {
      pen = false;
      continue;
    }
    if (!pen) d += `M${xs[i].toFixed(1)},${ys[i].toFixed(1)}`;
    else if (step) d += `H${xs[i].toFixed(1)}V${ys[i].toFixed(1)}`;
    else d += `L${xs[i].toFixed(1)},${ys[i].toFixed(1)}`;
    pen = true;
  }
  return d;
}

/**
 * The control chart of points ``first``…``last - 1`` of the columnar ``pts`` (the
 * /points answer): statistic, centre, UCL/LCL, zone lines at ±1σ/±2σ (zones C, B, A),
 * spec limits, violating points in red with their rule codes. ``opts.onPick(i)`` gets
 * the index of a clicked point; ``opts.onWheel(deltaY, sideways)`` zooms (or pans when sideways ≠ 0).
 */
export function drawControlChart(pts, first, last, opts) {
  const W = 1000;
  const H = opts.height || 440;
  const L = 64;
  const R = 96;
  const T = 24;
  const B = 30;
  const idx = [];
  for (let i = first; i < last; i++) idx.push(i);
  const col = (name) => idx.map((i) => pts[name][i]);
  const x = col("statistic");
  const cl = col("center");
  const ucl = col("ucl");
  const lcl = col("lcl");
  const sig = col("sigma");
  const up = (k) => cl.map((c, j) => (finite(c) && finite(sig[j]) ? c + k * sig[j] : null));
  const ys = [...x, ...ucl, ...lcl, opts.lsl, opts.usl].filter(finite);
  let lo = ys.length ? Math.min(...ys) : 0;
  let hi = ys.length ? Math.max(...ys) : 1;
  if (hi === lo) {
    hi += 1;
    lo -= 1;
  }
  const pad = (hi - lo) * 0.08;
  lo -= pad;
  hi += pad;
  const n = Math.max(idx.length, 2);
  const px = (j) => L + ((W - L - R) * j) / (n - 1);
  const py = (v) => T + ((H - T - B) * (hi - v)) / (hi - lo);
  const X = idx.map((_, j) => px(j));
  const Y = (arr) => arr.map((v) => (finite(v) ? py(v) : null));

  const svg = s("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", class: opts.className || "control-chart" });
  svg.append(s("line", { class: "axis", x1: L, y1: T, x2: L, y2: H - B }));
  svg.append(s("line", { class: "axis", x1: L, y1: H - B, x2: W - R, y2: H - B }));
  // tick labels with as many decimals as a quarter of the range needs
  const decimals = Math.max(0, Math.min(6, Math.ceil(-Math.log10((hi - lo) / 4)) + 1));
  for (let k = 0; k <= 4; k++) {
    const v = lo + ((hi - lo) * k) / 4;
    svg.append(s("text", { x: L - 6, y: py(v) + 4, "text-anchor": "end" }, v.toFixed(decimals)));
  }
  for (const k of [-2, -1, 1, 2]) {
    const d = pathOf(X, Y(up(k)), true);
    if (d) svg.append(s("path", { class: "zone", d }));
  }
  svg.append(s("path", { class: "cl", d: pathOf(X, Y(cl), true) }));
  svg.append(s("path", { class: "ctl", d: pathOf(X, Y(ucl), true) }));
  svg.append(s("path", { class: "ctl", d: pathOf(X, Y(lcl), true) }));
  const lastOf = (arr) => [...arr].reverse().find(finite);
  const label = (v, cls, text) => {
    if (finite(v)) svg.append(s("text", { class: `lbl ${cls}`, x: W - R + 4, y: py(v) + 4 }, `${text} ${fmt(v)}`));
  };
  label(lastOf(ucl), "ctl", opts.labels.ucl);
  label(lastOf(cl), "cl", opts.labels.center);
  label(lastOf(lcl), "ctl", opts.labels.lcl);
  const c0 = lastOf(cl);
  const s0 = lastOf(sig);
  if (finite(c0) && finite(s0)) {
    // zone names between the lines, at the right edge
    for (const [k, z] of [[0.5, "C"], [1.5, "B"], [2.5, "A"], [-0.5, "C"], [-1.5, "B"], [-2.5, "A"]]) {
      const v = c0 + k * s0;
      if (v > lo && v < hi) svg.append(s("text", { class: "lbl", x: W - R - 14, y: py(v) + 4 }, z));
    }
  }
  for (const [v, name] of [
    [opts.lsl, opts.labels.lsl],
    [opts.usl, opts.labels.usl],
  ]) {
    if (!finite(v)) continue;
    svg.append(s("line", { class: "spec", x1: L, x2: W - R, y1: py(v), y2: py(v) }));
    svg.append(s("text", { class: "lbl spec", x: L + 4, y: py(v) - 4 }, `${name} ${fmt(v)}`));
  }
  svg.append(s("path", { class: "series", d: pathOf(X, Y(x)) }));
  const viol = col("violations");
  const r = idx.length > 300 ? 2 : idx.length > 120 ? 3 : 4.5;
  idx.forEach((i, j) => {
    if (!finite(x[j])) return;
    const bad = Boolean(viol[j]);
    const dot = s("circle", {
      class: `pt${bad ? " viol" : ""}${opts.selected === i ? " sel" : ""}`,
      cx: X[j].toFixed(1),
      cy: py(x[j]).toFixed(1),
      r: bad ? r + 1.5 : r,
      "data-index": i,
    });
    dot.append(s("title", {}, `${fmt(x[j])}${bad ? ` · ${viol[j]}` : ""}`));
    dot.addEventListener("click", () => opts.onPick?.(i));
    svg.append(dot);
    if (bad) svg.append(s("text", { class: "code", x: X[j], y: py(x[j]) - r - 5, "text-anchor": "middle" }, viol[j]));
  });
  const t0 = pts.time_us[first];
  const t1 = pts.time_us[last - 1];
  if (t0 !== undefined) {
    const ms = t1 - t0 < 60e6; // a short window: milliseconds tell the points apart
    const hm = (us) => {
      const d = new Date(us / 1000);
      const p2 = (v) => String(v).padStart(2, "0");
      const hms = `${p2(d.getHours())}:${p2(d.getMinutes())}:${p2(d.getSeconds())}`;
      return ms ? `${hms}.${String(d.getMilliseconds()).padStart(3, "0")}` : hms;
    };
    svg.append(s("text", { x: L, y: H - 8 }, hm(t0)));
    svg.append(s("text", { x: W - R, y: H - 8, "text-anchor": "end" }, hm(t1)));
  }
  svg.addEventListener(
    "wheel",
    (ev) => {
      ev.preventDefault();
      const sideways = ev.shiftKey ? ev.deltaY || ev.deltaX : ev.deltaX;
      opts.onWheel?.(ev.deltaY, Math.abs(sideways) > 0 ? sideways : 0);
    },
    { passive: false },
  );
  return svg;
}

/** A histogram of ``values`` with LSL/USL lines (``spec``), about √n bins (8…40). */
export function drawHistogram(values, spec, labels) {
  const W = 460;
  const H = 240;
  const L = 36;
  const R = 12;
  const T = 16;
  const B = 26;
  const svg = s("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", class: "histogram" });
  const xs = values.filter(finite);
  if (!xs.length) return svg;
  const bounds = [...xs, spec.lsl, spec.usl].filter(finite);
  let lo = Math.min(...bounds);
  let hi = Math.max(...bounds);
  if (hi === lo) {
    hi += 1;
    lo -= 1;
  }
  const pad = (hi - lo) * 0.05;
  lo -= pad;
  hi += pad;
  const k = Math.max(8, Math.min(40, Math.round(Math.sqrt(xs.length))));
  const counts = new Array(k).fill(0);
  for (const v of xs) counts[Math.min(k - 1, Math.floor(((v - lo) / (hi - lo)) * k))]++;
  const top = Math.max(...counts);
  const px = (v) => L + ((W - L - R) * (v - lo)) / (hi - lo);
  const bw = (W - L - R) / k;
  counts.forEach((c, j) => {
    const h = ((H - T - B) * c) / top;
    svg.append(s("rect", { class: "bar", x: L + j * bw + 1, y: H - B - h, width: Math.max(bw - 2, 1), height: h }));
  });
  svg.append(s("line", { class: "axis", x1: L, y1: H - B, x2: W - R, y2: H - B }));
  svg.append(s("text", { x: L - 4, y: T + 8, "text-anchor": "end" }, String(top)));
  for (const [v, name] of [
    [spec.lsl, labels.lsl],
    [spec.usl, labels.usl],
  ]) {
    if (!finite(v)) continue;
    svg.append(s("line", { class: "spec", x1: px(v), x2: px(v), y1: T, y2: H - B }));
    svg.append(s("text", { class: "lbl spec", x: px(v), y: T - 3, "text-anchor": "middle" }, name));
  }
  svg.append(s("text", { x: L, y: H - 6 }, fmt(lo)));
  svg.append(s("text", { x: W - R, y: H - 6, "text-anchor": "end" }, fmt(hi)));
  return svg;
}

/** The Pareto chart: ``bars`` ({label, title, count}, most frequent first) and the cumulative %. */
export function drawPareto(bars, labels) {
  const W = 460;
  const H = 310;
  const L = 36;
  const R = 40;
  const T = 16;
  const B = 100;
  const svg = s("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", class: "pareto" });
  const total = bars.reduce((a, b) => a + b.count, 0) || 1;
  const top = Math.max(...bars.map((b) => b.count), 1);
  const bw = Math.min(70, (W - L - R) / bars.length);
  let cum = 0;
  const pts = [];
  bars.forEach((b, j) => {
    const h = ((H - T - B) * b.count) / top;
    const x = L + j * bw;
    const rect = s("rect", { class: "bar cause", x: x + 2, y: H - B - h, width: Math.max(bw - 4, 1), height: h });
    rect.append(s("title", {}, `${b.title}: ${b.count}`));
    svg.append(rect);
    svg.append(s("text", { x: x + bw / 2, y: H - B - h - 4, "text-anchor": "middle" }, String(b.count)));
    svg.append(
      s("text", { x: x + bw / 2, y: H - B + 14, "text-anchor": "start", transform: `rotate(35 ${x + bw / 2} ${H - B + 14})` }, b.label),
    );
    cum += b.count;
    pts.push([x + bw / 2, T + (H - T - B) * (1 - cum / total)]);
  });
  svg.append(s("path", { class: "cumline", d: pts.map(([x, y], j) => `${j ? "L" : "M"}${x.toFixed(1)},${y.toFixed(1)}`).join("") }));
  for (const [x, y] of pts) svg.append(s("circle", { class: "cumpt", cx: x, cy: y, r: 3 }));
  const right = L + bw * bars.length;
  svg.append(s("line", { class: "axis", x1: L, y1: H - B, x2: right, y2: H - B }));
  svg.append(s("text", { x: L - 4, y: T + 8, "text-anchor": "end" }, String(top)));
  svg.append(s("text", { x: right + 4, y: T + 4 }, "100%"));
  svg.append(s("text", { x: L, y: H - 4 }, `${labels.count} ${total} · ${labels.cum}`));
  return svg;
}
