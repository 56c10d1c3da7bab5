// cframe's topology page: follows the controller's topology stream
// (server-sent events; the browser reconnects by itself) and draws it. No
// polling, no library, nothing loaded from anywhere but the controller.
"use strict";

const STREAM = "/api-service/v1/topology/stream";
const GRAPH_MAX = 16;      // up to this many edges: a graph; more: a link matrix
const RTT_LABELS_MAX = 8;  // up to this many edges the graph prints RTTs on the links

const $ = (sel) => document.querySelector(sel);

function esc(s) {
  return String(s).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
}

function setConn(state, text) {
  const el = $("#conn");
  el.dataset.state = state;
  el.textContent = text;
}

function ago(iso) {
  if (!iso) return "";
  const t = new Date(iso);
  const s = Math.max(0, Math.round((Date.now() - t.getTime()) / 1000));
  const rel = s < 90 ? s + " s" : s < 5400 ? Math.round(s / 60) + " min" : s < 172800 ? Math.round(s / 3600) + " h" : Math.round(s / 86400) + " d";
  return "since " + t.toLocaleTimeString() + " (" + rel + " ago)";
}

function rtt(l) {
  return l.rtt_ms ? (l.rtt_ms < 10 ? l.rtt_ms.toFixed(2) : l.rtt_ms.toFixed(1)) + " ms" : "";
}

const siteOf = (e) => e.site || e.name;
const key = (a, b) => (a < b ? a + "|" + b : b + "|" + a);

// edgeClass is how an edge's node and row are marked: online, offline or error.
function edgeClass(e) {
  if (e.state !== "online") return "offline";
  return e.last_error ? "error" : "online";
}

function describe(l) {
  let s = l.a + " ↔ " + l.b + ": " + l.state;
  if (l.state === "up" && l.probe === "unknown") s += " (configured; no probe result)";
  if (rtt(l)) s += ", rtt " + rtt(l);
  if (l.encryption) s += ", " + (l.encryption === "wireguard" ? "encrypted (WireGuard)" : l.encryption.toUpperCase());
  if (l.reason) s += " — " + l.reason;
  if (l.encryption_reason && l.encryption_reason !== l.reason) s += " — " + l.encryption_reason;
  if (l.since) s += " — " + ago(l.since);
  return s;
}

// rank puts troubled sites first: an edge in error, then offline, then fine.
const rank = { error: 0, offline: 1, online: 2 };

function render(t) {
  document.body.dataset.revision = t.revision;
  const worst = new Map();
  for (const e of t.edges) worst.set(siteOf(e), Math.min(worst.get(siteOf(e)) ?? 9, rank[edgeClass(e)]));
  const edges = [...t.edges].sort((a, b) => worst.get(siteOf(a)) - worst.get(siteOf(b)) ||
    siteOf(a).localeCompare(siteOf(b)) || a.name.localeCompare(b.name));
  const online = edges.filter((e) => e.state === "online").length;
  const count = { up: 0, pending: 0, down: 0 };
  for (const l of t.links) count[l.state] = (count[l.state] || 0) + 1;
  const sites = new Set(edges.map(siteOf)).size;
  $("#summary").textContent = "revision " + t.revision + " · " + sites + " site" + (sites === 1 ? "" : "s") + ", " +
    online + "/" + edges.length + " edges online · links: " + count.up + " up, " + count.pending + " pending, " + count.down + " down" +
    (count.incompatible ? ", " + count.incompatible + " incompatible (no common underlay family)" : "");
  renderEdges(edges, t.revision);
  renderProblems(t.links);
  $("#graph").innerHTML = edges.length <= GRAPH_MAX ? graph(edges, t.links) : matrix(edges, t.links);
  $("#pending").textContent = t.pending && t.pending.length ? "Connected but not added: " + t.pending.join(", ") : "";
}

function renderEdges(edges, rev) {
  let html = "", prev = null;
  for (const e of edges) {
    const site = siteOf(e), first = site !== prev;
    prev = site;
    const cls = edgeClass(e);
    const behind = e.state === "online" && e.applied_revision !== rev;
    html += '<tr data-edge="' + esc(e.name) + '" data-state="' + cls + '" data-applied="' + e.applied_revision + '"' + (first ? ' class="site-start"' : "") + ">" +
      "<td>" + (first ? esc(site) : "") + "</td>" +
      '<td title="' + esc(e.host_addr + " · " + e.cidrs.join(", ")) + '">' + esc(e.name) + "</td>" +
      "<td>" + (e.site && e.role ? '<span class="badge role-' + esc(e.role) + '">' + esc(e.role) + "</span>" : "") + "</td>" +
      '<td><span class="badge state-' + cls + '" title="' + esc(ago(e.since)) + '">' + (cls === "error" ? "error" : esc(e.state)) + "</span></td>" +
      "<td" + (behind ? ' class="behind" title="the current revision is ' + rev + '"' : "") + ">" + e.applied_revision + "</td>" +
      '<td class="err">' + esc(e.last_error || (e.conflicts && e.conflicts.length ? e.conflicts.length + " conflict(s): " + e.conflicts.join("; ") : "")) + "</td></tr>";
  }
  $("#edges tbody").innerHTML = html;
}

