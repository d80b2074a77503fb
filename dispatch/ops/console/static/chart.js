// dispatch ui: polls /api/live every 2 s and draws each resource's recent achieved
// rate (blue), its limit (dashed) and the tasks waiting for its throttle (orange)
// as inline SVG. No library, no network beyond this console.
(function () {
  "use strict";
  var box = document.getElementById("live");
  if (!box) { return; }
  var SVG = "http://www.w3.org/2000/svg";
  var W = 420, H = 120, PAD = 4;

  function el(name, attrs, text) {
    var node = document.createElementNS(SVG, name);
    Object.keys(attrs).forEach(function (k) { node.setAttribute(k, attrs[k]); });
    if (text !== undefined) { node.textContent = text; }
    return node;
  }

  function line(points, key, top, color, dashed) {
    if (points.length < 2) { return null; }
    var t0 = points[0].t, t1 = points[points.length - 1].t, span = Math.max(t1 - t0, 1);
    var xy = points.map(function (p) {
      var x = PAD + (W - 2 * PAD) * (p.t - t0) / span;
      var y = H - PAD - (H - 2 * PAD) * Math.min(p[key] / top, 1);
      return x.toFixed(1) + "," + y.toFixed(1);
    });
    var attrs = { points: xy.join(" "), fill: "none", stroke: color, "stroke-width": 2 };
    if (dashed) { attrs["stroke-dasharray"] = "5 4"; attrs["stroke-width"] = 1; }
    return el("polyline", attrs);
  }

  function chart(resource) {
    var pts = resource.points;
    var top = 1;
    pts.forEach(function (p) { top = Math.max(top, p.rate_per_s, p.waiting); });
    if (resource.limit_per_s) { top = Math.max(top, resource.limit_per_s); }
    top *= 1.1;
    var wrap = document.createElement("div");
    wrap.className = "chart";
    var title = document.createElement("h3");
    title.textContent = resource.name;
    wrap.appendChild(title);
    var svg = el("svg", { width: W, height: H, viewBox: "0 0 " + W + " " + H, role: "img" });
    svg.appendChild(el("rect", { x: 0, y: 0, width: W, height: H, fill: "#fbfcfd", stroke: "#e3e7ec" }));
    if (resource.limit_per_s && pts.length > 1) {
      var limit = pts.map(function (p) { return { t: p.t, v: resource.limit_per_s }; });
      svg.appendChild(line(limit, "v", top, "#7d8894", true));
    }
    [["waiting", "#c66a00"], ["rate_per_s", "#0b5cad"]].forEach(function (s) {
      var drawn = line(pts, s[0], top, s[1], false);
      if (drawn) { svg.appendChild(drawn); }
    });
    if (pts.length < 2) {
      svg.appendChild(el("text", { x: 12, y: H / 2, fill: "#7d8894", "font-size": 12 }, "collecting figures…"));
    }
    svg.appendChild(el("text", { x: W - 6, y: 14, fill: "#7d8894", "font-size": 11, "text-anchor": "end" }, top.toFixed(1)));
    if (pts.length > 1) {
      var span = Math.round(pts[pts.length - 1].t - pts[0].t);
      svg.appendChild(el("text", { x: 6, y: H - 6, fill: "#7d8894", "font-size": 11 }, "last " + span + " s"));
    }
    wrap.appendChild(svg);
    var last = pts.length ? pts[pts.length - 1] : null;
    var legend = document.createElement("div");
    legend.className = "legend";
    var achieved = resource.achieved_rate_per_s === null ? "…" : resource.achieved_rate_per_s.toFixed(2) + "/s";
    [["rate", "achieved " + achieved],
     ["limit", " · limit " + (resource.limit_per_s ? resource.limit_per_s + "/s" : "none")],
     ["waiting", " · waiting " + (last ? last.waiting : resource.waiting)],
     ["", " · mean wait " + (last ? last.mean_wait_s.toFixed(2) : "0.00") + " s"]].forEach(function (part) {
      var span = document.createElement("span");
      span.className = part[0];
      span.textContent = part[1];
      legend.appendChild(span);
    });
    wrap.appendChild(legend);
    return wrap;
  }

  function draw(data) {
    box.textContent = "";
    if (!data.resources.length) {
      var p = document.createElement("p");
      p.className = "quiet";
      p.textContent = "No throttled resource reported by a live dispatcher.";
      box.appendChild(p);
    }
    data.resources.forEach(function (r) { box.appendChild(chart(r)); });
    var visible = document.getElementById("queue-visible");
    if (visible) { visible.textContent = data.queue.visible; }
  }

  function poll() {
    fetch(box.getAttribute("data-src"), { credentials: "same-origin", cache: "no-store" })
      .then(function (r) { return r.ok ? r.json() : Promise.reject(r.status); })
      .then(draw)
      .catch(function () { /* the next poll tries again */ })
      .then(function () { window.setTimeout(poll, 2000); });
  }
  poll();
}());
