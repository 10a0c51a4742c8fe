// The dashboard page: polls the admin API every second and draws what it finds. Vanilla JS and
// SVG, no build step; every value from the API reaches the page through textContent, never HTML.
"use strict";

(function () {
  var PERIOD_MS = 1000;
  var HISTORY = 60; // points kept per series: one minute at one per second
  var TOKEN_KEY = "portico-admin-token";
  var SVG = "http://www.w3.org/2000/svg";
  var M = PorticoMetrics;

  var token = takeToken();
  var previous = null; // {snap, at}: the last /metrics snapshot
  var history = { total: [], routes: {} };
  var upstream = {}; // service -> upstream latency percentiles of the last interval
  var selected = null; // route whose series the charts show; null = all routes
  // The body's data-ticks / data-metrics / data-auth / data-rps attributes mirror the page's
  // state, so a browser test can wait for a refresh instead of sleeping.
  var ticks = 0;
  var waiting = false; // polling paused until a token is given

  // `#token=...` lets an operator open the page with one link; the fragment never reaches the
  // server (so no access log sees it) and is dropped from the address bar and history at once.
  function takeToken() {
    var m = /(?:^#|&)token=([^&]*)/.exec(location.hash);
    if (m) {
      sessionStorage.setItem(TOKEN_KEY, decodeURIComponent(m[1]));
      dropFragment();
    }
    return sessionStorage.getItem(TOKEN_KEY);
  }

  function dropFragment() {
    window.history.replaceState(null, "", location.pathname + location.search);
  }

  function $(id) {
    return document.getElementById(id);
  }

  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }

  // Resolves to {status, body} (body: text, or null when the request failed). A stalled answer
  // is abandoned after 5 s, so one hung call cannot stop the refresh loop.
  function api(path) {
    var headers = token ? { Authorization: "Bearer " + token } : {};
    var abort = new AbortController();
    var timer = setTimeout(function () {
      abort.abort();
    }, 5000);
    return fetch(path, { headers: headers, cache: "no-store", signal: abort.signal })
      .then(function (r) {
        return r.text().then(function (body) {
          return { status: r.status, body: body };
        });
      })
      .catch(function () {
        return { status: 0, body: null };
      })
      .finally(function () {
        clearTimeout(timer);
      });
  }

  function json(reply) {
    if (reply.status !== 200) return null;
    try {
      return JSON.parse(reply.body);
    } catch (e) {
      return null;
    }
  }

  // === formatting ===

  function fmtRate(v) {
    if (v === null || v === undefined) return "–";
    return v < 10 ? v.toFixed(1) : Math.round(v).toLocaleString("en");
  }

  function fmtShare(v) {
    if (v === null || v === undefined) return "–";
    return (v * 100).toFixed(v > 0 && v < 0.1 ? 2 : 1) + " %";
  }

  function fmtSeconds(v) {
    if (v === null || v === undefined) return "–";
    if (v < 0.001) return (v * 1000).toFixed(2) + " ms";
    if (v < 1) return (v * 1000).toFixed(v < 0.01 ? 2 : v < 0.1 ? 1 : 0) + " ms";
    return v.toFixed(2) + " s";
  }

  function fmtUptime(s) {
    var d = Math.floor(s / 86400);
    var h = Math.floor((s % 86400) / 3600);
    var m = Math.floor((s % 3600) / 60);
    if (d) return d + "d " + h + "h";
    if (h) return h + "h " + m + "m";
    return m + "m " + (s % 60) + "s";
  }

  // === charts ===

  // A line chart of `series` ([{values: [number|null], cls}]) over the last HISTORY points, y from
  // 0 to a rounded maximum. Gaps (null) break the line. Each path gets data-points, the number of
  // points it draws, for the end-to-end test.
  function chart(svg, series, format, floorMax) {
    var w = svg.clientWidth || 400;
    var h = svg.clientHeight || 150;
    var padL = 56;
    var padB = 4;
    var padT = 8;
    svg.setAttribute("viewBox", "0 0 " + w + " " + h);
    while (svg.firstChild) svg.removeChild(svg.firstChild);
    var max = floorMax || 0;
    series.forEach(function (s) {
      s.values.forEach(function (v) {
        if (v !== null && v > max) max = v;
      });
    });
    max = niceCeil(max);
    for (var g = 0; g <= 2; g++) {
      var y = padT + ((h - padT - padB) * g) / 2;
      var line = document.createElementNS(SVG, "line");
      line.setAttribute("class", "grid");
      line.setAttribute("x1", padL);
      line.setAttribute("x2", w);
      line.setAttribute("y1", y);
      line.setAttribute("y2", y);
      svg.appendChild(line);
      var label = document.createElementNS(SVG, "text");
      label.setAttribute("x", padL - 6);
      label.setAttribute("y", y + 4);
      label.setAttribute("text-anchor", "end");
      label.textContent = g === 2 ? "0" : format((max * (2 - g)) / 2);
      svg.appendChild(label);
    }
    var step = (w - padL) / (HISTORY - 1);
    series.forEach(function (s) {
      var d = "";
      var points = 0;
      var offset = HISTORY - s.values.length;
      var pen = "M";
      s.values.forEach(function (v, i) {
        if (v === null || v === undefined || !isFinite(v)) {
          pen = "M";
          return;
        }
        var x = padL + (offset + i) * step;
        var y = h - padB - ((h - padT - padB) * v) / max;
        d += pen + x.toFixed(1) + "," + y.toFixed(1) + " ";
        pen = "L";
        points++;
      });
      var path = document.createElementNS(SVG, "path");
      path.setAttribute("class", "line " + s.cls);
      path.setAttribute("d", d.trim() || "M0,0");
      path.setAttribute("data-points", points);
      svg.appendChild(path);
    });
  }

  // 1, 2 or 5 times a power of ten, at least v (and something above zero for an idle chart).
  function niceCeil(v) {
    if (!(v > 0)) return 1;
    var p = Math.pow(10, Math.floor(Math.log10(v)));
    var steps = [1, 2, 5, 10];
    for (var i = 0; i < steps.length; i++) if (steps[i] * p >= v) return steps[i] * p;
    return 10 * p;
  }

  function sparkline(values) {
    var w = 120;
    var h = 24;
    var svg = document.createElementNS(SVG, "svg");
    svg.setAttribute("class", "spark");
    svg.setAttribute("viewBox", "0 0 " + w + " " + h);
    svg.setAttribute("width", w);
    svg.setAttribute("height", h);
    var max = niceCeil(Math.max.apply(null, values.concat([0])));
    var offset = HISTORY - values.length;
    var d = values
      .map(function (v, i) {
        var x = ((offset + i) * w) / (HISTORY - 1);
        var y = h - 1 - ((h - 2) * (v || 0)) / max;
        return (i ? "L" : "M") + x.toFixed(1) + "," + y.toFixed(1);
      })
      .join(" ");
    var path = document.createElementNS(SVG, "path");
    path.setAttribute("d", d || "M0,0");
    path.setAttribute("data-points", values.length);
    svg.appendChild(path);
    return svg;
  }

  // === panels ===

  function push(list, point) {
    list.push(point);
    if (list.length > HISTORY) list.shift();
  }

  function pick(list, key) {
    return list.map(function (p) {
      return p[key];
    });
  }

  function showMetrics(r) {
    var t = r.total;
    $("rps").textContent = fmtRate(t.rps);
    $("rate5xx").textContent = fmtShare(t.rate5xx);
    $("rate5xx").className = t.rate5xx ? "bad" : "";
    $("rate4xx").textContent = fmtShare(t.rate4xx);
    $("rate4xx").className = t.rate4xx ? "warn" : "";
    $("p50").textContent = fmtSeconds(t.p50);
    $("p95").textContent = fmtSeconds(t.p95);
    $("p99").textContent = fmtSeconds(t.p99);
    document.body.dataset.rps = t.rps;
    push(history.total, t);
    upstream = r.services;
    Object.keys(r.routes).forEach(function (name) {
      history.routes[name] = history.routes[name] || [];
    });
    Object.keys(history.routes).forEach(function (name) {
      var cur = r.routes[name] || { rps: 0, rate4xx: null, rate5xx: null, p50: null, p95: null, p99: null };
      push(history.routes[name], cur);
    });
  }

  function drawCharts() {
    var list = selected && history.routes[selected] ? history.routes[selected] : history.total;
    $("scope").textContent = selected ? "route " + selected : "all routes";
    $("all").hidden = !selected;
    chart($("chart-rps"), [{ values: pick(list, "rps"), cls: "s0" }], fmtRate);
    chart(
      $("chart-errors"),
      [
        { values: pick(list, "rate5xx"), cls: "bad" },
        { values: pick(list, "rate4xx"), cls: "warn" },
      ],
      fmtShare,
      0.01
    );
    chart(
      $("chart-latency"),
      [
        { values: pick(list, "p50"), cls: "s0" },
        { values: pick(list, "p95"), cls: "s1" },
        { values: pick(list, "p99"), cls: "s2" },
      ],
      fmtSeconds,
      0.001
    );
  }

  function drawRoutes() {
    var body = $("routes").tBodies[0];
    // Requests no route matched get a row only while there are some: usually there are none.
    var names = Object.keys(history.routes).filter(function (name) {
      return name !== "_unmatched" || history.routes[name].some(function (p) {
        return p.rps > 0;
      });
    });
    names.sort(function (a, b) {
      var ha = history.routes[a];
      var hb = history.routes[b];
      return hb[hb.length - 1].rps - ha[ha.length - 1].rps || a.localeCompare(b);
    });
    body.textContent = "";
    names.forEach(function (name) {
      var h = history.routes[name];
      var last = h[h.length - 1];
      var tr = el("tr");
      tr.dataset.route = name;
      tr.tabIndex = 0;
      if (name === selected) tr.className = "selected";
      tr.appendChild(el("td", "name", name));
      tr.appendChild(el("td", "num rps", fmtRate(last.rps)));
      var spark = el("td");
      spark.appendChild(sparkline(pick(h, "rps")));
      tr.appendChild(spark);
      tr.appendChild(el("td", "num" + (last.rate5xx ? " bad" : ""), fmtShare(last.rate5xx)));
      tr.appendChild(el("td", "num" + (last.rate4xx ? " warn" : ""), fmtShare(last.rate4xx)));
      tr.appendChild(el("td", "num", fmtSeconds(last.p50)));
      tr.appendChild(el("td", "num", fmtSeconds(last.p95)));
      tr.appendChild(el("td", "num", fmtSeconds(last.p99)));
      body.appendChild(tr);
    });
  }

  function select(name) {
    selected = selected === name ? null : name;
    drawCharts();
    drawRoutes();
  }

  function drawServices(data) {
    var box = $("services");
    box.textContent = "";
    (data.services || []).forEach(function (s) {
      var card = el("div", "service");
      card.dataset.service = s.name;
      var head = el("h3", null, s.name);
      var breaker = s.breaker || "none";
      var badge = el("span", "badge breaker " + breaker, "breaker: " + breaker.replace("_", "-"));
      head.appendChild(badge);
      var up = upstream[s.name];
      if (up && up.p50 !== null) {
        var lat = "upstream p50 " + fmtSeconds(up.p50) + " · p99 " + fmtSeconds(up.p99);
        head.appendChild(el("span", "facts latency", lat));
      }
      card.appendChild(head);
      var ul = el("ul");
      (s.targets || []).forEach(function (t) {
        var li = el("li");
        var state = t.ejected_for_ms ? "ejected" : t.healthy ? "healthy" : "unhealthy";
        li.dataset.state = state;
        li.appendChild(el("span", "badge " + state, state));
        li.appendChild(el("span", "url", t.url));
        var facts = ["weight " + t.weight, t.in_flight + " in flight"];
        if (t.ejected_for_ms) facts.push("back in " + Math.ceil(t.ejected_for_ms / 1000) + " s");
        if (t.ejections) facts.push(t.ejections + " ejections");
        li.appendChild(el("span", "facts", facts.join(" · ")));
        ul.appendChild(li);
      });
      card.appendChild(ul);
      box.appendChild(card);
    });
  }

  function drawErrors(data) {
    var body = $("errors").tBodies[0];
    body.textContent = "";
    var list = (data && data.errors) || [];
    if (!list.length) {
      var tr = el("tr", "empty");
      var td = el("td", null, "no errors recorded");
      td.colSpan = 7;
      tr.appendChild(td);
      body.appendChild(tr);
    }
    list.slice(0, 10).forEach(function (e) {
      var tr = el("tr");
      tr.dataset.status = e.status;
      var time = String(e.time || "");
      tr.appendChild(el("td", "time", time.replace("T", " ").replace(/\.\d+Z$|Z$/, "")));
      tr.appendChild(el("td", "num " + (e.status >= 500 ? "bad" : "warn"), e.status));
      tr.appendChild(el("td", "path", (e.method || "") + " " + (e.path || "")));
      tr.appendChild(el("td", null, e.route || "–"));
      tr.appendChild(el("td", null, e.service || "–"));
      tr.appendChild(el("td", null, e.error || "–"));
      tr.appendChild(el("td", "id", e.request_id || ""));
      body.appendChild(tr);
    });
  }

  function drawStatus(s) {
    $("version").textContent = s.version;
    $("uptime").textContent = fmtUptime(s.uptime_seconds);
    $("revision").textContent = "rev " + s.config.revision + " · " + s.config.hash.slice(0, 8);
    $("connections").textContent = s.connections;
  }

  function notice(text) {
    $("notice").hidden = !text;
    $("notice").textContent = text || "";
  }

  // === the refresh loop ===

  function tick() {
    var started = performance.now();
    Promise.all([api("/status"), api("/services"), api("/metrics"), api("/errors")]).then(
      function (replies) {
        try {
          if (!refresh(replies, performance.now())) return;
        } catch (e) {
          // An answer of an unexpected shape (an older or newer gateway) must not stop the loop.
          notice("The dashboard could not show an answer: " + e.message);
        }
        ticks++;
        document.body.dataset.ticks = ticks;
        setTimeout(tick, Math.max(0, PERIOD_MS - (performance.now() - started)));
      }
    );
  }

  // Draws one round of answers; false when polling has to wait for a token.
  function refresh(replies, at) {
    if (replies[0].status === 401) {
      document.body.dataset.auth = "needed";
      $("login").hidden = false;
      $("live").className = "dot down";
      $("live").textContent = "token needed";
      waiting = true; // polling with a wrong token would only repeat the 401
      return false;
    }
    document.body.dataset.auth = "ok";
    $("login").hidden = true;
    var status = json(replies[0]);
    var live = status !== null;
    $("live").className = live ? "dot up" : "dot down";
    $("live").textContent = live ? "live" : "unreachable";
    if (status) drawStatus(status);
    var services = json(replies[1]);
    if (services) drawServices(services);
    var problems = [];
    if (replies[2].status === 200) {
      var snap = M.snapshot(M.parse(replies[2].body));
      if (previous) showMetrics(M.rates(previous.snap, snap, (at - previous.at) / 1000));
      previous = { snap: snap, at: at };
      document.body.dataset.metrics = "ok";
      drawCharts();
      drawRoutes();
    } else if (live) {
      document.body.dataset.metrics = "missing";
      problems.push("GET /metrics answered " + replies[2].status + ": no rates or latencies.");
    }
    if (replies[3].status === 200) drawErrors(json(replies[3]));
    else if (live) problems.push("GET /errors answered " + replies[3].status + ".");
    notice(live ? problems.join(" ") : "The admin API does not answer; retrying every second.");
    return true;
  }

  $("login").addEventListener("submit", function (ev) {
    ev.preventDefault();
    token = $("token").value;
    sessionStorage.setItem(TOKEN_KEY, token);
    $("token").value = "";
    $("login").hidden = true;
    resume();
  });
  // A `#token=` link pasted into an open tab changes only the fragment: no reload.
  window.addEventListener("hashchange", function () {
    token = takeToken();
    resume();
  });
  $("routes").addEventListener("click", function (ev) {
    var tr = ev.target.closest("tr[data-route]");
    if (tr) select(tr.dataset.route);
  });
  $("routes").addEventListener("keydown", function (ev) {
    var tr = ev.target.closest("tr[data-route]");
    if (tr && (ev.key === "Enter" || ev.key === " ")) select(tr.dataset.route);
  });
  $("all").addEventListener("click", function () {
    select(null);
  });
  window.addEventListener("resize", drawCharts);

  function resume() {
    if (!waiting) return;
    waiting = false;
    tick();
  }

  tick();
})();
