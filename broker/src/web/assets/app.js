// sluice dashboard: keeps a server-rendered page current by polling the
// JSON API every 2 s and filling its `data-` bound elements in place (see
// the header of broker/src/web/pages.rs for what each attribute means).
// No framework, no build step. Text from the broker (queue names, payloads,
// headers, errors) only ever goes in through textContent or attribute
// setters, never as HTML.
(function () {
  "use strict";

  var POLL_MS = 2000;
  var root = document.documentElement;

  // ---- theme: before the first paint ------------------------------------
  var THEME_KEY = "sluice-theme";
  function savedTheme() {
    try {
      var t = window.localStorage.getItem(THEME_KEY);
      return t === "dark" || t === "light" ? t : null;
    } catch (_) {
      return null; // storage refused (private mode): follow the system
    }
  }
  var saved = savedTheme();
  if (saved) root.dataset.theme = saved;

  function effectiveTheme() {
    if (root.dataset.theme) return root.dataset.theme;
    return window.matchMedia && window.matchMedia("(prefers-color-scheme: dark)").matches ? "dark" : "light";
  }

  // ---- formats (pages.rs `mod fmt` writes the same) ------------------------
  function int(n) {
    return Math.round(Number(n) || 0).toLocaleString("en-US");
  }
  function ms(n) {
    n = Number(n) || 0;
    if (n < 1000) return n + " ms";
    if (n < 60000) return (n / 1000).toFixed(1) + " s";
    if (n < 3600000) return Math.floor(n / 60000) + " min";
    return Math.floor(n / 3600000) + " h " + Math.floor((n % 3600000) / 60000) + " min";
  }
  function secs(s) {
    if (s < 60) return s + " s";
    if (s < 3600) return Math.floor(s / 60) + " min";
    if (s < 86400) return Math.floor(s / 3600) + " h " + Math.floor((s % 3600) / 60) + " min";
    return Math.floor(s / 86400) + " d " + Math.floor((s % 86400) / 3600) + " h";
  }
  var REASONS = { "max-attempts": "gave up", rejected: "rejected by its worker", dropped: "dropped" };
  var FORMATS = {
    text: function (v) { return String(v); },
    int: int,
    count: function (v) { return String(v.length); },
    list: function (v) { return v.join(", "); },
    rate: function (x) {
      if (!isFinite(x) || x < 0.05) return "0";
      if (x < 10) return x.toFixed(1).replace(/\.0$/, "");
      return int(x);
    },
    bytes: function (n) {
      var units = ["KiB", "MiB", "GiB", "TiB", "PiB"];
      if (n < 1024) return n + " B";
      var v = n / 1024, u = 0;
      while (v >= 1024 && u < units.length - 1) { v /= 1024; u++; }
      return v.toFixed(1) + " " + units[u];
    },
    ms: ms,
    msoff: function (n) { return n === 0 ? "—" : ms(n); },
    msf: function (x) { return x < 10 ? x.toFixed(2) + " ms" : int(x) + " ms"; },
    secs: secs,
    ago: function (t) {
      if (!t) return "—";
      var d = Math.floor(Math.max(0, Date.now() - t) / 1000);
      if (d === 0) return "just now";
      if (d < 60) return d + " s ago";
      if (d < 3600) return Math.floor(d / 60) + " min ago";
      if (d < 86400) return Math.floor(d / 3600) + " h ago";
      return Math.floor(d / 86400) + " d ago";
    },
    due: function (t) {
      var now = Date.now();
      return t <= now ? "now" : "in " + ms(t - now);
    },
    until: function (t) {
      var now = Date.now();
      return t <= now ? "now" : "in " + secs(Math.ceil((t - now) / 1000));
    },
    group: function (n) { return n === "" ? "(no group)" : n; },
    attempts: function (n) { return n === "1" ? "1 attempt" : n + " attempts"; },
    reason: function (r) { return REASONS[r] || r; },
    limit: function (n) { return n === 0 ? "no limit" : int(n); },
    ratelimit: function (r) { return int(r.tasks) + " per " + ms(r.per_ms) + ", burst " + int(r.burst); },
    failed: function (n) { return n === 0 ? "" : int(n) + " failed"; },
    jobdone: function (j) {
      var done = j.succeeded + j.failed;
      if (j.total === null || j.total === undefined) return int(done) + " of " + int(j.stored) + " stored so far";
      return int(done) + " of " + int(j.total) + " done";
    },
    jobstate: function (j) {
      if (j.done) return "done";
      return j.total === null || j.total === undefined ? "open" : "running";
    },
  };

  // ---- binding ------------------------------------------------------------------
  function get(obj, path) {
    if (path === "") return obj;
    var parts = path.split(".");
    for (var i = 0; i < parts.length; i++) {
      if (obj === null || obj === undefined) return undefined;
      obj = obj[parts[i]];
    }
    return obj;
  }
  function isSet(v) {
    if (v === null || v === undefined || v === false || v === 0 || v === "") return false;
    if (Array.isArray(v)) return v.length > 0;
    return true;
  }
  function setText(el, text) {
    if (el.textContent !== text) el.textContent = text;
  }
  function setHidden(el, hidden) {
    if (el.hidden !== hidden) el.hidden = hidden;
  }

  // The elements bound in `scope` itself: those of rows inside it belong to
  // their rows.
  function owned(scope, selector) {
    var item = scope.hasAttribute && scope.hasAttribute("data-item") ? scope : null;
    return Array.prototype.filter.call(scope.querySelectorAll(selector), function (el) {
      return el.closest("[data-item]") === item;
    });
  }

  function sparkPaths(values) {
    if (!values || values.length === 0) return ["", ""];
    var max = Math.max(1, Math.max.apply(null, values));
    var step = values.length > 1 ? 100 / (values.length - 1) : 0;
    var line = values.map(function (v, i) {
      return (i === 0 ? "M" : " L") + (i * step).toFixed(1) + "," + (23 - (v / max) * 19).toFixed(1);
    }).join("");
    if (values.length === 1) line += " L100.0," + (23 - (values[0] / max) * 19).toFixed(1);
    return [line, line + " L100.0,24.0 L0.0,24.0 Z"];
  }

  function barWidth(obj, spec) {
    var halves = spec.split("/");
    var num = halves[0].split("+").reduce(function (s, p) { return s + (Number(get(obj, p)) || 0); }, 0);
    var den = 0;
    var alts = (halves[1] || "").split("|");
    for (var i = 0; i < alts.length; i++) {
      var d = get(obj, alts[i]);
      if (d !== null && d !== undefined) { den = Number(d) || 0; break; }
    }
    return den === 0 ? 0 : Math.min(100, (num * 100) / den);
  }

  // `tpl` with each {field} replaced by the item's, through `encode`; null
  // when a field is missing.
  function fillIn(tpl, obj, encode) {
    var missing = false;
    var out = tpl.replace(/\{([\w.-]+)\}/g, function (_, p) {
      var v = get(obj, p);
      if (v === null || v === undefined) missing = true;
      return encode(String(v));
    });
    return missing ? null : out;
  }

  function fill(scope, obj) {
    owned(scope, "[data-f]").forEach(function (el) {
      var v = get(obj, el.dataset.f);
      if (v === null || v === undefined) {
        setText(el, el.dataset.null !== undefined ? el.dataset.null : "—");
        return;
      }
      var f = FORMATS[el.dataset.fmt || "text"] || FORMATS.text;
      setText(el, f(v));
    });
    owned(scope, "[data-href]").forEach(function (el) {
      var href = fillIn(el.dataset.href, obj, encodeURIComponent);
      if (href === null) el.removeAttribute("href");
      else if (el.getAttribute("href") !== href) el.setAttribute("href", href);
    });
    owned(scope, "[data-url-tpl]").forEach(function (el) {
      var url = fillIn(el.dataset.urlTpl, obj, encodeURIComponent);
      if (url !== null && el.dataset.url !== url) el.dataset.url = url;
    });
    owned(scope, "[data-confirm-tpl]").forEach(function (el) {
      var text = fillIn(el.dataset.confirmTpl, obj, String);
      if (text !== null && el.dataset.confirm !== text) el.dataset.confirm = text;
    });
    owned(scope, "[data-show]").forEach(function (el) { setHidden(el, !isSet(get(obj, el.dataset.show))); });
    owned(scope, "[data-hide]").forEach(function (el) { setHidden(el, isSet(get(obj, el.dataset.hide))); });
    owned(scope, "[data-bar]").forEach(function (el) {
      el.style.width = barWidth(obj, el.dataset.bar).toFixed(1) + "%";
    });
    owned(scope, "[data-spark]").forEach(function (el) {
      var values = get(obj, el.dataset.spark) || [];
      var d = sparkPaths(values);
      var area = el.querySelector(".area"), line = el.querySelector(".line");
      if (area) area.setAttribute("d", d[1]);
      if (line) line.setAttribute("d", d[0]);
      el.setAttribute("aria-label", "depth over the last minutes, at most " + (values.length ? Math.max.apply(null, values) : 0));
    });
    owned(scope, "[data-holds]").forEach(function (el) {
      var holds = get(obj, el.dataset.holds) || [];
      var want = holds.length ? holds.map(function (h) { return h.reason + ":" + h.text; }).join("|") : "";
      if (el.dataset.shown === want) return;
      el.dataset.shown = want;
      el.replaceChildren();
      holds.forEach(function (h) {
        var s = document.createElement("span");
        s.className = "hold";
        s.dataset.reason = h.reason;
        s.textContent = h.text;
        el.appendChild(s);
      });
      if (!holds.length) {
        var m = document.createElement("span");
        m.className = "muted";
        m.textContent = el.dataset.empty || "";
        el.appendChild(m);
      }
    });
    owned(scope, "[data-headers]").forEach(function (el) {
      var h = get(obj, el.dataset.headers) || {};
      var skip = el.dataset.skip || "\u0000";
      var keys = Object.keys(h).filter(function (k) { return k.indexOf(skip) !== 0; }).sort();
      var want = JSON.stringify(keys.map(function (k) { return [k, h[k]]; }));
      if (el.dataset.shown === want) return;
      el.dataset.shown = want;
      el.replaceChildren();
      keys.forEach(function (k) {
        var s = document.createElement("span");
        s.className = "chip";
        s.textContent = k + "=" + h[k];
        el.appendChild(s);
      });
    });
    if (!scope.hasAttribute || !scope.hasAttribute("data-item")) {
      owned(scope, "[data-list]").forEach(function (el) { renderList(el, get(obj, el.dataset.list) || []); });
    }
  }

  // One row per item, kept by key: rows keep their state (a ticked box)
  // across updates; new ones come from the list's template.
  function renderList(body, items) {
    var keyPath = body.dataset.key;
    var tpl = document.getElementById(body.dataset.template);
    var existing = new Map();
    Array.prototype.forEach.call(body.children, function (row) {
      if (row.hasAttribute("data-item")) existing.set(row.dataset.key, row);
    });
    var prev = null;
    items.forEach(function (it) {
      var key = String(get(it, keyPath));
      var row = existing.get(key);
      if (row) {
        existing.delete(key);
      } else {
        if (!tpl) return;
        row = tpl.content.firstElementChild.cloneNode(true);
        row.dataset.key = key;
      }
      fill(row, it);
      var want = prev ? prev.nextElementSibling : body.firstElementChild;
      if (want !== row) body.insertBefore(row, want);
      prev = row;
    });
    existing.forEach(function (row) { row.remove(); });
  }

  // ---- talking to the broker ---------------------------------------------------
  var page = "";

  function api(method, path, body) {
    var init = { method: method, headers: { accept: "application/json" }, credentials: "same-origin", cache: "no-store" };
    if (body !== undefined) {
      init.headers["content-type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    return fetch(path, init).then(function (r) {
      return r.json().catch(function () { return null; }).then(function (data) {
        if (r.ok) return data;
        if (r.status === 401 && page !== "login") window.location.assign("/login");
        var e = new Error(data && data.error ? data.error : r.status + " " + r.statusText);
        e.status = r.status;
        throw e;
      });
    });
  }

  var toastTimer = null;
  function toast(text, kind) {
    var t = document.getElementById("toast");
    if (!t) return;
    t.textContent = text;
    t.className = kind || "";
    t.hidden = false;
    clearTimeout(toastTimer);
    toastTimer = setTimeout(function () { t.hidden = true; }, kind === "error" ? 8000 : 4000);
  }

  // Asks before an action: the page's <dialog>, or confirm() where there is
  // none. Resolves true only on the explicit OK.
  function ask(text, ok) {
    var d = document.getElementById("confirm");
    if (!d || typeof d.showModal !== "function") return Promise.resolve(window.confirm(text));
    if (d.open) return Promise.resolve(false); // already asking
    document.getElementById("confirm-text").textContent = text;
    document.getElementById("confirm-ok").textContent = ok || "OK";
    d.returnValue = "";
    return new Promise(function (resolve) {
      d.addEventListener("close", function () { resolve(d.returnValue === "ok"); }, { once: true });
      d.showModal();
    });
  }

  // ---- polling ---------------------------------------------------------------------
  // `again`: a poll was asked for (after an action) while one was under
  // way; it runs as soon as that one ends, not a period later.
  var timer = null, busy = false, again = false, stopped = false, hooks = [];

  function live(ok, why) {
    var l = document.getElementById("live");
    if (!l) return;
    l.dataset.state = ok ? "ok" : "stale";
    setText(l, ok ? "live" : "stale");
    l.title = ok ? "Updated " + new Date().toLocaleTimeString() + ", every 2 seconds" : "Not updating: " + why;
  }

  function poll() {
    clearTimeout(timer);
    var path = document.body.dataset.api;
    if (!path || stopped) return;
    if (busy) {
      again = true;
      return;
    }
    busy = true;
    api("GET", path).then(function (data) {
      fill(document.querySelector("main"), data);
      hooks.forEach(function (h) { h(data); });
      live(true);
    }, function (e) {
      if (e.status === 404) {
        stopped = true;
        gone();
      }
      live(false, e.message);
    }).then(function () {
      busy = false;
      if (again) {
        again = false;
        poll();
      } else if (!stopped && !document.hidden) {
        timer = setTimeout(poll, POLL_MS);
      }
    });
  }

  function gone() {
    var main = document.querySelector("main");
    var p = document.createElement("p");
    p.className = "banner error";
    p.setAttribute("role", "alert");
    p.textContent = "This no longer exists (deleted, or no longer visible to this token). ";
    var a = document.createElement("a");
    a.href = "/";
    a.textContent = "All queues";
    p.appendChild(a);
    main.insertBefore(p, main.firstChild);
  }

  // ---- charts (queue page) -----------------------------------------------------
  var charts = [], lastHistory = null;

  function cssVar(name) {
    return getComputedStyle(root).getPropertyValue(name).trim();
  }

  var CHARTS = {
    depth: [["ready", "ready", "--c1"], ["delayed", "delayed", "--c2"], ["leased", "leased", "--c3"]],
    rates: [["enqueued/s", "enqueue_rate", "--c1"], ["delivered/s", "deliver_rate", "--c3"], ["acked/s", "ack_rate", "--c4"]],
  };

  function chartData(kind, h) {
    var t = h.t_unix_ms.map(function (x) { return x / 1000; });
    return [t].concat(CHARTS[kind].map(function (s) { return h[s[1]]; }));
  }

  // At least the last 5 minutes, so that a new queue's few samples are not
  // spread over the width (uPlot gives one sample a range of years).
  function showWindow(u, t) {
    var last = t.length ? t[t.length - 1] : Date.now() / 1000;
    var first = t.length ? t[0] : last;
    u.setScale("x", { min: Math.min(first, last - 300), max: last });
  }

  function makeChart(el, kind) {
    var axis = { stroke: cssVar("--muted"), grid: { stroke: cssVar("--grid"), width: 1 }, ticks: { stroke: cssVar("--grid"), width: 1 } };
    var opts = {
      width: Math.max(200, el.clientWidth),
      height: 200,
      series: [{}].concat(CHARTS[kind].map(function (s) {
        var c = cssVar(s[2]);
        // Depths are amounts: filled; rates cross each other: lines.
        return { label: s[0], stroke: c, width: 2, fill: kind === "depth" ? c + "1f" : undefined };
      })),
      axes: [axis, Object.assign({ size: 56 }, axis)],
      scales: {
        x: { time: true },
        y: { range: function (u, min, max) { return [0, max > 0 ? max * 1.1 : 1]; } },
      },
      cursor: { drag: { x: false, y: false } },
      legend: { show: true },
    };
    var data = lastHistory ? chartData(kind, lastHistory) : [[]].concat(CHARTS[kind].map(function () { return []; }));
    el.replaceChildren();
    var u = new window.uPlot(opts, data, el);
    showWindow(u, data[0]);
    el.dataset.points = String(data[0].length);
    return { el: el, kind: kind, u: u };
  }

  function drawCharts() {
    if (!window.uPlot) return;
    charts.forEach(function (c) { c.u.destroy(); });
    charts = Array.prototype.map.call(document.querySelectorAll("[data-chart]"), function (el) {
      return makeChart(el, el.dataset.chart);
    });
  }

  function updateCharts(data) {
    if (!data || !data.history) return;
    lastHistory = data.history;
    if (!charts.length) drawCharts();
    charts.forEach(function (c) {
      var d = chartData(c.kind, lastHistory);
      c.u.setData(d);
      showWindow(c.u, d[0]);
      c.el.dataset.points = String(d[0].length);
    });
  }

  function watchChartSizes() {
    if (!window.ResizeObserver) return;
    var ro = new ResizeObserver(function () {
      charts.forEach(function (c) {
        var w = Math.max(200, c.el.clientWidth);
        if (w !== c.u.width) c.u.setSize({ width: w, height: 200 });
      });
    });
    document.querySelectorAll("[data-chart]").forEach(function (el) { ro.observe(el); });
  }

  // ---- the waiting tasks page ------------------------------------------------------
  function setupTasks() {
    var bar = document.getElementById("task-actions");
    if (!bar) return;
    var queue = bar.dataset.queue;
    var selected = new Set();
    var tbody = document.querySelector("[data-list=tasks]");
    var all = document.getElementById("pick-all");
    var target = document.getElementById("redrive-to");
    var bSel = document.getElementById("redrive-selected");
    var bAll = document.getElementById("redrive-all");
    var bPurge = document.getElementById("purge-tasks");
    var total = 0;

    function rows() {
      return Array.prototype.filter.call(tbody.children, function (r) { return r.hasAttribute("data-item"); });
    }
    function sync() {
      var keys = new Set(rows().map(function (r) { return r.dataset.key; }));
      selected.forEach(function (k) { if (!keys.has(k)) selected.delete(k); });
      rows().forEach(function (r) {
        var box = r.querySelector("input.pick");
        if (box) box.checked = selected.has(r.dataset.key);
      });
      bSel.disabled = selected.size === 0;
      bSel.textContent = selected.size ? "Redrive selected (" + selected.size + ")" : "Redrive selected";
      if (all) {
        all.checked = selected.size > 0 && selected.size === keys.size;
        all.indeterminate = selected.size > 0 && selected.size < keys.size;
      }
      bAll.disabled = total === 0;
      bPurge.disabled = total === 0;
    }
    function where() {
      return target.value ? "to " + target.value : "back to the queue each came from";
    }
    function body(ids) {
      var b = {};
      if (ids) b.ids = ids;
      if (target.value) b.to = target.value;
      return b;
    }
    function run(method, path, b) {
      [bSel, bAll, bPurge].forEach(function (x) { x.disabled = true; });
      return api(method, path, b).then(function (r) {
        toast(r.message);
        selected.clear();
      }, function (e) {
        toast(e.message, "error");
      }).then(function () {
        sync();
        poll();
      });
    }

    tbody.addEventListener("change", function (ev) {
      var box = ev.target;
      if (!box.matches || !box.matches("input.pick")) return;
      var row = box.closest("[data-item]");
      if (box.checked) selected.add(row.dataset.key);
      else selected.delete(row.dataset.key);
      sync();
    });
    if (all) {
      all.addEventListener("change", function () {
        rows().forEach(function (r) { if (all.checked) selected.add(r.dataset.key); else selected.delete(r.dataset.key); });
        sync();
      });
    }
    bSel.addEventListener("click", function () {
      var ids = Array.from(selected);
      var n = ids.length;
      ask("Move " + n + (n === 1 ? " task " : " tasks ") + where() + "?", "Redrive").then(function (ok) {
        if (ok) run("POST", "/api/queues/" + encodeURIComponent(queue) + "/redrive", body(ids));
      });
    });
    bAll.addEventListener("click", function () {
      ask("Move every waiting task of " + queue + " (" + int(total) + ") " + where() + "?", "Redrive all").then(function (ok) {
        if (ok) run("POST", "/api/queues/" + encodeURIComponent(queue) + "/redrive", body(null));
      });
    });
    bPurge.addEventListener("click", function () {
      ask("Purge " + queue + "? Its " + int(total) + " waiting tasks are removed for good.", "Purge").then(function (ok) {
        if (ok) run("POST", "/api/queues/" + encodeURIComponent(queue) + "/purge", {});
      });
    });
    hooks.push(function (data) {
      total = data.total;
      sync();
    });
    var t = document.querySelector("[data-f=total]");
    total = t ? Number(t.textContent.replace(/,/g, "")) || 0 : 0;
    sync();
  }

  // ---- wiring ----------------------------------------------------------------------
  function start() {
    page = document.body.dataset.page || "";

    var themeButton = document.getElementById("theme");
    if (themeButton) {
      themeButton.addEventListener("click", function () {
        var next = effectiveTheme() === "dark" ? "light" : "dark";
        root.dataset.theme = next;
        try { window.localStorage.setItem(THEME_KEY, next); } catch (_) { /* not remembered */ }
        if (charts.length) drawCharts();
      });
    }
    if (window.matchMedia) {
      var mq = window.matchMedia("(prefers-color-scheme: dark)");
      if (mq.addEventListener) mq.addEventListener("change", function () { if (charts.length) drawCharts(); });
    }

    var signout = document.getElementById("signout");
    if (signout) {
      signout.addEventListener("click", function () {
        api("DELETE", "/api/session", {}).then(function () { window.location.assign("/login"); }, function (e) { toast(e.message, "error"); });
      });
    }

    var login = document.getElementById("login");
    if (login) {
      login.addEventListener("submit", function (ev) {
        ev.preventDefault();
        var err = document.getElementById("login-error");
        err.hidden = true;
        api("POST", "/api/session", { token: document.getElementById("token").value }).then(function () {
          window.location.assign("/");
        }, function (e) {
          err.textContent = e.status === 401 ? "This token is not one the broker knows." : e.message;
          err.hidden = false;
        });
      });
    }

    // Buttons that act on a queue (pause, resume, purge, delete) or on a
    // schedule's row (pause, resume, delete).
    document.addEventListener("click", function (ev) {
      var b = ev.target.closest && ev.target.closest("button[data-action]");
      if (!b) return;
      ask(b.dataset.confirm, b.dataset.ok).then(function (ok) {
        if (!ok) return;
        b.disabled = true;
        api(b.dataset.action, b.dataset.url, {}).then(function (r) {
          toast(r.message);
          if (b.dataset.then === "home") window.location.assign("/");
          else poll();
        }, function (e) {
          toast(e.message, "error");
        }).then(function () { b.disabled = false; });
      });
    });

    if (page === "queue") {
      drawCharts();
      watchChartSizes();
      hooks.push(updateCharts);
      hooks.push(function (data) {
        var g = document.getElementById("groups");
        if (g) g.hidden = !data.groups.some(function (x) { return x.name !== ""; });
      });
    }
    if (page === "tasks") setupTasks();

    document.addEventListener("visibilitychange", function () {
      if (!document.hidden) poll();
    });
    // The queue page's charts need the history: ask now. Other pages are
    // current as served.
    if (page === "queue") poll();
    else if (document.body.dataset.api) timer = setTimeout(poll, POLL_MS);
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
