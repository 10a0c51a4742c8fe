// Pure functions of the dashboard, kept apart from the DOM code so the end-to-end test can run
// them in Chromium against fixtures: a Prometheus/OpenMetrics text parser, counter deltas that
// survive restarts, and histogram quantiles computed the way PromQL's histogram_quantile does.
"use strict";

var PorticoMetrics = (function () {
  // One sample line: `name{a="x",b="y\"z"} value [timestamp]`. Returns null for lines that are
  // not samples, so a format detail we do not know costs one line, not the whole scrape.
  function parseLine(line) {
    var i = 0;
    var n = line.length;
    while (i < n && line[i] !== "{" && line[i] !== " " && line[i] !== "\t") i++;
    var name = line.slice(0, i);
    if (!name) return null;
    var labels = {};
    if (line[i] === "{") {
      i++;
      for (;;) {
        while (i < n && (line[i] === " " || line[i] === ",")) i++;
        if (i >= n) return null;
        if (line[i] === "}") {
          i++;
          break;
        }
        var eq = line.indexOf("=", i);
        if (eq < 0 || line[eq + 1] !== '"') return null;
        var key = line.slice(i, eq).trim();
        var value = "";
        i = eq + 2;
        while (i < n && line[i] !== '"') {
          if (line[i] === "\\" && i + 1 < n) {
            i++;
            value += line[i] === "n" ? "\n" : line[i];
          } else {
            value += line[i];
          }
          i++;
        }
        if (i >= n) return null;
        i++;
        labels[key] = value;
      }
    }
    var rest = line.slice(i).trim().split(/\s+/);
    var v = parseValue(rest[0]);
    if (v === undefined) return null;
    return { name: name, labels: labels, value: v };
  }

  function parseValue(s) {
    if (s === undefined || s === "") return undefined;
    if (s === "+Inf" || s === "Inf") return Infinity;
    if (s === "-Inf") return -Infinity;
    if (s === "NaN") return NaN;
    var v = Number(s);
    return isNaN(v) ? undefined : v;
  }

  /** Every sample in an exposition text; comments (`# TYPE`, `# HELP`, `# EOF`) are skipped. */
  function parse(text) {
    var out = [];
    var lines = text.split("\n");
    for (var k = 0; k < lines.length; k++) {
      var line = lines[k].trim();
      if (!line || line[0] === "#") continue;
      var s = parseLine(line);
      if (s) out.push(s);
    }
    return out;
  }

  // Counter samples may be exposed as `x_total` (Prometheus text) or `x` plus `_total`
  // (OpenMetrics); both spellings name the same family here.
  function isFamily(name, family) {
    return name === family || name === family + "_total";
  }

  function seriesKey(labels) {
    return Object.keys(labels)
      .sort()
      .map(function (k) {
        return k + "=" + JSON.stringify(labels[k]);
      })
      .join(",");
  }

  /**
   * The families the dashboard shows, indexed for differencing:
   * requests: series key -> {route, service, method, status_class, value};
   * routes / services: name -> {buckets: {le: cumulative count}, sum, count}.
   * (Connections and the config revision come from /status, which every gateway has.)
   */
  function snapshot(samples) {
    var snap = { requests: {}, routes: {}, services: {} };
    function hist(map, name) {
      if (!map[name]) map[name] = { buckets: {}, sum: 0, count: 0 };
      return map[name];
    }
    for (var i = 0; i < samples.length; i++) {
      var s = samples[i];
      var l = s.labels;
      var m = s.name;
      if (isFamily(m, "portico_requests")) {
        snap.requests[seriesKey(l)] = {
          route: l.route || "_unmatched",
          service: l.service || "",
          method: l.method || "",
          status_class: l.status_class || "",
          value: s.value,
        };
      } else if (m.indexOf("portico_request_duration_seconds") === 0) {
        addHist(hist(snap.routes, l.route || "_unmatched"), m.slice(32), l, s.value);
      } else if (m.indexOf("portico_upstream_duration_seconds") === 0) {
        addHist(hist(snap.services, l.service || ""), m.slice(33), l, s.value);
      }
    }
    return snap;
  }

  function addHist(h, suffix, labels, value) {
    if (suffix === "_bucket" && labels.le !== undefined) {
      var le = parseValue(labels.le);
      if (le !== undefined) h.buckets[le] = (h.buckets[le] || 0) + value;
    } else if (suffix === "_sum") {
      h.sum += value;
    } else if (suffix === "_count") {
      h.count += value;
    }
  }

  /** How much a counter grew; after a reset (the gateway restarted) the new value is the growth. */
  function delta(prev, cur) {
    if (prev === undefined || prev === null) return cur;
    return cur < prev ? cur : cur - prev;
  }

  /** Cumulative buckets as a sorted list of [upper bound, count]. */
  function bucketList(buckets) {
    return Object.keys(buckets)
      .map(function (k) {
        return [Number(k), buckets[k]];
      })
      .sort(function (a, b) {
        return a[0] - b[0];
      });
  }

  /**
   * The q-quantile (0..1) of cumulative buckets [[le, count], ...] sorted by le, the last one
   * +Inf: the bucket holding rank q*total, interpolated linearly inside it; a rank in the +Inf
   * bucket answers the largest finite bound. null when there were no observations.
   */
  function quantile(q, list) {
    if (!list.length) return null;
    var total = list[list.length - 1][1];
    if (!(total > 0)) return null;
    var rank = q * total;
    for (var i = 0; i < list.length; i++) {
      var le = list[i][0];
      var count = list[i][1];
      if (count >= rank) {
        if (le === Infinity) return i > 0 ? list[i - 1][0] : null;
        var lower = i > 0 ? list[i - 1][0] : 0;
        var below = i > 0 ? list[i - 1][1] : 0;
        if (count === below) return le;
        return lower + ((le - lower) * (rank - below)) / (count - below);
      }
    }
    return null;
  }

  // Bucket growth between two histograms of one series. When the count went down the process
  // restarted: everything in the new histogram is growth.
  function histDelta(prev, cur) {
    var out = {};
    var reset = !prev || cur.count < prev.count;
    for (var le in cur.buckets) {
      out[le] = reset ? cur.buckets[le] : Math.max(0, cur.buckets[le] - (prev.buckets[le] || 0));
    }
    return out;
  }

  function addBuckets(into, from) {
    for (var le in from) into[le] = (into[le] || 0) + from[le];
  }

  function percentiles(buckets) {
    var list = bucketList(buckets);
    return { p50: quantile(0.5, list), p95: quantile(0.95, list), p99: quantile(0.99, list) };
  }

  function emptyRates() {
    return { requests: 0, rps: 0, rate4xx: null, rate5xx: null, count4xx: 0, count5xx: 0 };
  }

  /**
   * Rates between two snapshots taken `seconds` apart, overall and per route:
   * {rps, rate4xx, rate5xx (shares of all requests, null without traffic), p50, p95, p99 (seconds,
   * null without traffic)}; per service, the upstream latency's {p50, p95, p99}. A series absent from `prev` counts from zero (it was created by its
   * first request), so the first request after the dashboard opened is not lost.
   */
  function rates(prev, cur, seconds) {
    var total = emptyRates();
    var routes = {};
    for (var key in cur.requests) {
      var s = cur.requests[key];
      var p = prev.requests[key];
      var d = delta(p && p.value, s.value);
      if (!(d > 0)) continue;
      var r = routes[s.route] || (routes[s.route] = emptyRates());
      [total, r].forEach(function (t) {
        t.requests += d;
        if (s.status_class === "4xx") t.count4xx += d;
        if (s.status_class === "5xx") t.count5xx += d;
      });
    }
    var allBuckets = {};
    var names = Object.keys(cur.routes);
    for (var i = 0; i < names.length; i++) {
      var name = names[i];
      var b = histDelta(prev.routes[name], cur.routes[name]);
      addBuckets(allBuckets, b);
      if (!routes[name]) routes[name] = emptyRates();
      Object.assign(routes[name], percentiles(b));
    }
    Object.assign(total, percentiles(allBuckets));
    var services = {};
    Object.keys(cur.services).forEach(function (name) {
      services[name] = percentiles(histDelta(prev.services[name], cur.services[name]));
    });
    [total].concat(Object.values(routes)).forEach(function (t) {
      t.rps = seconds > 0 ? t.requests / seconds : 0;
      t.rate4xx = t.requests > 0 ? t.count4xx / t.requests : null;
      t.rate5xx = t.requests > 0 ? t.count5xx / t.requests : null;
      if (t.p50 === undefined) t.p50 = t.p95 = t.p99 = null;
    });
    return { total: total, routes: routes, services: services };
  }

  return {
    parse: parse,
    snapshot: snapshot,
    delta: delta,
    quantile: quantile,
    bucketList: bucketList,
    rates: rates,
  };
})();
