// The gateway's web screens: sign-in, line overview, alarms, chart, engineer view, manual entry.
// One ES module, no build step; talks to /api/v1 (session cookie + X-CSRF-Token) and
// listens to /api/v1/stream. Screens are hash routes: #/overview, #/alarms,
// #/chart/<path>, #/engineer/<path>, #/entry/<path>. No inline script or style (the CSP forbids them).
import { initialLanguage, language, setLanguage, t } from "./i18n.js";
import { drawControlChart, drawHistogram, drawPareto } from "./chart.js";

const $ = (sel, root = document) => root.querySelector(sel);

/** An element with attributes (``on*`` functions become listeners) and children. */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on") && typeof v === "function") el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = v;
    else if (k === "dataset") Object.assign(el.dataset, v);
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

// ------------------------------------------------------------------ API

class ApiFail extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

const session = { csrf: null, name: null, role: null };

async function api(path, { method = "GET", body, quiet401 = false } = {}) {
  const headers = { Accept: "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (method !== "GET" && session.csrf) headers["X-CSRF-Token"] = session.csrf;
  const r = await fetch(`/api/v1${path}`, {
    method,
    headers,
    credentials: "same-origin",
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const data = await r.json().catch(() => null);
  if (r.status === 401 && !quiet401) showLogin();
  if (!r.ok) throw new ApiFail(r.status, data?.error?.message || `${r.status} ${r.statusText}`);
  return data;
}

const enc = (path) => path.split("/").map(encodeURIComponent).join("/");
const roleAtLeast = (need) =>
  ["operator", "engineer", "admin"].indexOf(session.role) >=
  ["operator", "engineer", "admin"].indexOf(need);

// ------------------------------------------------------------------ formatting

function fmtNum(x, digits = 4) {
  if (x === null || x === undefined || !Number.isFinite(x)) return "—";
  const a = Math.abs(x);
  if (a !== 0 && (a >= 1e6 || a < 1e-3)) return x.toExponential(3);
  return Number(x.toPrecision(digits + (a >= 1 ? Math.floor(Math.log10(a)) : 0))).toString();
}

function fmtTime(us) {
  if (us === null || us === undefined) return "—";
  const d = new Date(us / 1000);
  const pad = (n) => String(n).padStart(2, "0");
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(
    d.getMinutes(),
  )}:${pad(d.getSeconds())}`;
}

/** RFC 3339 UTC with microseconds (what the exclusion specs take). */
function rfc3339(us) {
  const iso = new Date(Math.floor(us / 1000)).toISOString(); // …T12:34:56.789Z
  return `${iso.slice(0, -1)}${String(us % 1000).padStart(3, "0")}Z`;
}

function tileState(c) {
  if (c.state === "suspended") return "suspended";
  if (c.open_alarms > 0 || c.in_control === false) return "bad";
  if (c.phase !== "phase2" || !c.n_samples) return "warn";
  return "ok";
}

// ------------------------------------------------------------------ live stream

const live = { es: null, wasOpen: false, retry: 0, timer: null };
let screen = null; // { onPoint, onAlarm, refresh }

function connect() {
  clearTimeout(live.timer);
  if (live.es) live.es.close();
  const es = new EventSource("/api/v1/stream");
  live.es = es;
  es.addEventListener("open", () => {
    setLive(true);
    live.retry = 0;
    if (live.wasOpen && screen) screen.refresh(); // events may have been missed meanwhile
    live.wasOpen = true;
  });
  es.addEventListener("error", () => {
    setLive(false);
    if (es.readyState === EventSource.CLOSED) {
      // refused (signed out, server gone): our own capped, jittered backoff
      const wait = Math.min(30000, 1000 * 2 ** live.retry++) * (0.5 + Math.random() / 2);
      live.timer = setTimeout(async () => {
        try {
          await api("/auth/me");
          connect();
        } catch {
          /* showLogin ran on 401; otherwise the next error retries */
          if (session.name) live.timer = setTimeout(connect, wait);
        }
      }, wait);
    }
  });
  es.addEventListener("point", (e) => screen?.onPoint?.(JSON.parse(e.data)));
  es.addEventListener("alarm", (e) => screen?.onAlarm?.(JSON.parse(e.data)));
  es.addEventListener("state", () => screen?.onAlarm?.(null));
  es.addEventListener("lag", () => screen?.refresh());
}

function disconnect() {
  clearTimeout(live.timer);
  live.es?.close();
  live.es = null;
  live.wasOpen = false;
  setLive(false);
}

function setLive(on) {
  const el = $("#live");
  el.className = `live ${on ? "on" : "off"}`;
  el.textContent = on ? t("live") : t("reconnecting");
}

/** ``fn`` at most once per ``ms`` (trailing call kept): bursts of events refetch once. */
function debounce(fn, ms) {
  let timer = null;
  return () => {
    if (timer) return;
    timer = setTimeout(() => {
      timer = null;
      fn();
    }, ms);
  };
}

// ------------------------------------------------------------------ i18n in the page

function applyI18n(root = document) {
  for (const el of root.querySelectorAll("[data-i18n]")) el.textContent = t(el.dataset.i18n);
  for (const b of [$("#lang"), $("#login-lang")]) b.textContent = t("language");
  document.title = t("title");
}

function toggleLanguage() {
  setLanguage(language() === "zh" ? "en" : "zh");
  applyI18n();
  if (session.name) {
    showWho();
    setLive(live.es?.readyState === EventSource.OPEN);
    route();
  }
}

// ------------------------------------------------------------------ sign-in

function showLogin() {
  disconnect();
  session.csrf = session.name = session.role = null;
  screen = null;
  $("#bar").hidden = true;
  $("#view").replaceChildren();
  $("#login").hidden = false;
  $("#login-name").focus();
}

async function onLogin(ev) {
  ev.preventDefault();
  const err = $("#login-error");
  err.textContent = "";
  try {
    const r = await api("/auth/login", {
      method: "POST",
      body: { name: $("#login-name").value, password: $("#login-password").value },
      quiet401: true,
    });
    $("#login-password").value = "";
    started({ name: r.user, role: r.role, csrf_token: r.csrf_token });
  } catch (e) {
    err.textContent = `${t("sign_in_failed")}: ${e.message}`;
  }
}

async function onLogout() {
  try {
    await api("/auth/logout", { method: "POST", body: {} });
  } catch {
    /* gone already */
  }
  showLogin();
}

function showWho() {
  $("#who").textContent = session.name ? `${session.name} (${t(`role_${session.role}`)})` : "";
}

function started(me) {
  session.name = me.name;
  session.role = me.role;
  session.csrf = me.csrf_token;
  $("#login").hidden = true;
  $("#bar").hidden = false;
  showWho();
  connect();
  route();
}

// ------------------------------------------------------------------ router

function route() {
  if (!session.name) return;
  const hash = decodeURIComponent(location.hash.replace(/^#\/?/, ""));
  const [name, ...rest] = hash.split("/");
  const arg = rest.join("/");
  for (const a of document.querySelectorAll("header nav a")) {
    a.classList.toggle("current", a.id === `nav-${name || "overview"}`);
  }
  const view = $("#view");
  view.replaceChildren();
  screen?.destroy?.();
  const make = { alarms: alarmScreen, chart: chartScreen, engineer: engineerScreen, entry: entryScreen }[name];
  screen = (make || overviewScreen)(view, arg);
  screen.refresh();
}

/** A suspension reason in words: "out_of_service: comment" / "process_state: …". */
function reasonText(reason) {
  if (!reason) return t("state_suspended");
  const [kind, ...rest] = reason.split(": ");
  const words = { out_of_service: t("out_of_service"), process_state: t("process_state") }[kind] || kind;
  return rest.length ? `${words}: ${rest.join(": ")}` : words;
}

function failBox(view, e) {
  view.replaceChildren(h("p", { class: "error", role: "alert" }, `${t("error")}: ${e.message}`));
}

// ------------------------------------------------------------------ line overview

function overviewScreen(view) {
  const strip = h("section", { class: "alarm-strip", id: "newest-alarms" });
  const lines = h("section", { id: "tiles" });
  view.append(strip, lines);
  let chars = [];
  let frame = 0;

  function renderStrip(alarms) {
    const items = alarms.slice(0, 6).map((a) =>
      h(
        "li",
        {
          class: a.acked_us ? "acked" : "",
          dataset: { alarm: a.alarm_id },
        },
        h("span", { class: "when" }, fmtTime(a.raised_us).slice(11)),
        h("span", { class: "rule" }, a.rule),
        h("span", {}, `${a.line} · ${a.station} · ${a.characteristic} (${a.chart})`),
        h("span", { class: "num" }, fmtNum(a.last_value)),
        h("span", { class: `pill ${a.status}` }, t(a.status)),
      ),
    );
    strip.replaceChildren(
      h("h2", {}, t("newest_alarms")),
      items.length ? h("ol", {}, items) : h("p", { class: "empty" }, t("no_alarms")),
    );
  }

  function tile(c) {
    const state = tileState(c);
    const label =
      state === "suspended"
        ? t("state_suspended")
        : state === "bad"
          ? t("state_bad")
          : !c.n_samples
            ? t("no_data")
            : state === "warn"
              ? t("phase1")
              : t("state_ok");
    return h(
      "div",
      {
        class: `tile ${state}`,
        dataset: { path: c.path, state },
        role: "link",
        tabindex: "0",
        onclick: () => (location.hash = `#/chart/${c.path}`),
        onkeydown: (ev) => {
          if (ev.key === "Enter") location.hash = `#/chart/${c.path}`;
        },
      },
      h("div", { class: "name" }, c.id),
      h(
        "div",
        { class: "where" },
        h("span", {}, `${c.station} · ${c.chart}`),
        h(
          "a",
          {
            class: "entry-link",
            href: `#/entry/${c.path}`,
            title: t("nav_entry"),
            onclick: (ev) => ev.stopPropagation(), // the tile itself opens the chart
            onkeydown: (ev) => ev.stopPropagation(),
          },
          `✎ ${t("enter_value")}`,
        ),
      ),
      h("div", { class: "value" }, fmtNum(c.last_value), " ", h("small", {}, c.unit || "")),
      state === "suspended" ? h("div", { class: "reason" }, reasonText(c.state_reason)) : null,
      h(
        "div",
        { class: "meta" },
        h("span", { class: "state" }, label),
        h("span", { class: "alarms" }, `${t("open_alarms")}: ${c.open_alarms}`),
      ),
    );
  }

  function renderTiles() {
    const byLine = new Map();
    for (const c of chars) {
      const key = `${c.site} / ${c.area} / ${c.line}`;
      if (!byLine.has(key)) byLine.set(key, []);
      byLine.get(key).push(c);
    }
    lines.replaceChildren(
      ...[...byLine].flatMap(([key, cs]) => [
        h("div", { class: "line-title" }, key),
        h("div", { class: "tiles" }, cs.map(tile)),
      ]),
    );
  }

  async function refresh() {
    try {
      const [cs, alarms] = await Promise.all([api("/characteristics"), api("/alarms?limit=50")]);
      chars = cs;
      renderStrip(alarms);
      renderTiles();
    } catch (e) {
      if (e.status !== 401) failBox(view, e);
    }
  }
  const soon = debounce(refresh, 250);

  return {
    refresh,
    onAlarm: soon,
    onPoint(ev) {
      const index = new Map(chars.map((c, i) => [c.path, i]));
      let judge = false;
      ev.path.forEach((p, k) => {
        const i = index.get(p);
        if (i === undefined) return;
        chars[i].last_value = ev.statistic[k];
        chars[i].n_samples = (chars[i].n_samples || 0) + 1;
        if (ev.violations[k]) judge = true;
      });
      if (judge) soon();
      else {
        // one repaint per frame however many batches arrive
        cancelAnimationFrame(frame);
        frame = requestAnimationFrame(renderTiles);
      }
    },
  };
}

