// lanewatch console: the live lane wall (server-sent events), the alarm banner and its sound.
"use strict";

(function () {
  const csrf = document.querySelector('meta[name="csrf"]')?.content || "";
  const user = document.querySelector('meta[name="user"]')?.content || "";
  const zone = document.querySelector('meta[name="timezone"]')?.content || "UTC";
  const state = {
    sounding: false, audio: "off", unacknowledged: 0, newestUnacknowledged: 0, lastSeq: 0, connected: false,
    lostSince: null,
  };
  window.lanewatch = state;

  // a time of day in the site's time zone (the configuration's), whatever the browser's
  const siteClock = new Intl.DateTimeFormat("en-GB", { timeZone: zone, hour: "2-digit", minute: "2-digit", second: "2-digit", hourCycle: "h23" });
  function siteTime(ms) { return siteClock.format(new Date(ms)); }

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (key === "class") node.className = value;
      else if (key === "text") node.textContent = value;
      else node.setAttribute(key, value);
    }
    for (const child of children) if (child) node.append(child);
    return node;
  }

  function ackForm(seq, label) {
    const form = el("form", { method: "post", action: `/decision/${seq}/acknowledge`, class: "inline" });
    form.append(el("input", { type: "hidden", name: "csrf", value: csrf }));
    form.append(el("input", { type: "hidden", name: "next", value: "/" }));
    form.append(el("button", { type: "submit", text: label }));
    return form;
  }

  // ---- sound: a two-tone beep every 2 s while an alarm is unacknowledged and the user has not muted it ----
  // A mute silences the alarms sounding when it was pressed (up to the newest unacknowledged then), for at most
  // max_mute_s: an alarm journaled after it sounds again. "Unmute" ends it early.
  const muteKey = "lanewatch-mute:" + user;
  let audio = null;
  let timer = null;

  function mute() {
    try {
      const stored = JSON.parse(localStorage.getItem(muteKey) || "null");
      if (stored && stored.until > Date.now()) return stored;
    } catch (e) { /* not a mute of this version: none */ }
    return null;
  }

  function isMuted() {
    const muting = mute();
    return muting !== null && state.newestUnacknowledged <= muting.seq;
  }

  function beep() {
    if (!audio) return;
    const t = audio.currentTime;
    for (const [offset, freq] of [[0, 880], [0.25, 660]]) {
      const osc = audio.createOscillator();
      const gain = audio.createGain();
      osc.type = "square";
      osc.frequency.value = freq;
      gain.gain.setValueAtTime(0.0001, t + offset);
      gain.gain.exponentialRampToValueAtTime(0.2, t + offset + 0.02);
      gain.gain.exponentialRampToValueAtTime(0.0001, t + offset + 0.22);
      osc.connect(gain).connect(audio.destination);
      osc.start(t + offset);
      osc.stop(t + offset + 0.24);
    }
  }

  function updateSound() {
    const label = document.getElementById("sound-state");
    const enable = document.getElementById("enable-sound");
    if (!label) return;
    const muting = mute();
    const muted = isMuted();
    const want = state.unacknowledged > 0 && !muted;
    if (want && !audio) audio = new AudioContext();
    state.audio = audio ? audio.state : "off";
    if (want && audio.state === "suspended") audio.resume().then(updateSound, () => {});
    if (want && !timer) { beep(); timer = setInterval(beep, 2000); }
    if (!want && timer) { clearInterval(timer); timer = null; }
    state.sounding = want && audio && audio.state === "running";
    enable.hidden = !(want && audio && audio.state !== "running");
    document.body.dataset.sound = muted ? "muted" : (state.sounding ? "on" : (want ? "blocked" : "off"));
    const button = document.getElementById("mute");
    button.textContent = muted ? "Unmute" : button.dataset.label;
    if (muted) {
      label.textContent = `Sound muted until ${siteTime(muting.until)} (site time) for the alarms sounding then; ` +
        "a new alarm sounds";
    } else if (want && !state.sounding) {
      label.textContent = "The browser blocks the alarm sound: click “Enable alarm sound”.";
    } else {
      label.textContent = want ? "Alarm sounding" : "";
    }
  }

  // ---- the wall ---------------------------------------------------------------------------------------
  const STATUS = { idle: "IDLE", occupied: "OCCUPIED", provisional: "PROVISIONAL ALARM", alarm: "ALARM AWAITING ADJUDICATION",
    incomplete: "NOT SCREENED: AWAITING ADJUDICATION" };

  const SVG = "http://www.w3.org/2000/svg";

  function sparkline(values) {
    const svg = document.createElementNS(SVG, "svg");
    svg.setAttribute("class", "spark");
    svg.setAttribute("viewBox", "0 0 100 24");
    svg.setAttribute("preserveAspectRatio", "none");
    if (values.length > 1) {
      const lo = Math.min(...values), hi = Math.max(...values), span = hi - lo || 1;
      const points = values.map((v, i) => `${(i / (values.length - 1)) * 100},${22 - ((v - lo) / span) * 20}`);
      const line = document.createElementNS(SVG, "polyline");
      line.setAttribute("points", points.join(" "));
      svg.append(line);
    }
    const wrap = el("div", { class: "background", title: "gamma background per decision (cps)" });
    const last = values.length ? `${Math.round(values[values.length - 1])} cps` : "no background yet";
    wrap.append(el("span", { text: "Background " }), svg, el("span", { text: ` ${last}` }));
    return wrap;
  }

  function tile(lane) {
    const classes = ["tile", lane.status];
    if (lane.unacknowledged) classes.push("unacknowledged");
    const headline = lane.status === "alarm" || lane.status === "incomplete";  // the awaiting decisions are the headline
    if (lane.awaiting_count && !headline) classes.push("awaiting");
    const node = el("article", { class: classes.join(" "), id: `lane-${lane.id}`, "data-status": lane.status });
    const statebox = el("span", { class: "statebox" }, el("span", { class: "status", text: STATUS[lane.status] }));
    if (lane.awaiting_count && !headline) {
      statebox.append(el("span", { class: "awaiting-count", text: `+ ${lane.awaiting_count} alarm${lane.awaiting_count > 1 ? "s" : ""} awaiting adjudication` }));
    }
    if (lane.occupied && lane.status !== "occupied") {
      statebox.append(el("span", { class: "occupancy", text: "vehicle in the lane now: OCCUPIED" }));
    }
    const head = el("h2", {}, el("span", { text: lane.id }), statebox);
    node.append(head);
    const sensors = el("div", { class: "sensors" });
    for (const s of lane.sensors) {
      // what is wrong, in words ("RPM no data for 35 s"), or "ok" and the age of its newest data
      const name = s.name + (s.words ? ` ${s.words}` : " ok");
      const chip = el("span", { class: "sensor" + (s.ok ? "" : " bad"), title: s.problem || "", text: name });
      if (!s.words && s.age_s !== null && s.age_s !== undefined) {
        // the age as of now: it keeps growing between updates, and while the console is not reachable
        chip.dataset.name = name;
        chip.dataset.ageS = String(s.age_s);
        chip.dataset.at = String(wallAt);
        chip.textContent = sensorText(chip);
      }
      sensors.append(chip);
    }
    if (!lane.sensors.length) sensors.append(el("span", { class: "sensor bad", text: "health unknown" }));
    node.append(sensors);
    node.append(sparkline(lane.background_cps));
    if (lane.faults.length) node.append(el("div", { class: "faults", text: "Faults: " + lane.faults.join(", ") }));
    if (lane.provisional) node.append(el("div", { class: "alarms", text: "Provisional: " + lane.provisional }));
    if (lane.awaiting.length) {
      const list = el("div", { class: "alarms" });
      for (const a of lane.awaiting) {
        const line = el("div", {}, el("a", { href: `/decision/${a.seq}`, text: `#${a.seq} ${a.end_local.slice(11)}` }),
          document.createTextNode(` ${a.state}: ${a.reasons[0] || (a.device_alarm ? "portal alarm" : "")}`));
        list.append(line);
      }
      node.append(list);
    }
    const last = lane.last;
    node.append(el("div", { class: "last" }, last
      ? el("span", { title: last.end_utc }, document.createTextNode("Last: "),
           el("a", { href: `/decision/${last.seq}`, text: `#${last.seq}` }),
           document.createTextNode(` ${last.verdict} at ${last.end_local.slice(11)}`))
      : document.createTextNode("No decision yet")));
    return node;
  }

  let wallAt = Date.now();  // when the wall drawn was received

  function sensorText(chip) {
    const age = Number(chip.dataset.ageS) + (Date.now() - Number(chip.dataset.at)) / 1000;
    return `${chip.dataset.name} ${age.toFixed(1)} s`;
  }

  function drawWall(wall) {
    const container = document.getElementById("wall");
    if (!container) return;
    wallAt = Date.now();
    container.replaceChildren(...wall.lanes.map(tile));
    const banner = document.getElementById("banner");
    const alarms = wall.unacknowledged;  // the oldest few; wall.unacknowledged_count says how many there are
    state.unacknowledged = wall.unacknowledged_count;
    state.newestUnacknowledged = wall.newest_unacknowledged;
    banner.hidden = alarms.length === 0;
    banner.replaceChildren(...alarms.slice(0, 5).map((a) => el("div", { class: "item" },
      el("strong", { text: `${a.verdict} ${a.lane}` }),
      el("a", { href: `/decision/${a.seq}`, text: `decision ${a.seq}` }),
      el("span", { text: `${a.end_local.slice(11)} · ${a.reasons[0] || (a.device_alarm ? "The portal's own alarm" : "")}` }),
      ackForm(a.seq, "Acknowledge"))));
    const more = wall.unacknowledged_count - Math.min(alarms.length, 5);
    if (more > 0) {
      banner.append(el("div", { class: "more" }, el("a", { href: "/decisions?state=unacknowledged",
        text: `and ${more} more unacknowledged (the queue, oldest first)` })));
    }
    const service = document.getElementById("service-state");
    const reachable = wall.service.reachable;
    service.textContent = reachable === false ? "Service unreachable" : reachable ? (wall.service.ok ? "Service ok" : "Service NOT OK") : "";
    service.className = "service" + (reachable === false || wall.service.ok === false ? " down" : "");
    showConnection();
    updateSound();
  }

  // ---- is the wall live? ------------------------------------------------------------------------------
  // The console sends events or heartbeats; when they stop, the stream fails or the console says it is closing,
  // the wall says at once that it is not live (since when, in site time), greys the tiles (their ages keep
  // growing) and reconnects; the stream resumes after the last decision seen (the journal fills the gap). A
  // session that ended meanwhile sends the page to the login, and back here after it.
  function showConnection() {
    const bar = document.getElementById("connection");
    if (!bar) return;
    const lost = state.lostSince !== null;
    document.body.classList.toggle("offline", lost);
    bar.hidden = !lost;
    if (lost) {
      bar.textContent = `Console connection lost since ${siteTime(state.lostSince)} (site time, ${zone}): ` +
        "this wall is NOT live, reconnecting…";
      const service = document.getElementById("service-state");
      service.textContent = "Service state unknown";
      service.className = "service down";
    }
  }

  let source = null;
  let lastMessage = Date.now();
  let retry = null;

  function lost() {
    if (source) { source.close(); source = null; }
    state.connected = false;
    if (state.lostSince === null) state.lostSince = Date.now();
    showConnection();
    if (!retry) retry = setTimeout(reconnect, 2000);
  }

  async function reconnect() {
    retry = null;
    let response;
    try {
      response = await fetch("/wall.json", { redirect: "manual", cache: "no-store" });
    } catch (e) {
      lost();  // the console does not answer yet
      return;
    }
    if (response.type === "opaqueredirect" || response.status === 401 || response.status === 403) {
      window.location.href = "/login?next=/";  // the session ended: log in, then back to the wall
      return;
    }
    if (!response.ok) { lost(); return; }
    drawWall(await response.json());
    connect();
  }

  function heard() { lastMessage = Date.now(); }

  function watch(heartbeatS, misses) {
    setInterval(() => {
      for (const chip of document.querySelectorAll(".sensor[data-age-s]")) chip.textContent = sensorText(chip);
      if (source && Date.now() - lastMessage > heartbeatS * misses * 1000) lost();
    }, 1000);
  }

  // While the wall is open and visible it is in use: it tells the console so (keeping its session open), every
  // alive_s and whenever it becomes visible again; a session that had ended is found at once.
  function keepAlive(aliveS) {
    const ping = async () => {
      if (document.visibilityState !== "visible") return;
      try {
        const response = await fetch("/alive", { redirect: "manual", cache: "no-store" });
        if (response.type === "opaqueredirect") window.location.href = "/login?next=/";
      } catch (e) { /* the console is not reachable: the stream's watch says so */ }
    };
    setInterval(ping, aliveS * 1000);
    document.addEventListener("visibilitychange", ping);
  }

  function addTicker(d) {
    const body = document.getElementById("ticker");
    if (!body) return;
    const row = el("tr", { class: "verdict-" + d.verdict.toLowerCase() },
      el("td", {}, el("a", { href: `/decision/${d.seq}`, text: String(d.seq) })),
      el("td", { title: d.end_utc, text: d.end_local }), el("td", { text: d.lane }),
      el("td", {}, el("span", { class: "verdict " + d.verdict.toLowerCase(), text: d.verdict })),
      el("td", { text: d.reasons.join("; ") || "-" }));
    const newer = [...body.children].find((r) => Number(r.dataset.seq) < d.seq);
    row.dataset.seq = String(d.seq);
    body.insertBefore(row, newer || null);
    while (body.children.length > 30) body.lastChild.remove();
  }

  function connect() {
    heard();
    source = new EventSource(`/events?since=${state.lastSeq}`);
    source.addEventListener("open", () => {
      heard();
      state.connected = true;
      state.lostSince = null;
      showConnection();
    });
    source.addEventListener("wall", (e) => { heard(); drawWall(JSON.parse(e.data)); });
    source.addEventListener("decision", (e) => {
      heard();
      const d = JSON.parse(e.data);
      if (d.seq > state.lastSeq) { state.lastSeq = d.seq; addTicker(d); }
    });
    source.addEventListener("heartbeat", heard);
    source.addEventListener("adjudication", heard);
    source.addEventListener("reload", () => window.location.reload());
    source.addEventListener("logout", () => { window.location.href = "/login?next=/"; });
    source.addEventListener("closing", lost);
    source.addEventListener("error", lost);
  }

  // A decision's page learns when any console records an act on it: reload at once if this user has not started
  // filling a form, else say so and leave the reload to them.
  function followDecision(notice) {
    const seq = Number(notice.dataset.seq);
    const source = new EventSource("/events");
    source.addEventListener("adjudication", (e) => {
      const act = JSON.parse(e.data);
      if (act.seq !== seq) return;
      const typing = [...document.querySelectorAll("form textarea, form input[type=file], form select")]
        .some((field) => field.value && field.name !== "secondary" && field.name !== "amends");
      if (!typing) { window.location.reload(); return; }
      const names = JSON.parse(notice.dataset.dispositions || "{}");
      const what = { acknowledge: "acknowledged this alarm", adjudicate: "disposed of this decision",
        amend: "amended the disposition of this decision" }[act.kind] || `recorded “${act.kind}” on this decision`;
      const as = act.disposition ? ` as “${names[act.disposition] || act.disposition}”` : "";
      notice.replaceChildren(document.createTextNode(`${act.user} ${what}${as}. `),
        el("a", { href: window.location.pathname, text: "Reload to see it" }));
      notice.hidden = false;
    });
    source.addEventListener("logout", () => { window.location.href = "/login"; });
  }

  document.addEventListener("DOMContentLoaded", () => {
    const notice = document.getElementById("updated");
    if (notice) followDecision(notice);
    const data = document.getElementById("wall-data");
    if (!data) return;
    drawWall(JSON.parse(data.textContent));
    for (const d of JSON.parse(document.getElementById("recent-data").textContent)) {
      state.lastSeq = Math.max(state.lastSeq, d.seq);
      addTicker(d);
    }
    const muteButton = document.getElementById("mute");
    muteButton.addEventListener("click", () => {
      if (isMuted()) {
        localStorage.removeItem(muteKey);
      } else {
        const seconds = Number(muteButton.dataset.maxMuteS);
        localStorage.setItem(muteKey, JSON.stringify({ until: Date.now() + seconds * 1000, seq: state.newestUnacknowledged }));
        setTimeout(updateSound, seconds * 1000 + 50);
      }
      updateSound();
    });
    document.getElementById("enable-sound").addEventListener("click", () => {
      if (audio) audio.resume().then(updateSound);
    });
    document.addEventListener("click", () => { if (audio && audio.state === "suspended") audio.resume().then(updateSound); });
    setInterval(updateSound, 5000);
    const wallNode = document.getElementById("wall");
    watch(Number(wallNode.dataset.heartbeatS), Number(wallNode.dataset.heartbeatMisses));
    keepAlive(Number(wallNode.dataset.aliveS));
    connect();
  });
})();
