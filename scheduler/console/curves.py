"""Training curves as inline SVG: losses and FID_fm against step, from a run's `history.jsonl`.

`history.jsonl` (written by training next to a run's checkpoints, one JSON object per line) is read
leniently: every line with a numeric `step` is a point; each other numeric field whose name contains `loss`
is a loss series, and `fid_fm` is its own chart. Lines that are not JSON objects are skipped and counted.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from html import escape

MAX_POINTS = 400  # per series, evenly thinned: an SVG of a 100k-step run stays small
WIDTH, HEIGHT, PAD_LEFT, PAD_BOTTOM, PAD = 560, 220, 56, 28, 10
COLOURS = ("#1f6feb", "#d1242f", "#1a7f37", "#9a6700", "#8250df", "#bf3989")


@dataclass
class History:
    """The series read from one history file: {name: [(step, value), ...]}, and how many lines were skipped."""

    series: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    skipped_lines: int = 0

    def losses(self) -> dict[str, list[tuple[float, float]]]:
        """The loss series (names containing `loss`)."""
        return {name: points for name, points in self.series.items() if "loss" in name}

    def fid(self) -> dict[str, list[tuple[float, float]]]:
        """The FID_fm series, when recorded."""
        return {name: points for name, points in self.series.items() if name == "fid_fm"}


def parse_history(data: bytes) -> History:
    """Read `history.jsonl` bytes into series (see the module docstring for what counts)."""
    history = History()
    for line in data.splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            history.skipped_lines += 1
            continue
        if not isinstance(record, dict) or not _is_number(record.get("step")):
            history.skipped_lines += 1
            continue
        step = float(record["step"])
        for name, value in record.items():
            if name != "step" and ("loss" in name or name == "fid_fm") and _is_number(value):
                history.series.setdefault(name, []).append((step, float(value)))
    return history


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(float(value))


def _thin(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    if len(points) <= MAX_POINTS:
        return points
    stride = len(points) / MAX_POINTS
    return [points[int(i * stride)] for i in range(MAX_POINTS)] + [points[-1]]


def curves_svg(title: str, series: dict[str, list[tuple[float, float]]]) -> str:
    """One line chart (x = step) of `series` as an accessible inline SVG with axes and a legend."""
    thinned = {name: _thin(sorted(points)) for name, points in series.items() if points}
    xs = [x for points in thinned.values() for x, _ in points]
    ys = [y for points in thinned.values() for _, y in points]
    x0, x1 = min(xs), max(xs)
    y0, y1 = min(ys), max(ys)
    if x1 == x0:
        x1 = x0 + 1
    if y1 == y0:
        y1 = y0 + 1
    plot_w, plot_h = WIDTH - PAD_LEFT - PAD, HEIGHT - PAD_BOTTOM - PAD

    def sx(x: float) -> float:
        return PAD_LEFT + (x - x0) / (x1 - x0) * plot_w

    def sy(y: float) -> float:
        return PAD + (1 - (y - y0) / (y1 - y0)) * plot_h

    parts = [
        f'<svg class="curve" viewBox="0 0 {WIDTH} {HEIGHT + 18 * len(thinned)}" role="img" '
        f'aria-label="{escape(title)}" xmlns="http://www.w3.org/2000/svg">',
        f"<title>{escape(title)}</title>",
        f'<line x1="{PAD_LEFT}" y1="{PAD + plot_h}" x2="{PAD_LEFT + plot_w}" y2="{PAD + plot_h}" stroke="#666"/>',
        f'<line x1="{PAD_LEFT}" y1="{PAD}" x2="{PAD_LEFT}" y2="{PAD + plot_h}" stroke="#666"/>',
        f'<text x="{PAD_LEFT - 4}" y="{PAD + 8}" text-anchor="end" font-size="11">{y1:.3g}</text>',
        f'<text x="{PAD_LEFT - 4}" y="{PAD + plot_h}" text-anchor="end" font-size="11">{y0:.3g}</text>',
        f'<text x="{PAD_LEFT}" y="{HEIGHT - 8}" font-size="11">step {x0:.0f}</text>',
        f'<text x="{PAD_LEFT + plot_w}" y="{HEIGHT - 8}" text-anchor="end" font-size="11">step {x1:.0f}</text>',
    ]
    for number, (name, points) in enumerate(thinned.items()):
        colour = COLOURS[number % len(COLOURS)]
        coords = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in points)
        parts.append(f'<polyline fill="none" stroke="{colour}" stroke-width="1.5" points="{coords}"/>')
        if len(points) == 1:
            x, y = points[0]
            parts.append(f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="3" fill="{colour}"/>')
        legend_y = HEIGHT + 14 + 18 * number
        parts.append(f'<rect x="{PAD_LEFT}" y="{legend_y - 9}" width="12" height="4" fill="{colour}"/>')
        last = points[-1][1]
        parts.append(
            f'<text x="{PAD_LEFT + 18}" y="{legend_y}" font-size="12">{escape(name)} (last {last:.4g})</text>'
        )
    parts.append("</svg>")
    return "".join(parts)