// ------------------------------------------------------------------ alarms

let causeList = null; // {causes: [{category, code, text, text_zh}], actions: [...]} or false

async function loadCauses() {
  if (causeList !== null) return causeList;
  try {
    causeList = await api("/alarms/causes", { quiet401: true });
    if (!Array.isArray(causeList?.causes)) causeList = false;
  } catch {
    causeList = false; // an older gateway: typed codes instead of picklists
  }
  return causeList;
}

const CATEGORIES = ["operator", "machine", "material", "method", "environment", "measurement"];
const CAT_KEY = {
  operator: "cat_man",
  machine: "cat_machine",
  material: "cat_material",
  method: "cat_method",
  environment: "cat_environment",
  measurement: "cat_measurement",
};
const wording = (item) => (language() === "zh" && item.text_zh ? item.text_zh : item.text) || item.code;

function closeDialog() {
  const d = $("#dialog");
  if (d.open) d.close();
  d.replaceChildren();
}

async function ackDialog(alarm, done) {
  const list = await loadCauses();
  let cause;
  let action;
  let causeHints = null;
  if (list) {
    cause = h(
      "select",
      { id: "ack-cause", name: "cause" },
      h("option", { value: "" }, t("none")),
      CATEGORIES.map((cat) => {
        const items = list.causes.filter((c) => c.category === cat);
        return items.length
          ? h(
              "optgroup",
              { label: t(CAT_KEY[cat]) },
              items.map((c) => h("option", { value: `${c.category}:${c.code}` }, `${c.code} · ${wording(c)}`)),
            )
          : null;
      }),
    );
    action = h(
      "select",
      { id: "ack-action", name: "action" },
      h("option", { value: "" }, t("none")),
      list.actions.map((a) => h("option", { value: a.code }, `${a.code} · ${wording(a)}`)),
    );
  } else {
    // no list from the gateway: offer the causes acknowledged before (the Pareto knows them)
    let seen = [];
    try {
      seen = (await api("/alarms/pareto?since=-365d")).filter((c) => c.code);
    } catch {
      /* typed codes still work */
    }
    cause = h("input", { id: "ack-cause", name: "cause", list: "ack-cause-list", placeholder: "machine:MC-TOOL-WEAR" });
    causeHints = h(
      "datalist",
      { id: "ack-cause-list" },
      seen.map((c) => h("option", { value: `${c.category}:${c.code}` }, `${t(CAT_KEY[c.category] || c.category)} · ${c.text || c.code}`)),
    );
    action = h("input", { id: "ack-action", name: "action" });
  }
  const comment = h("textarea", { id: "ack-comment", name: "comment", rows: "3" });
  const err = h("p", { class: "error", role: "alert" });
  const form = h(
    "form",
    {
      id: "ack-form",
      onsubmit: async (ev) => {
        ev.preventDefault();
        try {
          await api(`/alarms/${encodeURIComponent(alarm.alarm_id)}/ack`, {
            method: "POST",
            body: { comment: comment.value, cause: cause.value || null, action: action.value || null },
          });
          closeDialog();
          done();
        } catch (e) {
          err.textContent = e.message;
        }
      },
    },
    h("h2", {}, `${t("acknowledge")}: ${alarm.characteristic} ${alarm.rule}`),
    h("label", {}, t("comment"), comment),
    h("label", {}, t("cause"), cause, causeHints),
    list ? null : h("span", { class: "muted" }, t("causes_unavailable")),
    h("label", {}, t("action"), action),
    err,
    h(
      "div",
      { class: "buttons" },
      h("button", { type: "button", class: "plain", onclick: closeDialog }, t("cancel")),
      h("button", { type: "submit", id: "ack-submit" }, t("acknowledge")),
    ),
  );
  const d = $("#dialog");
  d.replaceChildren(form);
  d.showModal();
  comment.focus();
}

