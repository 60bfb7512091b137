/* vitalab operators' dashboard. Plain JavaScript, no build step; uPlot (vendored) draws the occupancy chart.
 *
 * The API key is asked for once and kept in this tab's sessionStorage; every request sends it as
 * `Authorization: Bearer`. The live floor is read with fetch() as a stream of Server-Sent Events (an
 * EventSource cannot send that header), resuming with Last-Event-ID after a break. "Now" is the server's:
 * the live snapshot's `at`, moved on by the page's monotonic clock, so the page shows the server's day. */
"use strict";

(() => {
  const KEY = "vitalab.key";
  const REPORT_EVERY_MS = 60_000;
  const TYPICAL_WEEKS = 4;
  const SLOT_MIN = 15;
  const $ = (id) => document.getElementById(id);

  const state = {
    key: sessionStorage.getItem(KEY),
    site: null,
    tz: "UTC",
    serverAt: null, // Date of the snapshot
    perfAt: 0, // performance.now() at the snapshot
    todayStart: null,
    tiles: new Map(),
    abort: null,
    reportTimer: null,
    chart: null,
    generation: 0,
  };

  // --- time ------------------------------------------------------------------------------------------
  function serverNow() {
    if (!state.serverAt) return null;
    return new Date(state.serverAt.getTime() + (performance.now() - state.perfAt));
  }
  function fmtTime(d) {
    return new Intl.DateTimeFormat(undefined, { timeZone: state.tz, hour: "2-digit", minute: "2-digit" })
      .format(d);
  }
  function fmtHour(d) {
    return new Intl.DateTimeFormat(undefined, { timeZone: state.tz, hour: "2-digit", hourCycle: "h23" })
      .format(d);
  }
  function ago(iso) {
    const now = serverNow();
    if (!iso || !now) return "";
    const s = Math.max(0, (now.getTime() - Date.parse(iso)) / 1000);
    if (s < 60) return `${Math.round(s)} s`;
    if (s < 3600) return `${Math.round(s / 60)} min`;
    if (s < 86400) return `${Math.floor(s / 3600)} h ${Math.round((s % 3600) / 60)} min`;
    return `${Math.round(s / 86400)} d`;
  }

  // --- the API -----------------------------------------------------------------------------------------
  class Unauthorized extends Error {}

  async function api(path, params) {
    const url = new URL(path, location.origin);
    for (const [k, v] of Object.entries(params || {})) if (v !== undefined && v !== null) url.searchParams.set(k, v);
    const r = await fetch(url, { headers: { Authorization: `Bearer ${state.key}`, Accept: "application/json" } });
    if (r.status === 401) throw new Unauthorized("the key was refused");
    if (!r.ok) {
      let detail = `${r.status}`;
      try { detail = (await r.json()).detail || detail; } catch (_) { /* not a problem document */ }
      throw new Error(`${path}: ${detail}`);
    }
    return r.json();
  }

  function say(text) { $("status").textContent = text; }

  function failed(err) {
    if (err instanceof Unauthorized) { signOut("That key was refused (wrong, expired or revoked)."); return; }
    say(String(err.message || err));
  }

  // --- key -------------------------------------------------------------------------------------------
  function askKey(message) {
    $("login-error").textContent = message || "";
    $("key").value = "";
    if (!$("login").open) $("login").showModal();
  }

  function signOut(message) {
    sessionStorage.removeItem(KEY);
    state.key = null;
    stop();
    $("signout").hidden = true;
    askKey(message);
  }

  $("login-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const key = $("key").value.trim();
    if (!key) return;
    state.key = key;
    sessionStorage.setItem(KEY, key);
    $("login").close();
    start();
  });
  $("signout").addEventListener("click", () => signOut(""));

  // --- sites -------------------------------------------------------------------------------------------
  async function loadSites() {
    const devices = await api("/v1/devices", { limit: 1000 });
    const sites = [...new Set(devices.map((d) => d.site_id))].sort();
    const wanted = new URLSearchParams(location.hash.slice(1)).get("site");
    if (wanted && !sites.includes(wanted)) sites.unshift(wanted);
    const select = $("site");
    select.replaceChildren(...sites.map((s) => new Option(s, s)));
    return wanted || sites[0] || null;
  }

  $("site").addEventListener("change", () => {
    location.hash = `site=${encodeURIComponent($("site").value)}`;
    openSite($("site").value);
  });

  // --- live floor: a fetch stream of Server-Sent Events ---------------------------------------------------
  function parseBlock(block) {
    const ev = { event: "message", data: [], id: null, retry: null };
    for (const line of block.split(/\r\n|\r|\n/)) {
      if (!line || line.startsWith(":")) continue;
      const i = line.indexOf(":");
      const name = i < 0 ? line : line.slice(0, i);
      let value = i < 0 ? "" : line.slice(i + 1);
      if (value.startsWith(" ")) value = value.slice(1);
      if (name === "data") ev.data.push(value);
      else if (name === "event") ev.event = value;
      else if (name === "id") ev.id = value;
      else if (name === "retry" && /^\d+$/.test(value)) ev.retry = Number(value);
    }
    return ev;
  }

  async function follow(site, generation, signal) {
    let lastId = null;
    let retryMs = 2000;
    while (generation === state.generation) {
      try {
        const headers = { Authorization: `Bearer ${state.key}`, Accept: "text/event-stream" };
        if (lastId) headers["Last-Event-ID"] = lastId;
        const r = await fetch(`/v1/sites/${encodeURIComponent(site)}/live`, { headers, signal });
        if (r.status === 401) throw new Unauthorized("the key was refused");
        if (!r.ok) throw new Error(`live floor: ${r.status}`);
        const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
        let buf = "";
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buf += value;
          let m;
          while ((m = /\r\n\r\n|\n\n|\r\r/.exec(buf)) !== null) {
            const ev = parseBlock(buf.slice(0, m.index));
            buf = buf.slice(m.index + m[0].length);
            if (ev.retry !== null) retryMs = ev.retry;
            if (ev.id !== null) lastId = ev.id;
            if (ev.data.length && generation === state.generation) onEvent(ev.event, JSON.parse(ev.data.join("\n")));
          }
        }
        setBroker("disconnected", "stream ended; reconnecting");
      } catch (err) {
        if (signal.aborted) return;
        if (err instanceof Unauthorized) { failed(err); return; }
        setBroker("disconnected", "reconnecting");
      }
      await new Promise((ok) => setTimeout(ok, retryMs));
    }
  }

  function setBroker(value, text) {
    const pill = $("broker");
    pill.dataset.state = value;
    pill.textContent = text || {
      connected: "live", connecting: "connecting…", disconnected: "broker unreachable", none: "no broker: stored state",
    }[value] || value;
  }

  function onEvent(kind, data) {
    if (kind === "snapshot") {
      state.serverAt = new Date(data.at);
      state.perfAt = performance.now();
      state.tz = data.timezone;
      state.todayStart = new Date(data.today_start);
      state.tiles.clear();
      $("floor").replaceChildren();
      $("straps").replaceChildren();
      for (const tile of data.devices) drawTile(tile);
      setBroker(data.broker);
      summarise();
      if (!state.reportTimer) {
        loadReports();
        state.reportTimer = setInterval(loadReports, REPORT_EVERY_MS);
      }
    } else if (kind === "device") {
      drawTile(data);
      summarise();
    } else if (kind === "broker") {
      setBroker(data.broker);
    }
  }

  const KIND = {
    bike: "bike", treadmill: "treadmill", rower: "rower", cross_trainer: "cross trainer",
    hr_strap: "heart-rate strap", power_meter: "power meter",
  };

  function num(v, digits) { return v === null || v === undefined ? null : Number(v).toFixed(digits); }

  function values(t) {
    const parts = [];
    const add = (v, unit) => { if (v !== null) parts.push([v, unit]); };
    if (t.kind === "treadmill") add(num(t.speed_kmh, 1), "km/h");
    else if (t.kind === "rower") { add(num(t.power_w, 0), "W"); add(num(t.stroke_rate_spm, 0), "spm"); }
    else if (t.kind !== "hr_strap") {
      add(num(t.power_w, 0), "W");
      add(num(t.cadence_rpm, 0), "rpm");
      if (!parts.length) add(num(t.speed_kmh, 1), "km/h");
    }
    return parts;
  }

  function tileState(t) {
    if (t.status === "offline") return "offline";
    if (t.status === "silent") return "silent";
    return t.in_use ? "in_use" : "free";
  }

  function drawTile(t) {
    let el = state.tiles.get(t.device_id);
    if (!el) {
      el = document.createElement("article");
      el.className = "tile";
      el.dataset.device = t.device_id;
      el.innerHTML = '<div class="id"></div><div class="kind"></div><div class="state"></div>'
        + '<div class="values"></div><div class="zone" role="img"></div>';
      state.tiles.set(t.device_id, el);
      // machines on the floor, straps (personal devices) in a compact strip below, each by id
      const box = $(t.kind === "hr_strap" ? "straps" : "floor");
      const ids = [...box.querySelectorAll(".tile")].map((x) => x.dataset.device);
      const next = ids.filter((id) => id > t.device_id).sort()[0];
      box.insertBefore(el, next ? box.querySelector(`[data-device="${CSS.escape(next)}"]`) : null);
    }
    el.tile = t;
    const s = tileState(t);
    el.dataset.state = s;
    el.dataset.power = t.power_w === null ? "" : String(t.power_w);
    el.dataset.zone = t.hr_zone === null ? "" : String(t.hr_zone);
    el.querySelector(".id").textContent = t.device_id;
    el.querySelector(".kind").textContent = KIND[t.kind] || t.kind || "device";
    const words = { in_use: "in use", free: "free", silent: "silent", offline: "offline" }[s];
    el.querySelector(".state").textContent = t.since ? `${words} · ${ago(t.since)}` : words;
    el.querySelector(".state").title = t.since ? `since ${fmtTime(new Date(t.since))}` : "";
    const box = el.querySelector(".values");
    box.replaceChildren();
    for (const [v, unit] of values(t)) {
      box.append(v);
      const small = document.createElement("small");
      small.textContent = ` ${unit} `;
      box.append(small);
    }
    const zone = el.querySelector(".zone");
    zone.className = t.hr_zone ? `zone z${t.hr_zone}` : "zone";
    zone.setAttribute("aria-label", t.hr_zone ? `heart-rate zone ${t.hr_zone}` : "no heart rate");
    zone.title = t.hr_zone ? `Z${t.hr_zone}` : "";
  }

  function summarise() {
    const count = (straps) => {
      const all = [...state.tiles.values()].filter((el) => (el.tile.kind === "hr_strap") === straps)
        .map((el) => tileState(el.tile));
      const n = (k) => all.filter((s) => s === k).length;
      return `${n("in_use")} in use · ${n("free")} free · ${n("silent")} silent · ${n("offline")} offline`;
    };
    $("floor-summary").textContent = `machines: ${count(false)}`;
    $("straps-summary").textContent = count(true);
    const now = serverNow();
    if (now) $("clock").textContent = `${fmtTime(now)} (${state.tz})`;
  }

  setInterval(() => {
    // "since" moves on with the server's time
    for (const el of state.tiles.values()) if (el.tile) drawTile(el.tile);
    summarise();
  }, 15_000);

  // --- reports -------------------------------------------------------------------------------------------
  async function loadReports() {
    const site = state.site;
    const now = serverNow();
    if (!site || !now) return;
    const jobs = [heatmap(site, now), occupancy(site, now), health(site), vitality(site)];
    const results = await Promise.allSettled(jobs);
    const bad = results.find((r) => r.status === "rejected");
    if (bad) failed(bad.reason); else say(`updated ${fmtTime(now)}`);
  }

  function color(u) {
    // 0 → pale, 1 → deep green
    const a = Math.max(0, Math.min(1, u));
    return `rgba(31, 122, 77, ${(0.08 + 0.92 * a).toFixed(3)})`;
  }

  async function heatmap(site, now) {
    const data = await api(`/v1/sites/${encodeURIComponent(site)}/utilisation`, {
      since: state.todayStart.toISOString(), until: now.toISOString(),
    });
    const box = $("heatmap");
    box.replaceChildren();
    const machines = data.devices.filter((d) => d.kind !== "hr_strap");
    if (!machines.length || !data.hours.length) {
      box.innerHTML = '<p class="empty">No machines at this site.</p>';
      return;
    }
    box.style.gridTemplateColumns = `minmax(6rem, max-content) repeat(${data.hours.length}, minmax(1.4rem, 1fr))`;
    const corner = document.createElement("div");
    box.append(corner);
    for (const h of data.hours) {
      const c = document.createElement("div");
      c.className = "hdr";
      c.textContent = fmtHour(new Date(h));
      box.append(c);
    }
    for (const d of machines) {
      const label = document.createElement("div");
      label.className = "dev";
      label.textContent = d.device_id;
      box.append(label);
      d.utilisation.forEach((u, j) => {
        const c = document.createElement("div");
        c.className = "cell";
        c.dataset.u = String(u);
        c.style.background = u > 0 ? color(u) : "";
        c.title = `${d.device_id}, ${fmtHour(new Date(data.hours[j]))}:00: ${Math.round(u * 100)} % in use, `
          + `${d.minutes_with_data[j]} min with data`;
        box.append(c);
      });
    }
  }

  function todayRow(rows) {
    // a range within today has one weekday with values: today's
    const i = rows.findIndex((row) => row.some((v) => v !== null));
    return i < 0 ? [null, null] : [i, rows[i]];
  }

  async function occupancy(site, now) {
    const path = `/v1/sites/${encodeURIComponent(site)}/occupancy`;
    const typicalSince = new Date(state.todayStart.getTime() - TYPICAL_WEEKS * 7 * 86400_000);
    const [today, typical] = await Promise.all([
      api(path, { since: state.todayStart.toISOString(), until: now.toISOString(), slot_min: SLOT_MIN }),
      api(path, { since: typicalSince.toISOString(), until: state.todayStart.toISOString(), slot_min: SLOT_MIN }),
    ]);
    const [weekday, todayValues] = todayRow(today.machines_in_use);
    const box = $("occupancy");
    if (weekday === null) {
      box.innerHTML = '<p class="empty">Nothing yet today.</p>';
      if (state.chart) { state.chart.destroy(); state.chart = null; }
      return;
    }
    const typicalValues = typical.machines_in_use[weekday];
    const hours = todayValues.map((_, j) => (j * SLOT_MIN) / 60);
    const name = new Intl.DateTimeFormat(undefined, { timeZone: state.tz, weekday: "long" }).format(now);
    $("occ-note").textContent = `machines in a session, today vs a typical ${name} (last ${TYPICAL_WEEKS} weeks)`;
    const data = [hours, todayValues, typicalValues.map((v) => (v === null ? null : v))];
    const width = Math.max(280, box.clientWidth);
    const opts = {
      width,
      height: 260,
      scales: { x: { time: false, range: [0, 24] }, y: { range: (u, lo, hi) => [0, Math.max(1, hi)] } },
      axes: [
        {
          incrs: [1, 2, 3, 4, 6, 12],
          values: (u, ticks) => ticks.map((h) => `${String(Math.floor(h)).padStart(2, "0")}:00`),
        },
        { label: "machines" },
      ],
      series: [
        { label: "time" },
        { label: "today", stroke: "#1f7a4d", width: 2, fill: "rgba(31,122,77,0.12)", spanGaps: false },
        { label: `typical ${name}`, stroke: "#8a96a3", width: 2, dash: [6, 4], spanGaps: false },
      ],
    };
    if (state.chart) state.chart.destroy();
    box.replaceChildren();
    state.chart = new uPlot(opts, data, box);
  }

  async function health(site) {
    const listed = await api("/v1/devices", { site, limit: 1000 });
    // the machines first, then the straps
    const devices = [...listed].sort((a, b) =>
      (a.kind === "hr_strap") - (b.kind === "hr_strap") || a.device_id.localeCompare(b.device_id));
    const alerts = await fleetAlerts(site);
    const table = $("health");
    const head = ["device", "kind", "model", "firmware", "status", "last heard", "training"];
    if (alerts) head.push("alerts");
    const rows = devices.map((d) => {
      const cells = [
        d.device_id, KIND[d.kind] || d.kind || "", [d.vendor, d.model].filter(Boolean).join(" "), d.firmware || "",
        d.online ? "online" : "offline", d.last_heard ? `${ago(d.last_heard)} ago` : "never", d.training || "",
      ];
      if (alerts) cells.push((alerts.get(d.device_id) || []).join(", "));
      return cells;
    });
    table.replaceChildren(headRow(head), ...rows.map((cells) => {
      const tr = document.createElement("tr");
      cells.forEach((text, i) => {
        const td = document.createElement("td");
        td.textContent = text;
        if (i === 4) td.className = text === "online" ? "ok" : "bad";
        if (i === 7 && text) td.className = "warn";
        tr.append(td);
      });
      return tr;
    }));
    $("health-note").textContent = alerts ? "" : "(alerts appear here when the fleet report is available)";
  }

  let fleetRoute = null; // null: not looked up yet
  async function fleetAlerts(site) {
    // the fleet report is optional: ask for it only when this server documents it
    if (fleetRoute === null) {
      try {
        const schema = await (await fetch("/openapi.json")).json();
        fleetRoute = "/v1/sites/{site_id}/fleet" in (schema.paths || {});
      } catch (_) { fleetRoute = false; }
    }
    if (!fleetRoute) return null;
    let report;
    try { report = await api(`/v1/sites/${encodeURIComponent(site)}/fleet`); } catch (err) {
      if (err instanceof Unauthorized) throw err;
      return null;
    }
    const out = new Map();
    const list = Array.isArray(report) ? report : (report.alerts || []);
    for (const a of list) {
      if (!a || (a.ended_at !== undefined && a.ended_at !== null)) continue;
      const key = a.device_id || "site";
      out.set(key, [...(out.get(key) || []), a.kind || a.type || a.alert || "alert"]);
    }
    for (const d of report.devices || []) {
      for (const a of d.alerts || []) {
        if (a && a.ended_at) continue;
        out.set(d.device_id, [...(out.get(d.device_id) || []), (a && (a.kind || a.type)) || String(a)]);
      }
    }
    return out;
  }

  function headRow(names) {
    const tr = document.createElement("tr");
    for (const n of names) {
      const th = document.createElement("th");
      th.textContent = n;
      tr.append(th);
    }
    return tr;
  }

  async function vitality(site) {
    const data = await api(`/v1/sites/${encodeURIComponent(site)}/vitality`, { breakdown: "age_band" });
    const table = $("vitality");
    // newest week first; in a week, all members first, then the age bands
    const weeks = [...new Set(data.cells.map((c) => c.week))].sort().reverse();
    const cells = weeks.flatMap((w) => data.cells.filter((c) => c.week === w));
    $("vit-note").textContent =
      `per week and age band, members with a session; groups under ${data.k_anonymity} are suppressed`;
    if (!cells.length) {
      table.replaceChildren(headRow(["week"]));
      const tr = document.createElement("tr");
      tr.innerHTML = '<td class="empty">No sessions in the last weeks.</td>';
      table.append(tr);
      return;
    }
    const cols = [
      ["members", (c) => c.members, 0],
      ["sessions / member", (c) => c.sessions_per_member, 1],
      ["median load", (c) => c.median_load, 0],
      ["median MVPA min", (c) => c.median_mvpa_min, 0],
      ["≥ 150 WHO min", (c) => (c.who_share === null ? null : c.who_share * 100), 0, "%"],
    ];
    table.replaceChildren(headRow(["week of", "group", ...cols.map((c) => c[0])]), ...cells.map((c) => {
      const tr = document.createElement("tr");
      const week = document.createElement("td");
      week.textContent = c.group === "all" ? c.week : "";
      const group = document.createElement("td");
      group.textContent = c.group === "all" ? "all members" : c.group;
      tr.append(week, group);
      for (const [, get, digits, unit] of cols) {
        const td = document.createElement("td");
        if (c.suppressed) {
          td.className = "suppressed";
          td.textContent = `suppressed (< ${data.k_anonymity})`;
        } else {
          const v = get(c);
          td.className = "num";
          td.textContent = v === null ? "–" : `${Number(v).toFixed(digits)}${unit || ""}`;
        }
        tr.append(td);
      }
      return tr;
    }));
  }

  // --- start --------------------------------------------------------------------------------------------
  function stop() {
    state.generation += 1;
    if (state.abort) state.abort.abort();
    state.abort = null;
    if (state.reportTimer) clearInterval(state.reportTimer);
    state.reportTimer = null;
  }

  function openSite(site) {
    stop();
    state.site = site;
    state.serverAt = null;
    setBroker("connecting");
    if (!site) { say("No site in this key's scope."); return; }
    document.title = `vitalab · ${site}`;
    state.abort = new AbortController();
    follow(site, state.generation, state.abort.signal);
  }

  async function start() {
    if (!state.key) { askKey(""); return; }
    $("signout").hidden = false;
    try {
      const site = await loadSites();
      $("site").value = site || "";
      openSite(site);
    } catch (err) { failed(err); }
  }

  window.addEventListener("resize", () => {
    if (state.chart) state.chart.setSize({ width: Math.max(280, $("occupancy").clientWidth), height: 260 });
  });

  start();
})();
