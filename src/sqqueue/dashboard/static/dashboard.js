// sqqueue dashboard: live refresh of the counts, health and charts from the JSON API.
// The pages work without this file. It never parses markup: every value from the API is
// set with textContent or as an SVG attribute, so no payload or error can become markup.
(function () {
  "use strict";
  var body = document.body;
  var api = body.getAttribute("data-api");
  var kind = body.getAttribute("data-live");
  if (!api || !kind) {
    return;
  }
  var every = parseInt(body.getAttribute("data-refresh-ms"), 10) || 2000;
  var live = document.getElementById("live");
  var SVG = "http://www.w3.org/2000/svg";
  var SERIES = ["enqueued", "completed", "failed"];

  function num(n) {
    return n === null || n === undefined ? "-" : Number(n).toLocaleString("en-US");
  }
  function age(s) {
    if (s === null || s === undefined) { return "-"; }
    if (s < 10) { return s.toFixed(1) + " s"; }
    if (s < 120) { return Math.round(s) + " s"; }
    if (s < 7200) { return Math.round(s / 60) + " min"; }
    if (s < 2 * 86400) { return (s / 3600).toFixed(1) + " h"; }
    return (s / 86400).toFixed(1) + " d";
  }
  function size(b) {
    if (b === null || b === undefined) { return "-"; }
    var units = ["B", "KiB", "MiB", "GiB"];
    var i = 0;
    while (b >= 1024 && i < units.length - 1) { b /= 1024; i += 1; }
    return i === 0 ? Math.round(b) + " B" : b.toFixed(1) + " " + units[i];
  }
  function when(t) {
    if (t === null || t === undefined) { return "-"; }
    return new Date(t * 1000).toISOString().slice(0, 19).replace("T", " ") + "Z";
  }
  function nice(v) {
    return v < 10000 ? num(v) : Math.round(v / 1000) + "k";
  }
  function setText(el, text) {
    if (el && el.textContent !== text) { el.textContent = text; }
  }
  function byData(attr, value) {
    var found = [];
    var all = document.querySelectorAll("[" + attr + "]");
    for (var i = 0; i < all.length; i += 1) {
      if (all[i].getAttribute(attr) === value) { found.push(all[i]); }
    }
    return found;
  }

  function draw(svg, buckets) {
    var width = Number(svg.getAttribute("width"));
    var height = Number(svg.getAttribute("height"));
    var top = 1;
    buckets.forEach(function (row) {
      SERIES.forEach(function (name) {
        if (row[name] !== null && row[name] > top) { top = row[name]; }
      });
    });
    var count = Math.max(buckets.length - 1, 1);
    var old = svg.querySelectorAll("polyline");
    for (var i = 0; i < old.length; i += 1) { svg.removeChild(old[i]); }
    SERIES.forEach(function (name) {
      var run = [];
      function flush() {
        if (run.length === 1) {  // a lone point becomes a short dash, so it shows
          var xy = run[0].split(",");
          run.unshift((Number(xy[0]) - 3).toFixed(1) + "," + xy[1]);
        }
        if (run.length) {
          var line = document.createElementNS(SVG, "polyline");
          line.setAttribute("class", "s-" + name);
          line.setAttribute("points", run.join(" "));
          svg.appendChild(line);
          run = [];
        }
      }
      buckets.forEach(function (row, index) {
        var value = row[name];
        if (value === null) { flush(); return; }
        var x = index * width / count;
        var y = height - 2 - (height - 4) * value / top;
        run.push(x.toFixed(1) + "," + y.toFixed(1));
      });
      flush();
    });
    return top;
  }

  function applyRow(row) {
    if (row.error || !row.counts) { return; }
    byData("data-q", row.name).forEach(function (cell) {
      var key = cell.getAttribute("data-k");
      if (Object.prototype.hasOwnProperty.call(row.counts, key)) {
        setText(cell, num(row.counts[key]));
      } else if (key === "oldest") {
        setText(cell, age(row.oldest_ready_age));
      } else if (key === "expiring") {
        setText(cell, num(row.expiring_soon));
      }
    });
    byData("data-chart", row.name).forEach(function (svg) {
      var top = draw(svg, row.chart || []);
      byData("data-chart-top", row.name).forEach(function (label) {
        setText(label, "max " + nice(top) + "/min");
      });
    });
  }

  function applyHealth(h) {
    if (!h) { return; }
    var box = document.getElementById("health");
    if (box) { box.className = "health " + (h.ok ? "ok" : "bad"); }
    byData("data-h", "db_bytes").forEach(function (el) { setText(el, size(h.db_bytes)); });
    byData("data-h", "wal_bytes").forEach(function (el) { setText(el, size(h.wal_bytes)); });
    byData("data-h", "last_checkpoint").forEach(function (el) {
      setText(el, h.last_checkpoint ? when(h.last_checkpoint) : "none since the dashboard started");
    });
    byData("data-h", "status").forEach(function (el) { setText(el, h.ok ? "ok" : "failing"); });
    byData("data-h", "query_ms").forEach(function (el) {
      setText(el, h.query_seconds === null ? "-" : (h.query_seconds * 1000).toFixed(1) + " ms");
    });
    byData("data-h", "error").forEach(function (el) { setText(el, h.error || ""); });
  }

  function status(text, stale) {
    if (!live) { return; }
    live.hidden = false;
    setText(live, text);
    live.className = stale ? "live stale" : "live";
  }

  function tick() {
    fetch(api, { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then(function (response) {
        if (response.status === 401) { throw new Error("logged out"); }
        if (!response.ok) { throw new Error("HTTP " + response.status); }
        return response.json();
      })
      .then(function (data) {
        if (kind === "overview") {
          var table = document.getElementById("queues");
          var names = data.queues.map(function (q) { return q.name; }).join(",");
          var shown = table ? table.getAttribute("data-names") : "";
          if (!data.error && names !== shown) {
            window.location.reload();  // queues came or went: the server lays the table out
            return;
          }
          data.queues.forEach(applyRow);
          applyHealth(data.health);
        } else {
          applyRow(data);
        }
        status("live", false);
        window.setTimeout(tick, every);
      })
      .catch(function (error) {
        status(error.message === "logged out" ? "logged out" : "offline, retrying", true);
        if (error.message !== "logged out") { window.setTimeout(tick, every * 2); }
      });
  }

  status("live", false);
  window.setTimeout(tick, every);
}());