function shelveDialog(alarm, done) {
  const comment = h("textarea", { id: "shelve-comment", rows: "2", required: true });
  const minutes = h("input", { id: "shelve-minutes", type: "number", min: "1", value: "60" });
  const err = h("p", { class: "error", role: "alert" });
  const form = h(
    "form",
    {
      onsubmit: async (ev) => {
        ev.preventDefault();
        try {
          await api(`/alarms/${encodeURIComponent(alarm.alarm_id)}/shelve`, {
            method: "POST",
            body: { comment: comment.value, minutes: Number(minutes.value) },
          });
          closeDialog();
          done();
        } catch (e) {
          err.textContent = e.message;
        }
      },
    },
    h("h2", {}, `${t("shelve")}: ${alarm.characteristic} ${alarm.rule}`),
    h("label", {}, t("comment"), comment),
    h("label", {}, t("minutes"), minutes),
    err,
    h(
      "div",
      { class: "buttons" },
      h("button", { type: "button", class: "plain", onclick: closeDialog }, t("cancel")),
      h("button", { type: "submit", id: "shelve-submit" }, t("shelve")),
    ),
  );
  const d = $("#dialog");
  d.replaceChildren(form);
  d.showModal();
}

function alarmScreen(view) {
  const table = h("div", { class: "card", id: "alarm-table" });
  const filter = h(
    "select",
    { id: "alarm-status", onchange: () => refresh() },
    ["open", "closed", "all"].map((k) => h("option", { value: k }, t(`show_${k}`))),
  );
  const pareto = h("div", { class: "card", id: "pareto" });
  view.append(h("div", { class: "cols" }, table, pareto));

  async function unshelve(a) {
    try {
      await api(`/alarms/${encodeURIComponent(a.alarm_id)}/unshelve`, { method: "POST", body: {} });
      refresh();
    } catch (e) {
      failBox(table, e);
    }
  }

  function row(a) {
    const buttons = [];
    if (!a.acked_us) {
      buttons.push(h("button", { class: "ack", onclick: () => ackDialog(a, refresh) }, t("acknowledge")));
    }
    if (roleAtLeast("engineer")) {
      buttons.push(
        a.shelved_until
          ? h("button", { class: "plain unshelve", onclick: () => unshelve(a) }, t("unshelve"))
          : h("button", { class: "plain shelve", onclick: () => shelveDialog(a, refresh) }, t("shelve")),
      );
    }
    return h(
      "tr",
      { class: `sev-${a.severity}`, dataset: { alarm: a.alarm_id, status: a.status } },
      h("td", {}, fmtTime(a.raised_us)),
      h("td", {}, h("a", { href: `#/chart/${a.path}` }, `${a.line} · ${a.station} · ${a.characteristic}`)),
      h("td", {}, h("strong", {}, a.rule), ` (${a.chart})`),
      h("td", {}, a.severity),
      h("td", { class: "num" }, fmtNum(a.last_value)),
      h(
        "td",
        {},
        h("span", { class: `pill ${a.status}` }, t(a.status)),
        a.ack_user ? h("div", { class: "muted" }, `${t("by")} ${a.ack_user}${a.cause_code ? ` · ${a.cause_code}` : ""}`) : null,
      ),
      h("td", {}, h("div", { class: "row-actions" }, buttons)),
    );
  }

  async function refresh() {
    try {
      const [alarms, causes] = await Promise.all([
        api(`/alarms?limit=200&status=${filter.value}`),
        api("/alarms/pareto?since=-30d"),
      ]);
      table.replaceChildren(
        h("div", { class: "toolbar" }, h("h2", {}, t("open_alarm_list")), h("label", {}, t("status"), filter)),
        alarms.length
          ? h(
              "table",
              {},
              h(
                "thead",
                {},
                h(
                  "tr",
                  {},
                  ["raised", "characteristic", "rule", "severity", "value", "status", "actions"].map((k) =>
                    h("th", {}, t(k)),
                  ),
                ),
              ),
              h("tbody", {}, alarms.map(row)),
            )
          : h("p", { class: "muted" }, t("no_alarms")),
      );
      const bars = causes.map((c) => ({
        label: c.code || c.category,
        title: wording({ code: c.code, text: c.text, text_zh: null }),
        count: c.count,
      }));
      pareto.replaceChildren(
        h("h2", {}, t("pareto")),
        bars.length ? drawPareto(bars, { count: t("count"), cum: t("cum") }) : h("p", { class: "muted" }, t("pareto_empty")),
      );
    } catch (e) {
      if (e.status !== 401) failBox(view, e);
    }
  }
  const soon = debounce(refresh, 250);
  return { refresh, onAlarm: soon, onPoint: () => {} };
}

