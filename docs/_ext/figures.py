# SPDX-License-Identifier: Apache-2.0
# Copyright The wsengine authors
"""The documentation's two figures, drawn as SVG at every build (no graphviz needed).

- ``_generated/states.svg``: the engine's states (``wsengine.EngineState``) and the
  transitions between them.
- ``_generated/throughput.svg``: receive throughput (messages/s, log scale) by message
  size for wsengine and its peers, read from the table ``benchmarks/RESULTS.md`` holds
  (written by ``python -m benchmarks``).
"""

from __future__ import annotations

import math
import re
from html import escape
from pathlib import Path
from typing import Any

DOCS = Path(__file__).resolve().parent.parent
GENERATED = DOCS / "_generated"
RESULTS = DOCS.parent / "benchmarks" / "RESULTS.md"

#: State boxes: name -> centre (x, y).
STATES = {
    "IDLE": (90, 60), "CONNECTING": (330, 60), "OPEN": (640, 60),
    "STOPPED": (90, 260), "CLOSING": (330, 260), "RECONNECTING": (640, 260),
}
#: (from, to, sideways shift of the line, labels as (x, y, text-anchor, text)).
TRANSITIONS: list[tuple[str, str, float, list[tuple[float, float, str, str]]]] = [
    ("IDLE", "CONNECTING", 0, [(210, 50, "middle", "start()")]),
    ("CONNECTING", "OPEN", 0, [(485, 50, "middle", "dialled, on_open returned")]),
    ("OPEN", "RECONNECTING", -14, [(664, 150, "start", "drop, peer close,"),
                                   (664, 166, "start", "dead peer, restart()")]),
    ("RECONNECTING", "OPEN", -14, [(616, 196, "end", "backoff, dial, on_open")]),
    ("OPEN", "CLOSING", 0, [(426, 230, "start", "stop(), session.exit()")]),
    ("RECONNECTING", "CLOSING", 0, [(485, 300, "middle", "stop(), refused for good,"),
                                    (485, 314, "middle", "gave up reconnecting")]),
    ("CONNECTING", "CLOSING", 0, [(338, 164, "start", "stop()")]),
    ("CONNECTING", "STOPPED", -8, [(232, 200, "start", "start() failed")]),
    ("CLOSING", "STOPPED", 0, [(210, 300, "middle", "threads ended")]),
    ("STOPPED", "CONNECTING", -8, [(180, 150, "end", "start() again")]),
]
BOX_W, BOX_H = 130, 40


def _edge(start: tuple[float, float], end: tuple[float, float],
          bend: float) -> tuple[float, float, float, float]:
    """The segment between two boxes' borders, shifted sideways by ``bend``."""
    (x1, y1), (x2, y2) = start, end
    dx, dy = x2 - x1, y2 - y1
    length = math.hypot(dx, dy)
    nx, ny = -dy / length * bend, dx / length * bend
    # How far along the centre line the box border is.
    scale = min(
        (BOX_W / 2 + 4) / abs(dx) if dx else math.inf,
        (BOX_H / 2 + 4) / abs(dy) if dy else math.inf,
    )
    return (x1 + dx * scale + nx, y1 + dy * scale + ny,
            x2 - dx * scale + nx, y2 - dy * scale + ny)