// renderProblems lists the links that are not up, down first; an edge at
// the end of more than GROUP of them in one state gets one line for all.
const GROUP = 3;

function renderProblems(links) {
  const order = { down: 0, pending: 1, incompatible: 2 };
  const bad = links.filter((l) => l.state !== "up").sort((x, y) => order[x.state] - order[y.state] || (x.since || "").localeCompare(y.since || ""));
  $("#problem-count").textContent = bad.length ? "(" + bad.length + ")" : "";
  if (!bad.length) {
    $("#problems").innerHTML = '<li class="none">none</li>';
    return;
  }
  const count = new Map();
  for (const l of bad) for (const e of [l.a, l.b]) count.set(e + " " + l.state, (count.get(e + " " + l.state) || 0) + 1);
  const grouped = new Set();
  const items = [];
  for (const l of bad) {
    const hub = [l.a, l.b].find((e) => count.get(e + " " + l.state) > GROUP);
    if (hub) {
      if (!grouped.has(hub + " " + l.state)) {
        grouped.add(hub + " " + l.state);
        items.push({ edge: hub, state: l.state, text: hub + " ↔ " + count.get(hub + " " + l.state) + " links", why: l.reason, since: l.since });
      }
      continue;
    }
    items.push({ link: key(l.a, l.b), state: l.state, text: l.a + " ↔ " + l.b, why: l.reason, since: l.since });
  }
  const cls = (s) => (s === "down" ? "error" : "offline");
  $("#problems").innerHTML = items.slice(0, 200).map((p) =>
    "<li" + (p.edge ? ' data-edge="' + esc(p.edge) + '"' : ' data-problem="' + esc(p.link) + '"') + ' data-state="' + esc(p.state) + '"><b class="state-' + cls(p.state) + '">' +
    esc(p.state) + "</b> " + esc(p.text) + ' <span class="why">' + esc([p.why, ago(p.since)].filter(Boolean).join(" — ")) + "</span></li>").join("") +
    (items.length > 200 ? '<li class="none">… and ' + (items.length - 200) + " more</li>" : "");
}

function linkAttrs(l) {
  return ' data-link="' + esc(key(l.a, l.b)) + '" data-state="' + esc(l.state) + '" data-probe="' + esc(l.probe) + '" data-encryption="' + esc(l.encryption || "") + '"';
}