// ------------------------------------------------------------------ chart view

async function charPicker(current, target) {
  const chars = await api("/characteristics");
  const sel = h(
    "select",
    { id: "char-pick", onchange: () => (location.hash = `#/${target}/${sel.value}`) },
    chars.map((c) => h("option", { value: c.path, selected: c.path === current }, c.path)),
  );
  return { sel, chars };
}

function chartScreen(view, path, engineer = false) {
  const head = h("div", { class: "toolbar" });
  const chartBox = h("div", { class: "card", id: "control-chart" });
  const side = h("div", {});
  const engBox = h("div", {});
  const main = h("div", {}, chartBox, engBox);
  view.append(head, h("div", { class: "cols" }, main, side));
  const st = { path, pts: null, info: null, shown: 100, end: null, sel: null, frame: 0 };

  const zoom = h("input", {
    id: "zoom",
    type: "range",
    min: "10",
    max: "1000",
    step: "10",
    value: String(st.shown),
    oninput: () => {
      st.shown = Number(zoom.value);
      draw();
    },
  });

  // panning through the kept history: ``st.end`` null follows the newest point
  const pan = h("input", {
    id: "pan",
    type: "range",
    min: "0",
    max: "0",
    step: "1",
    value: "0",
    oninput: () => {
      const v = Number(pan.value);
      st.end = v >= st.pts.n ? null : Math.max(v, 1);
      draw();
    },
  });

  function draw() {
    if (!st.pts) return;
    const n = st.pts.n;
    if (st.end !== null) st.end = Math.min(Math.max(st.end, Math.min(st.shown, n)), n);
    const last = st.end === null ? n : st.end;
    const first = Math.max(0, last - st.shown);
    pan.max = String(n);
    pan.value = String(last);
    chartBox.replaceChildren(
      h("h2", {}, `${t("chart_of")} · ${st.path}`),
      drawControlChart(st.pts, first, last, {
        lsl: st.info?.config?.lsl,
        usl: st.info?.config?.usl,
        labels: { center: t("center"), ucl: t("ucl"), lcl: t("lcl"), usl: t("usl"), lsl: t("lsl") },
        selected: st.sel,
        onPick: (i) => {
          st.sel = i;
          draw();
          showPoint(i);
        },
        onWheel,
      }),
    );
    if (st.pts.disp_statistic?.some((v) => v !== null)) {
      // the dispersion chart (MR, R or S) under the centre chart, same window
      const d = st.pts;
      const disp = {
        n: d.n,
        time_us: d.time_us,
        statistic: d.disp_statistic,
        center: d.disp_center,
        lcl: d.disp_lcl,
        ucl: d.disp_ucl,
        sigma: d.disp_center.map(() => null),
        violations: d.disp_statistic.map(() => ""),
      };
      chartBox.append(
        drawControlChart(disp, first, last, {
          labels: { center: t("center"), ucl: t("ucl"), lcl: t("lcl") },
          height: 200,
          className: "dispersion-chart",
          onWheel,
        }),
      );
    }
  }

  function onWheel(dy, dx) {
    if (dx) {
      // sideways (or shift+wheel): pan by a tenth of the window
      const last = st.end === null ? st.pts.n : st.end;
      const step = Math.max(1, Math.round(st.shown / 10)) * Math.sign(dx);
      st.end = last + step >= st.pts.n ? null : last + step;
    } else {
      st.shown = Math.max(10, Math.min(1000, Math.round(st.shown * (dy > 0 ? 1.25 : 0.8))));
      zoom.value = String(st.shown);
    }
    draw();
  }

  const pointBox = h("div", { class: "card", id: "point-context" }, h("p", { class: "muted" }, t("click_point")));

  function showPoint(i) {
    const p = st.pts;
    const kv = [
      [t("time"), `${fmtTime(p.time_us[i])}.${String(Math.floor(p.time_us[i] / 1000) % 1000).padStart(3, "0")}`],
      [t("value"), fmtNum(p.statistic[i])],
      [t("zone"), p.zone[i] || "—"],
      [t("rule"), p.violations[i] || "—"],
      [t("serial"), p.serial[i] || "—"],
      [t("limits_id"), p.limits_id[i] || "—"],
    ];
    const box = [h("h2", {}, t("point_context")), h("dl", { class: "kv" }, kv.flatMap(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]))];
    if (engineer && $("#rc-exclude")) {
      // recompute with this point left out: by its part serial, else by its exact time
      const spec = p.serial[i] ? `serial:${p.serial[i]}` : `time:${rfc3339(p.time_us[i])}`;
      box.push(
        h(
          "button",
          {
            type: "button",
            id: "exclude-point",
            class: "plain",
            onclick: () => {
              const area = $("#rc-exclude");
              if (!area.value.split("\n").includes(spec)) area.value = `${area.value.trim()}\n${spec}`.trim();
            },
          },
          `${t("exclude_point")} (${spec})`,
        ),
      );
    }
    // the 5M1E snapshot of the sample that completed the point (kept with each recent point)
    const ctx = (p.context && p.context[i]) || {};
    const rows = Object.entries(ctx).map(([k, v]) => [k, typeof v === "object" ? JSON.stringify(v) : String(v)]);
    if (rows.length) box.push(h("h2", {}, t("context")), h("dl", { class: "kv" }, rows.flatMap(([k, v]) => [h("dt", {}, k), h("dd", {}, v)])));
    pointBox.replaceChildren(...box);
  }

  async function loadCapability() {
    const box = h("div", { class: "card", id: "capability" });
    const values = st.pts.statistic.filter((x) => x !== null);
    const spec = { lsl: st.info?.config?.lsl, usl: st.info?.config?.usl };
    box.append(h("h2", {}, t("histogram")), drawHistogram(values, spec, { lsl: t("lsl"), usl: t("usl") }));
    try {
      const r = await api(`/characteristics/${enc(st.path)}/capability`);
      const c = r.capability;
      const rows = ["Cp", "Cpk", "Pp", "Ppk", "Cpm"].map((k) => [
        k,
        `${fmtNum(c[k]?.value, 3)}  [${fmtNum(c[k]?.lower, 3)}, ${fmtNum(c[k]?.upper, 3)}]`,
      ]);
      rows.push(["n", String(c.n)], ["σ within", fmtNum(c.sigma_within)], ["σ overall", fmtNum(c.sigma_overall)]);
      rows.push(["ppm", fmtNum(c.expected_ppm_outside, 3)]);
      box.append(h("h2", {}, t("capability")), h("dl", { class: "kv" }, rows.flatMap(([k, v]) => [h("dt", {}, k), h("dd", {}, v)])));
    } catch (e) {
      box.append(h("h2", {}, t("capability")), h("p", { class: "muted" }, `${t("no_capability")}: ${e.message}`));
    }
    return box;
  }

  async function refresh() {
    try {
      const { sel, chars } = await charPicker(st.path, engineer ? "engineer" : "chart");
      if (!st.path && chars.length) st.path = chars[0].path;
      if (!st.path) return;
      sel.value = st.path;
      head.replaceChildren(
        h("label", {}, t("pick_char"), sel),
        h("label", {}, t("zoom"), zoom),
        h("label", {}, t("pan"), pan),
        h("a", { href: `#/entry/${st.path}`, id: "chart-to-entry" }, `✎ ${t("nav_entry")}`),
      );
      [st.pts, st.info] = await Promise.all([
        api(`/characteristics/${enc(st.path)}/points?limit=1000`),
        api(`/characteristics/${enc(st.path)}`),
      ]);
      draw();
      const cap = await loadCapability();
      side.replaceChildren(cap, pointBox);
      if (engineer) engBox.replaceChildren(await engineerPanel(st.path));
    } catch (e) {
      if (e.status !== 401) failBox(view, e);
    }
  }

  const DISP = ["disp_statistic", "disp_center", "disp_lcl", "disp_ucl"];
  const COLS = ["time_us", "statistic", "center", "lcl", "ucl", "zone", "violations", "limits_id"];
  return {
    refresh,
    onAlarm: () => {},
    onPoint(ev) {
      if (!st.pts) return;
      let added = 0;
      ev.path.forEach((p, k) => {
        if (p !== st.path) return;
        for (const c of COLS) st.pts[c].push(ev[c][k]);
        st.pts.serial.push(null);
        st.pts.context?.push(null); // the stream carries no context: a reload shows it
        for (const c of DISP) st.pts[c]?.push(null); // the stream carries the centre chart only
        // the stream carries no σ; the limits are centre ± 3σ for the charts drawn here
        st.pts.sigma.push(ev.center[k] !== null && ev.ucl[k] !== null ? (ev.ucl[k] - ev.center[k]) / 3 : null);
        added += 1;
      });
      if (!added) return;
      st.pts.n += added;
      if (st.pts.n > 1000) {
        const cut = st.pts.n - 1000;
        for (const c of [...COLS, ...DISP, "serial", "sigma", "context"]) st.pts[c]?.splice(0, cut);
        st.pts.n = 1000;
        if (st.sel !== null) st.sel = st.sel >= cut ? st.sel - cut : null;
      }
      cancelAnimationFrame(st.frame);
      st.frame = requestAnimationFrame(draw);
    },
  };
}