def states_svg() -> str:
    """The state diagram."""
    out = [
        '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 800 325" '
        'font-family="sans-serif" font-size="12" role="img" '
        'aria-label="wsengine engine states">',
        "<title>The states of a WebsocketEngine</title>",
        '<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" '
        'markerHeight="7" orient="auto"><path d="M0,0 L10,5 L0,10 z" fill="#555"/>'
        "</marker></defs>",
    ]
    for source, target, bend, labels in TRANSITIONS:
        x1, y1, x2, y2 = _edge(STATES[source], STATES[target], bend)
        out.append(f'<line x1="{x1:.0f}" y1="{y1:.0f}" x2="{x2:.0f}" y2="{y2:.0f}" '
                   'stroke="#555" stroke-width="1.5" marker-end="url(#arrow)"/>')
        for x, y, anchor, text in labels:
            out.append(f'<text x="{x}" y="{y}" text-anchor="{anchor}" fill="#333">'
                       f"{escape(text)}</text>")
    for name, (x, y) in STATES.items():
        fill = "#d7ecd9" if name == "OPEN" else "#eef1f5"
        out.append(f'<rect x="{x - BOX_W / 2:.0f}" y="{y - BOX_H / 2:.0f}" width="{BOX_W}" '
                   f'height="{BOX_H}" rx="8" fill="{fill}" stroke="#345"/>')
        out.append(f'<text x="{x}" y="{y + 4}" text-anchor="middle" font-weight="bold" '
                   f'fill="#123">{name}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


#: Clients drawn in the plot, with their colour and legend text.
CLIENTS = {
    "raw": ("#9e9e9e", "websocket-client recv() loop"),
    "picows": ("#ef9a9a", "picows (Cython, asyncio)"),
    "aiohttp": ("#ffcc80", "aiohttp client"),
    "websockets-async": ("#90caf9", "websockets asyncio client"),
    "wsengine-w1": ("#2e7d32", "wsengine, workers=1"),
    "wsengine-w4": ("#66bb6a", "wsengine, workers=4"),
    "wsengine-ws": ("#a5d6a7", "wsengine, WebsocketsAdapter"),
}
SIZES = ["32 B", "1 KiB", "64 KiB"]


def throughput_table(text: str) -> dict[tuple[str, str, str], float]:
    """(size, type, client) -> median msgs/s, from RESULTS.md's receive throughput table."""
    section = text.split("## Receive throughput", 1)[1].split("\n## ", 1)[0]
    rows: dict[tuple[str, str, str], float] = {}
    pattern = re.compile(r"^\s*(\d+ K?i?B)\s+(text|binary)\s+(\S+)\s+([\d,]+)\s", re.M)
    for size, kind, client, rate in pattern.findall(section):
        rows[(size, kind, client)] = float(rate.replace(",", ""))
    return rows


def throughput_svg(rows: dict[tuple[str, str, str], float]) -> str:
    """Grouped bars: BINARY messages/s by size, one bar per client, log scale."""
    width, height, left, top, bottom = 780, 330, 60, 20, 250
    groups = len(SIZES)
    group_w = (width - left - 230) / groups
    bar_w = group_w / (len(CLIENTS) + 1)
    lowest, highest = 1e3, 1e7

    def y_of(value: float) -> float:
        share = (math.log10(value) - math.log10(lowest)) / (
            math.log10(highest) - math.log10(lowest))
        return bottom - share * (bottom - top)

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" '
           'font-family="sans-serif" font-size="11" role="img" '
           'aria-label="receive throughput by message size">',
           "<title>Receive throughput, BINARY messages, messages/s (log scale)</title>"]
    for exponent in range(3, 8):
        y = y_of(10.0**exponent)
        out.append(f'<line x1="{left}" y1="{y:.0f}" x2="{width - 230}" y2="{y:.0f}" '
                   'stroke="#ddd"/>')
        out.append(f'<text x="{left - 6}" y="{y + 4:.0f}" text-anchor="end">'
                   f"10^{exponent}</text>")
    for index, size in enumerate(SIZES):
        x0 = left + index * group_w + bar_w / 2
        for slot, (client, (colour, _)) in enumerate(CLIENTS.items()):
            value = rows.get((size, "binary", client))
            if value is None:
                continue
            y = y_of(max(value, lowest))
            out.append(f'<rect x="{x0 + slot * bar_w:.1f}" y="{y:.1f}" '
                       f'width="{bar_w - 2:.1f}" height="{bottom - y:.1f}" fill="{colour}">'
                       f"<title>{escape(client)} {size}: {value:,.0f} msgs/s</title></rect>")
        out.append(f'<text x="{x0 + len(CLIENTS) * bar_w / 2:.0f}" y="{bottom + 18}" '
                   f'text-anchor="middle">{size}</text>')
    out.append(f'<text x="{left}" y="{bottom + 40}">BINARY messages received per second '
               "(median of 5 runs, log scale), benchmarks/RESULTS.md</text>")
    for slot, (colour, label) in enumerate(CLIENTS.values()):
        y = top + slot * 20
        out.append(f'<rect x="{width - 220}" y="{y}" width="12" height="12" fill="{colour}"/>')
        out.append(f'<text x="{width - 202}" y="{y + 10}">{escape(label)}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def write_figures(*_: Any) -> None:
    """Write both SVG files (called when Sphinx reads its configuration)."""
    GENERATED.mkdir(exist_ok=True)
    (GENERATED / "states.svg").write_text(states_svg(), encoding="utf-8")
    rows = throughput_table(RESULTS.read_text(encoding="utf-8"))
    (GENERATED / "throughput.svg").write_text(throughput_svg(rows), encoding="utf-8")


def setup(app: Any) -> dict[str, Any]:
    app.connect("config-inited", write_figures)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