// graph draws the edges on a circle, gateways of one site side by side on
// a shaded arc, and a line per link.
function graph(edges, links) {
  const W = 1000, H = 720, cx = W / 2, cy = H / 2, R = Math.min(W, H) / 2 - 110;
  const pos = new Map();
  const n = edges.length;
  edges.forEach((e, i) => {
    const a = -Math.PI / 2 + (2 * Math.PI * i) / Math.max(n, 1);
    pos.set(e.name, { x: n === 1 ? cx : cx + R * Math.cos(a), y: n === 1 ? cy : cy + R * Math.sin(a), a });
  });
  let out = '<svg viewBox="0 0 ' + W + " " + H + '" preserveAspectRatio="xMidYMid meet" role="img" aria-label="mesh graph">';
  // Sites with several gateways: an arc behind them and the site's name.
  const bySite = new Map();
  for (const e of edges) bySite.set(siteOf(e), [...(bySite.get(siteOf(e)) || []), e]);
  for (const [site, gws] of bySite) {
    if (gws.length < 2) continue;
    const p0 = pos.get(gws[0].name), p1 = pos.get(gws[gws.length - 1].name);
    const large = p1.a - p0.a > Math.PI ? 1 : 0;
    out += '<path class="site" d="M' + p0.x + " " + p0.y + " A" + R + " " + R + " 0 " + large + " 1 " + p1.x + " " + p1.y +
      '" fill="none" stroke-width="64" stroke-linecap="round" stroke="#e8eef5"/>';
    const mid = (p0.a + p1.a) / 2;
    out += '<text data-site="' + esc(site) + '" text-anchor="middle" x="' + (cx + (R + 78) * Math.cos(mid)) + '" y="' + (cy + (R + 78) * Math.sin(mid)) + '">site ' + esc(site) + "</text>";
  }
  for (const l of links) {
    const a = pos.get(l.a), b = pos.get(l.b);
    if (!a || !b) continue;
    out += "<line" + linkAttrs(l) + ' x1="' + a.x + '" y1="' + a.y + '" x2="' + b.x + '" y2="' + b.y + '"><title>' + esc(describe(l)) + "</title></line>";
    if (n <= RTT_LABELS_MAX && (rtt(l) || l.state !== "up")) {
      const label = l.state === "up" ? rtt(l) : l.state;
      out += '<text class="rtt" text-anchor="middle" x="' + (a.x + b.x) / 2 + '" y="' + ((a.y + b.y) / 2 - 4) + '">' + esc(label) + "</text>";
    }
  }
  for (const e of edges) {
    const p = pos.get(e.name);
    const away = n === 1 ? 0 : 56;
    const lx = p.x + away * Math.cos(p.a), ly = p.y + away * Math.sin(p.a) - (Math.sin(p.a) < -0.5 ? 16 : 0);
    const rev = e.since ? "rev " + e.applied_revision : "no report yet";
    const role = e.site ? e.role : "";
    out += '<g data-node="' + esc(e.name) + '"><circle class="node ' + edgeClass(e) + (role ? " " + esc(role) : "") + '" cx="' + p.x + '" cy="' + p.y + '" r="22"><title>' +
      esc(e.name + " · " + e.state + " · applied revision " + e.applied_revision + (e.last_error ? " · " + e.last_error : "")) + "</title></circle>" +
      '<text text-anchor="middle" x="' + lx + '" y="' + ly + '">' + esc(e.name) + (role ? " (" + esc(role) + ")" : "") + "</text>" +
      '<text class="rtt" text-anchor="middle" x="' + lx + '" y="' + (ly + 17) + '">' + esc(rev + (n <= RTT_LABELS_MAX ? " · " + e.cidrs.join(", ") : "")) + "</text></g>";
  }
  return out + "</svg>";
}

// matrix draws one cell per pair of edges, sorted by site: readable with
// a hundred edges, where a graph is a hairball.
function matrix(edges, links) {
  const n = edges.length, margin = 8, size = 720, cell = Math.max(3, Math.min(16, Math.floor((size - margin) / n)));
  const idx = new Map(edges.map((e, i) => [e.name, i]));
  let out = '<svg viewBox="0 0 ' + (n * cell + margin * 2) + " " + (n * cell + margin * 2) + '" preserveAspectRatio="xMidYMid meet" role="img" aria-label="link matrix">';
  edges.forEach((e, i) => {
    out += '<rect class="cell node-cell" data-node="' + esc(e.name) + '" x="' + (margin + i * cell) + '" y="' + (margin + i * cell) + '" width="' + cell + '" height="' + cell +
      '" fill="' + (edgeClass(e) === "online" ? "#5f6b7a" : edgeClass(e) === "error" ? "#d93025" : "#c4c9cf") + '"><title>' + esc(e.name + " · " + e.state) + "</title></rect>";
  });
  for (const l of links) {
    const i = idx.get(l.a), j = idx.get(l.b);
    if (i === undefined || j === undefined) continue;
    const title = "<title>" + esc(describe(l)) + "</title>";
    out += '<rect class="cell"' + linkAttrs(l) + ' x="' + (margin + j * cell) + '" y="' + (margin + i * cell) + '" width="' + cell + '" height="' + cell + '">' + title + "</rect>";
    out += '<rect class="cell" data-mirror="1"' + linkAttrs(l) + ' x="' + (margin + i * cell) + '" y="' + (margin + j * cell) + '" width="' + cell + '" height="' + cell + '">' + title + "</rect>";
  }
  return out + "</svg>";
}

function connect() {
  setConn("connecting", "connecting…");
  const es = new EventSource(STREAM);
  es.addEventListener("topology", (ev) => {
    setConn("open", "live");
    render(JSON.parse(ev.data));
  });
  es.onerror = () => {
    if (es.readyState === EventSource.CLOSED) {
      // Refused (signed out?) or gone: try again in a while.
      setConn("error", "disconnected; retrying");
      setTimeout(connect, 5000);
    } else {
      setConn("error", "reconnecting…");
    }
  };
}

connect();