// ------------------------------------------------------------------ engineer view

function engineerScreen(view, path) {
  return chartScreen(view, path, true);
}

async function engineerPanel(path) {
  const box = h("div", { class: "card", id: "limits" });
  const L = await api(`/characteristics/${enc(path)}/limits`);
  const f = L.in_force;
  if (f) {
    const rows = [
      ["id", f.id],
      [t("center"), fmtNum(f.center)],
      ["σ", fmtNum(f.sigma)],
      [t("lcl"), fmtNum(f.lcl)],
      [t("ucl"), fmtNum(f.ucl)],
      [t("method"), f.method],
      ["n", f.n_points],
      [t("reason"), f.reason || "—"],
    ];
    box.append(h("h2", {}, t("limits_in_force")), h("dl", { class: "kv" }, rows.flatMap(([k, v]) => [h("dt", {}, k), h("dd", {}, String(v ?? "—"))])));
  }
  box.append(
    h("h2", {}, t("limits_history")),
    h(
      "table",
      { id: "limits-history" },
      h("thead", {}, h("tr", {}, [t("effective_from"), "id", t("assigned_by"), t("reason"), ""].map((k) => h("th", {}, k)))),
      h(
        "tbody",
        {},
        [...L.history].reverse().map((a) =>
          h(
            "tr",
            {},
            h("td", {}, fmtTime(a.effective_from_us)),
            h("td", {}, a.limits_id),
            h("td", {}, `${a.user} (${a.source})`),
            h("td", {}, a.reason),
            h("td", {}, a.cancelled ? "✕" : ""),
          ),
        ),
      ),
    ),
  );
  if (roleAtLeast("engineer")) box.append(recomputeForm(path));
  return box;
}

