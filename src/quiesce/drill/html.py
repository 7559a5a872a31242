"""The drill as one self-contained HTML page: requests over time, the stop's phases, the signal.

The page carries the verdict as JSON (``<script type="application/json"
id="verdict">``, exactly what ``--json`` prints) and draws from it with a
little inline script: stacked bars of requests per 100 ms by outcome (by the
time each was sent), each stop's phases from the service's own report as
shaded bands, each SIGTERM and exit as a line. It fetches nothing: no
external script, style, font or image, and its Content-Security-Policy
forbids any fetch, so it opens the same from a CI artifact, offline.

What the script drew it also writes into the page: ``#drawn`` has the number
of requests and bars drawn (``data-requests``, ``data-bars``) and ``#totals``
a row per outcome (``data-kind``, ``data-count``), so a test (or a reader)
can check the chart against the verdict.
"""

from __future__ import annotations

import html
import json
from typing import Any

__all__ = ["render"]

_CSP = "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'"

_STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 24px; color: #222; background: #fff; }
h1 { font-size: 20px; margin: 0 0 8px; }
h1.passed { color: #2e7d32; } h1.failed { color: #c62828; }
ul.problems li { color: #c62828; } ul.notes li { color: #555; }
table { border-collapse: collapse; margin: 8px 0 16px; }
td, th { border: 1px solid #ddd; padding: 2px 8px; text-align: right; }
td:first-child, th:first-child { text-align: left; }
#chart { border: 1px solid #ccc; background: #fafafa; }
#legend span { display: inline-block; margin-right: 14px; }
#legend i { display: inline-block; width: 12px; height: 12px; margin-right: 4px;
            vertical-align: -1px; }
.muted { color: #666; }
"""

# Drawn by the page itself from the embedded verdict; no library, no fetch.
_SCRIPT = r"""
(function () {
  const verdict = JSON.parse(document.getElementById("verdict").textContent);
  const t = verdict.timeline, kinds = t.kinds, bars = t.counts[kinds[0]].length;
  const W = 1000, H = 420, L = 56, R = 16, T = 28, B = 40, pw = W - L - R, ph = H - T - B;
  const span = Math.max(t.span, bars * t.bucket, 0.1);
  const NS = "http://www.w3.org/2000/svg", svg = document.getElementById("chart");
  function el(name, attrs, text) {
    const node = document.createElementNS(NS, name);
    for (const k in attrs) node.setAttribute(k, attrs[k]);
    if (text !== undefined) node.textContent = text;
    svg.appendChild(node);
    return node;
  }
  const x = (s) => L + (s / span) * pw;
  const perBar = [];
  for (let i = 0; i < bars; i++) perBar.push(kinds.reduce((a, k) => a + t.counts[k][i], 0));
  const top = Math.max(1, ...perBar);
  const y = (n) => T + ph - (n / top) * ph;
  function color(kind) {
    const fixed = {"ok": "#43a047", "refused": "#e53935", "reset": "#fb8c00",
                   "timeout": "#8e24aa", "no instance": "#546e7a", "other": "#212121"};
    if (fixed[kind]) return fixed[kind];
    return kind.startsWith("HTTP 5") ? "#b71c1c" : "#8d6e63";
  }
  const bands = ["#1e88e5", "#fdd835", "#00acc1", "#d81b60", "#7cb342", "#5e35b1"];
  // The stop's phases, behind the bars.
  verdict.stops.forEach((stop) => {
    stop.phases.forEach((phase, n) => {
      const x0 = x(phase.start), w = Math.max(1, x(phase.start + phase.duration) - x0);
      el("rect", {x: x0, y: T, width: w, height: ph, fill: bands[n % bands.length],
                  "fill-opacity": 0.18, class: "phase"});
      if (w > 28) el("text", {x: x0 + 3, y: T + 12 + 12 * (n % 2), "font-size": 10,
                             fill: "#333"}, phase.name);
    });
  });
  let drawn = 0, drawnBars = 0;
  for (let i = 0; i < bars; i++) {
    let base = 0;
    kinds.forEach((kind) => {
      const n = t.counts[kind][i];
      if (!n) return;
      el("rect", {x: x(i * t.bucket) + 0.5, y: y(base + n), width: Math.max(1, pw / bars - 1),
                  height: y(base) - y(base + n), fill: color(kind), class: "bar"});
      base += n; drawn += n; drawnBars += 1;
    });
  }
  el("line", {x1: L, y1: T + ph, x2: L + pw, y2: T + ph, stroke: "#444"});
  el("line", {x1: L, y1: T, x2: L, y2: T + ph, stroke: "#444"});
  const step = span > 30 ? 5 : span > 12 ? 2 : 1;
  for (let s = 0; s <= span + 1e-9; s += step) {
    el("text", {x: x(s), y: T + ph + 16, "font-size": 11, "text-anchor": "middle"}, s + "s");
  }
  [0, top / 2, top].forEach((n) => el("text", {x: L - 6, y: y(n) + 4, "font-size": 11,
                                            "text-anchor": "end"}, Math.round(n)));
  el("text", {x: L, y: H - 6, "font-size": 11, fill: "#666"},
     "requests per " + Math.round(t.bucket * 1000) + " ms, by the time they were sent");
  verdict.stops.forEach((stop) => {
    if (stop.signalled !== null) {
      el("line", {x1: x(stop.signalled), y1: T - 4, x2: x(stop.signalled), y2: T + ph,
                  stroke: "#c62828", "stroke-width": 2, "stroke-dasharray": "5,3",
                  class: "signal"});
      el("text", {x: x(stop.signalled) + 3, y: T - 8, "font-size": 11, fill: "#c62828"},
         "SIGTERM " + stop.instance);
    }
    if (stop.exited !== null) {
      el("line", {x1: x(stop.exited), y1: T, x2: x(stop.exited), y2: T + ph, stroke: "#555",
                  "stroke-dasharray": "2,2", class: "exit"});
    }
  });
  const legend = document.getElementById("legend");
  const body = document.querySelector("#totals tbody");
  kinds.forEach((kind) => {
    const sum = t.counts[kind].reduce((a, b) => a + b, 0);
    legend.insertAdjacentHTML("beforeend", "<span><i></i></span>");
    const item = legend.lastElementChild;
    item.firstChild.style.background = color(kind);
    item.appendChild(document.createTextNode(kind));
    const row = body.insertRow();
    row.dataset.kind = kind; row.dataset.count = sum;
    row.insertCell().textContent = kind; row.insertCell().textContent = sum;
  });
  const mark = document.getElementById("drawn");
  mark.dataset.requests = drawn; mark.dataset.bars = drawnBars;
  mark.textContent = drawn + " requests drawn in " + drawnBars + " bars";
})();
"""


def render(verdict: dict[str, Any]) -> str:
    """The page for ``verdict`` (:meth:`~quiesce.drill.verdict.Verdict.as_dict`)."""
    passed = bool(verdict["passed"])
    title = f"quiesce drill: {'PASSED' if passed else 'FAILED'}"
    s = verdict["settings"]
    what = s["target"] if s["target"] is not None else f"--command {s['command']}"
    settings = (
        f"{what}: {s['instances']} instance(s), {s['clients']} clients, GET {s['path']} for "
        f"{s['duration']:g}s, SIGTERM at +{s['signal_at']:g}s, retries {s['retries']}"
    )
    rows = []
    for name, tally in (*verdict["windows"].items(), ("total", verdict["total"])):
        kinds = ", ".join(f"{k} {n}" for k, n in tally["by_kind"].items())
        rows.append(
            f"<tr><td>{name}</td><td>{tally['sent']}</td><td>{tally['ok']}</td>"
            f"<td>{tally['failed']}</td><td>{html.escape(kinds)}</td></tr>"
        )
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">',
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>",
        f'<h1 class="{"passed" if passed else "failed"}">{html.escape(title)}</h1>',
        f'<p class="muted">{html.escape(settings)}</p>',
        _items("problems", verdict["problems"]),
        _items("notes", verdict["notes"]),
        '<svg id="chart" width="1000" height="420" viewBox="0 0 1000 420" '
        'xmlns="http://www.w3.org/2000/svg" role="img" aria-label="requests over time"></svg>',
        '<div id="legend"></div><p id="drawn" class="muted"></p>',
        "<table><thead><tr><th>window</th><th>sent</th><th>ok</th><th>failed</th>"
        f"<th>by kind</th></tr></thead><tbody>{''.join(rows)}</tbody></table>",
        '<table id="totals"><thead><tr><th>outcome</th><th>drawn</th></tr></thead>'
        "<tbody></tbody></table>",
        f'<script type="application/json" id="verdict">{_embed(verdict)}</script>',
        f"<script>{_SCRIPT}</script>",
        "</body></html>",
    ]
    return "\n".join(parts) + "\n"


def _items(kind: str, lines: list[str]) -> str:
    if not lines:
        return ""
    return f'<ul class="{kind}">' + "".join(f"<li>{html.escape(x)}</li>" for x in lines) + "</ul>"


def _embed(data: dict[str, Any]) -> str:
    """JSON that cannot end its ``<script>`` early (``</script>`` in a message, say)."""
    text = json.dumps(data, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
