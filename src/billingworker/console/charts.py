"""Line charts drawn on the server as inline SVG: no JavaScript, nothing fetched from elsewhere.

``line_chart`` takes series of (time in ms, value or None) points; a None breaks the line (no
sample there). The SVG carries only attributes (no inline style), so the page's strict
Content-Security-Policy holds.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from markupsafe import Markup, escape

#: Colours of the series, in order (depth, throughput, dead...).
PALETTE = ("#2456a6", "#c2410c", "#b42318", "#1f7a3f", "#7c3aed", "#0e7490")


#: The legend's baseline (the title's is 14) and a generous width of one 11px character, so that
#: each legend entry starts after the previous one's text.
LEGEND_Y = 31
LEGEND_CHAR_WIDTH = 6.5


@dataclass(frozen=True)
class Series:
    name: str
    points: list[tuple[int, float | None]]


def line_chart(title: str, series: list[Series], *, width: int = 720, height: int = 200, unit: str = "") -> Markup:
    """An SVG line chart of ``series`` over a shared time axis, with a legend and the y maximum."""
    # The title on the first line, the legend on its own line below it (a long title and the
    # legend never meet), then the plot.
    left, right, top, bottom = 44, 10, 40, 24
    plot_w, plot_h = width - left - right, height - top - bottom
    # The time axis spans every sample, valued or not, so that the charts of one page line up.
    times = [t for s in series for t, _ in s.points]
    values = [v for s in series for _, v in s.points if v is not None]
    parts = [f'<svg class="chart" role="img" viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
             f'xmlns="http://www.w3.org/2000/svg"><title>{escape(title)}</title>',
             f'<text x="{left}" y="14">{escape(title)}</text>']
    if not values:
        parts.append(f'<text x="{left}" y="{top + plot_h / 2:.0f}">no samples yet</text></svg>')
        return Markup("".join(parts))
    t0, t1 = min(times), max(times)
    span_t = max(t1 - t0, 1)
    top_value = _nice_max(max(values))

    def x(t: int) -> float:
        return left + (t - t0) / span_t * plot_w

    def y(v: float) -> float:
        return top + plot_h - (v / top_value) * plot_h

    parts.append(f'<line x1="{left}" y1="{top + plot_h}" x2="{left + plot_w}" y2="{top + plot_h}" stroke="#b8bfcc"/>')
    parts.append(f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + plot_h}" stroke="#b8bfcc"/>')
    parts.append(f'<text x="{left - 4}" y="{top + 4}" text-anchor="end">{_fmt(top_value)}{escape(unit)}</text>')
    parts.append(f'<text x="{left - 4}" y="{top + plot_h}" text-anchor="end">0</text>')
    parts.append(f'<text x="{left}" y="{height - 6}">{_clock(t0)}</text>')
    parts.append(f'<text x="{left + plot_w}" y="{height - 6}" text-anchor="end">{_clock(t1)} UTC</text>')
    lx = float(left)
    for n, s in enumerate(series):
        colour = PALETTE[n % len(PALETTE)]
        for run in _runs(s.points):
            if len(run) == 1:
                t, v = run[0]
                parts.append(f'<circle cx="{x(t):.1f}" cy="{y(v):.1f}" r="2" fill="{colour}"/>')
            else:
                path = " ".join(f"{x(t):.1f},{y(v):.1f}" for t, v in run)
                parts.append(f'<polyline fill="none" stroke="{colour}" stroke-width="1.6" points="{path}"/>')
        parts.append(f'<rect x="{lx:.0f}" y="25" width="10" height="3" fill="{colour}"/>')
        parts.append(f'<text x="{lx + 14:.0f}" y="{LEGEND_Y}">{escape(s.name)}</text>')
        lx += 14 + len(s.name) * LEGEND_CHAR_WIDTH + 18
    parts.append("</svg>")
    return Markup("".join(parts))


def _runs(points: list[tuple[int, float | None]]) -> list[list[tuple[int, float]]]:
    """The stretches of consecutive points with a value."""
    runs: list[list[tuple[int, float]]] = [[]]
    for t, v in sorted(points):
        if v is None:
            if runs[-1]:
                runs.append([])
        else:
            runs[-1].append((t, v))
    return [r for r in runs if r]


def _nice_max(value: float) -> float:
    """A round number at or above ``value`` for the y axis (1, 2, 5 × 10^n)."""
    if value <= 0:
        return 1.0
    scale = 1.0
    while scale * 10 <= value:
        scale *= 10
    while scale > value:
        scale /= 10
    for step in (1, 2, 5, 10):
        if step * scale >= value:
            return step * scale
    return 10 * scale


def _fmt(value: float) -> str:
    return f"{value:.0f}" if value >= 1 else f"{value:g}"


def _clock(ms: int) -> str:
    return f"{datetime.fromtimestamp(ms / 1000, UTC):%H:%M}"


def queue_charts(samples: list[dict[str, Any]], queues: tuple[str, ...]) -> list[Markup]:
    """The Queues page's two charts from ``ops.samples.read_samples``: depth (waiting + delayed
    per queue, and dead letters) and throughput (messages processed per minute, per queue)."""
    depth = [Series(f"{q} waiting+delayed", [(s["at_ms"], _sum(s, q, "waiting", "delayed")) for s in samples])
             for q in queues]
    depth.append(Series("dead letters", [(s["at_ms"], _total(s, queues, "dead")) for s in samples]))
    throughput = [Series(f"{q} processed/min", [(s["at_ms"], (s.get("throughput", {}).get(q) or {})
                                                 .get("processed_per_minute")) for s in samples])
                  for q in queues]
    return [line_chart("Depth (messages)", depth), line_chart("Throughput (messages per minute)", throughput)]


def _sum(sample: dict[str, Any], queue: str, *keys: str) -> float | None:
    counts = sample.get("queues", {}).get(queue)
    if not counts or any(counts.get(k) is None for k in keys):
        return None
    return float(sum(counts[k] for k in keys))


def _total(sample: dict[str, Any], queues: tuple[str, ...], key: str) -> float | None:
    values = [sample.get("queues", {}).get(q, {}).get(key) for q in queues]
    return None if any(v is None for v in values) else float(sum(values))
