"""Line charts of the metrics samples, drawn on the server as inline SVG (no script needed).

The chart's coordinates are a fixed `WIDTH × HEIGHT` box that the page stretches to its
width; the lines keep their thickness (`vector-effect: non-scaling-stroke`) and the labels
are HTML around the SVG, so nothing is distorted on a narrow screen.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

WIDTH = 600
HEIGHT = 200
# More points than this are averaged into buckets: a week of one-minute samples stays light.
MAX_POINTS = 300


@dataclass
class Series:
    key: str
    label: str
    css: str
    segments: list[str] = field(default_factory=list)
    last: float | None = None


@dataclass
class Chart:
    series: list[Series]
    start: datetime
    end: datetime
    samples: int

    @property
    def empty(self) -> bool:
        return self.samples == 0

    @property
    def gridlines(self) -> list[dict]:
        """Horizontal lines at 0, 25, 50, 75, 100 percent."""
        return [
            {"y": round(HEIGHT - HEIGHT * value / 100, 2), "label": f"{value}%", "top": 100 - value}
            for value in (100, 75, 50, 25, 0)
        ]


def _buckets(rows: list[dict], size: int) -> list[dict]:
    """Average consecutive rows `size` at a time (their middle timestamp)."""
    if size <= 1:
        return rows
    merged = []
    for start in range(0, len(rows), size):
        chunk = rows[start : start + size]
        row = {"timestamp": chunk[len(chunk) // 2]["timestamp"]}
        for key in chunk[0]:
            if key != "timestamp":
                row[key] = sum(item[key] for item in chunk) / len(chunk)
        merged.append(row)
    return merged


def percent_chart(
    rows: list[dict],
    series: list[tuple[str, str, str]],
    *,
    start: datetime,
    end: datetime,
    gap: timedelta,
) -> Chart:
    """A chart of percentage series (`key`, label, css class) over [start, end].

    `rows` are dicts with `timestamp` and the keys, oldest first. Two samples further apart
    than `gap` are not joined: a stopped platform shows as a hole, not as a straight line.
    """
    chart = Chart(
        series=[Series(key, label, css) for key, label, css in series],
        start=start,
        end=end,
        samples=len(rows),
    )
    if not rows:
        return chart
    size = -(-len(rows) // MAX_POINTS)
    points = _buckets(rows, size)
    span = max((end - start).total_seconds(), 1.0)
    gap = max(gap * size, timedelta(seconds=span / MAX_POINTS * 2))
    for line in chart.series:
        segment: list[str] = []
        previous = None
        for row in points:
            if previous is not None and row["timestamp"] - previous > gap and segment:
                line.segments.append(" ".join(segment))
                segment = []
            x = (row["timestamp"] - start).total_seconds() / span * WIDTH
            value = min(max(float(row[line.key]), 0.0), 100.0)
            y = HEIGHT - value / 100 * HEIGHT
            segment.append(f"{max(0.0, min(x, WIDTH)):.1f},{y:.1f}")
            previous = row["timestamp"]
        if len(segment) == 1:  # one lone sample: a dot-sized line so it shows
            x, y = segment[0].split(",")
            segment.append(f"{min(float(x) + 2, WIDTH):.1f},{y}")
        if segment:
            line.segments.append(" ".join(segment))
        line.last = round(float(rows[-1][line.key]), 1)
    return chart