function recomputeForm(path) {
  const from = h("input", { id: "rc-from", value: "-8h" });
  const to = h("input", { id: "rc-to", value: "now" });
  const reason = h("input", { id: "rc-reason", required: true });
  const exclude = h("textarea", { id: "rc-exclude", rows: "3" });
  const dry = h("input", { id: "rc-dry", type: "checkbox", checked: true });
  const out = h("div", { id: "rc-result" });
  const form = h(
    "form",
    {
      class: "stack",
      id: "recompute",
      onsubmit: async (ev) => {
        ev.preventDefault();
        out.replaceChildren();
        try {
          const r = await api(`/characteristics/${enc(path)}/limits/recompute`, {
            method: "POST",
            body: {
              from: from.value,
              to: to.value,
              reason: reason.value,
              exclude: exclude.value.split("\n").map((s) => s.trim()).filter(Boolean),
              dry_run: dry.checked,
            },
          });
          const line = (rec) => (rec ? `${rec.id}: ${t("center")} ${fmtNum(rec.center)}, σ ${fmtNum(rec.sigma)}, ${t("lcl")} ${fmtNum(rec.lcl)}, ${t("ucl")} ${fmtNum(rec.ucl)}` : "—");
          out.append(
            h("p", {}, `old ${line(r.old)}`),
            h("p", {}, `new ${line(r.new)}`),
            h("p", { class: "muted" }, `${r.subgroups} subgroups, ${r.usable} usable, ${r.assigned ? "assigned" : "not assigned"}`),
          );
        } catch (e) {
          out.append(h("p", { class: "error" }, e.message));
        }
      },
    },
    h("h2", {}, t("recompute")),
    h("div", { class: "toolbar" }, h("label", {}, t("from"), from), h("label", {}, t("to"), to)),
    h("label", {}, t("reason"), reason),
    h("label", {}, t("exclude"), exclude),
    h("label", { class: "inline" }, dry, t("dry_run")),
    h("div", {}, h("button", { type: "submit" }, t("run"))),
    out,
  );
  return form;
}

// ------------------------------------------------------------------ manual entry

// the 5M1E fields of the form, in this order; others the gateway names follow
const ENTRY_FIELDS = ["operator", "machine", "lot", "method", "gauge_id"];
const FIELD_KEY = { operator: "f_operator", machine: "f_machine", lot: "f_lot", method: "f_method", gauge_id: "f_gauge" };
const fieldLabel = (name) =>
  FIELD_KEY[name] ? t(FIELD_KEY[name]) : name.startsWith("env_") ? `${t("f_env")} · ${name.slice(4)}` : name;

/** The client's mirror of the server's entry checks (the server decides): an error text or null. */
export function entryProblem(text, form) {
  const typed = String(text).trim().replace(",", ".");
  if (!typed) return t("value_missing");
  const v = Number(typed);
  if (!/^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$/.test(typed) || !Number.isFinite(v)) return t("value_not_number");
  const m = form.manual || {};
  if (m.plausible_min !== null && m.plausible_min !== undefined && v < m.plausible_min)
    return `${t("value_below")} ${fmtNum(m.plausible_min)}`;
  if (m.plausible_max !== null && m.plausible_max !== undefined && v > m.plausible_max)
    return `${t("value_above")} ${fmtNum(m.plausible_max)}`;
  const frac = /e/i.test(typed) ? null : (typed.split(".")[1] || "").replace(/0+$/, "");
  if (m.decimals !== null && m.decimals !== undefined && frac !== null && frac.length > m.decimals)
    return `${t("value_decimals")} ${m.decimals}`;
  return null;
}

function confirmDialog(form, value) {
  return new Promise((resolve) => {
    const unit = form.unit ? ` ${form.unit}` : "";
    const side = form.usl !== null && value > form.usl ? "above_usl" : "below_lsl";
    const by = side === "above_usl" ? value - form.usl : form.lsl - value;
    const done = (ok) => {
      closeDialog();
      resolve(ok);
    };
    const rows = [
      [t("usl"), form.usl === null ? "—" : `${fmtNum(form.usl)}${unit}`],
      [t("value"), `${fmtNum(value)}${unit}`],
      [t("lsl"), form.lsl === null ? "—" : `${fmtNum(form.lsl)}${unit}`],
    ];
    const box = h(
      "form",
      {
        id: "confirm-form",
        onsubmit: (ev) => {
          ev.preventDefault();
          done(true);
        },
      },
      h("h2", {}, t("confirm_title")),
      h("p", { class: "warn-text", id: "confirm-text" }, `${fmtNum(value)}${unit} ${t(side)} ${t("outside_by")} ${fmtNum(by)}${unit}`),
      h("dl", { class: "kv spec-scale" }, rows.flatMap(([k, v]) => [h("dt", {}, k), h("dd", { class: k === t("value") ? "out" : "" }, v)])),
      h("p", { class: "muted" }, t("confirm_hint")),
      h(
        "div",
        { class: "buttons" },
        h("button", { type: "button", class: "plain", id: "confirm-cancel", onclick: () => done(false) }, t("cancel")),
        h("button", { type: "submit", class: "danger", id: "confirm-submit" }, t("confirm_store")),
      ),
    );
    const d = $("#dialog");
    d.replaceChildren(box);
    d.addEventListener("cancel", () => resolve(false), { once: true });
    d.showModal();
    $("#confirm-cancel").focus(); // the safe choice has the focus
  });
}

function entryScreen(view, path) {
  const head = h("div", { class: "toolbar" });
  const formBox = h("div", { class: "card", id: "entry" });
  const chartBox = h("div", { class: "card", id: "entry-chart" });
  view.append(head, h("div", { class: "cols entry-cols" }, formBox, chartBox));
  const st = { path, form: null, pts: null, frame: 0 };

  function drawChart() {
    if (!st.pts) return;
    const n = st.pts.n;
    chartBox.dataset.n = String(n);
    chartBox.replaceChildren(
      h("h2", {}, `${t("chart_of")} · ${st.form?.id || ""}`),
      n
        ? drawControlChart(st.pts, Math.max(0, n - 30), n, {
            lsl: st.form?.lsl,
            usl: st.form?.usl,
            labels: { center: t("center"), ucl: t("ucl"), lcl: t("lcl"), usl: t("usl"), lsl: t("lsl") },
            height: 360,
          })
        : h("p", { class: "muted" }, t("no_data")),
    );
  }

  function renderForm() {
    const f = st.form;
    const unit = f.unit || "";
    const m = f.manual || {};
    const step = m.decimals === null || m.decimals === undefined ? null : (10 ** -m.decimals).toFixed(m.decimals);
    const value = h("input", {
      id: "entry-value",
      name: "value",
      inputmode: "decimal",
      autocomplete: "off",
      required: true,
      placeholder: step ? step.replace(/1$/, "0") : "",
    });
    const serial = h("input", { id: "entry-serial", name: "serial", autocomplete: "off" });
    const names = [...ENTRY_FIELDS, ...Object.keys(f.fields || {}).filter((k) => !ENTRY_FIELDS.includes(k))];
    const inputs = names.map((name) =>
      h("input", { id: `entry-f-${name}`, dataset: { field: name }, value: f.fields?.[name] ?? "" }),
    );
    const err = h("p", { class: "error", role: "alert", id: "entry-error" });
    const ok = h("p", { class: "ok-text", role: "status", id: "entry-ok" });
    const specs = [
      [t("lsl"), f.lsl],
      [t("nominal"), f.nominal],
      [t("usl"), f.usl],
    ]
      .filter(([, v]) => v !== null && v !== undefined)
      .map(([k, v]) => `${k} ${fmtNum(v)}`)
      .join(" · ");
    const checks = [
      m.plausible_min !== null || m.plausible_max !== null
        ? `${t("plausible")} ${fmtNum(m.plausible_min)} … ${fmtNum(m.plausible_max)}`
        : null,
      m.decimals !== null && m.decimals !== undefined ? `${m.decimals} ${t("decimals")}` : null,
    ].filter(Boolean);

    async function send(v, confirm) {
      const context = {};
      for (const el of inputs) if (el.value.trim()) context[el.dataset.field] = el.value.trim();
      return api(`/characteristics/${enc(f.path)}/measurements`, {
        method: "POST",
        body: { value: v, serial: serial.value.trim() || null, confirm, context },
      });
    }

    const submit = h("button", { type: "submit", id: "entry-submit" }, t("store"));
    const form = h(
      "form",
      {
        id: "entry-form",
        class: "stack",
        novalidate: true,
        onsubmit: async (ev) => {
          ev.preventDefault();
          err.textContent = ok.textContent = "";
          const problem = entryProblem(value.value, f);
          if (problem) {
            err.textContent = problem;
            value.focus();
            return;
          }
          const v = Number(value.value.trim().replace(",", "."));
          submit.disabled = true;
          try {
            let r;
            try {
              r = await send(v, false);
            } catch (e) {
              if (e.status !== 409) throw e;
              if (!(await confirmDialog(f, v))) {
                err.textContent = t("not_stored");
                return;
              }
              r = await send(v, true);
            }
            ok.textContent = `${t("stored")}: ${fmtNum(r.value)} ${unit}${r.serial ? ` · ${t("serial")} ${r.serial}` : ""} · ${fmtTime(Date.now() * 1000).slice(11)}`;
            value.value = "";
            serial.value = "";
          } catch (e) {
            if (e.status !== 401) err.textContent = `${t(e.status === 422 ? "entry_rejected" : "error")}: ${e.message}`;
          } finally {
            submit.disabled = false;
            value.focus();
          }
        },
      },
      h("label", { class: "value-field", for: "entry-value" }, t("value")),
      h("div", { class: "with-unit" }, value, h("span", { class: "unit" }, unit), submit),
      h("div", { class: "messages" }, err, ok),
      h("label", {}, t("serial"), serial),
      h(
        "fieldset",
        { class: "context" },
        h("legend", {}, t("context")),
        names.map((name, k) => h("label", {}, fieldLabel(name), inputs[k])),
      ),
    );
    formBox.replaceChildren(
      h("h2", {}, `${t("nav_entry")} · ${f.path}`),
      h("p", { class: "specs", id: "entry-specs" }, specs ? `${specs} ${unit}` : t("no_specs")),
      checks.length ? h("p", { class: "muted", id: "entry-checks" }, checks.join(" · ")) : null,
      form,
    );
    value.focus();
  }

  async function refresh() {
    try {
      const { sel, chars } = await charPicker(st.path, "entry");
      if (!st.path && chars.length) st.path = chars[0].path;
      if (!st.path) return;
      sel.value = st.path;
      head.replaceChildren(
        h("label", {}, t("pick_char"), sel),
        h("a", { href: `#/chart/${st.path}`, id: "entry-to-chart" }, t("nav_chart")),
      );
      [st.form, st.pts] = await Promise.all([
        api(`/characteristics/${enc(st.path)}/entry`),
        api(`/characteristics/${enc(st.path)}/points?limit=200`),
      ]);
      if (!$("#entry-form")) renderForm(); // a reconnect keeps what is being typed
      drawChart();
    } catch (e) {
      if (e.status !== 401) failBox(view, e);
    }
  }

  const COLS = ["time_us", "statistic", "center", "lcl", "ucl", "violations"];
  return {
    refresh,
    onAlarm: () => {},
    onPoint(ev) {
      if (!st.pts) return;
      let added = 0;
      ev.path.forEach((p, k) => {
        if (p !== st.path) return;
        for (const c of COLS) st.pts[c].push(ev[c][k]);
        st.pts.sigma.push(ev.center[k] !== null && ev.ucl[k] !== null ? (ev.ucl[k] - ev.center[k]) / 3 : null);
        added += 1;
      });
      if (!added) return;
      st.pts.n += added;
      cancelAnimationFrame(st.frame);
      st.frame = requestAnimationFrame(drawChart);
    },
  };
}

// ------------------------------------------------------------------ boot

async function boot() {
  setLanguage(initialLanguage());
  applyI18n();
  $("#login-form").addEventListener("submit", onLogin);
  $("#lang").addEventListener("click", toggleLanguage);
  $("#login-lang").addEventListener("click", toggleLanguage);
  $("#logout").addEventListener("click", onLogout);
  window.addEventListener("hashchange", route);
  try {
    started(await api("/auth/me", { quiet401: true }));
  } catch {
    showLogin();
  }
}

boot();
