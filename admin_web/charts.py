"""Charts drawn on the server as SVG geometry (the template draws the shapes): bars of
counts per hour, and a line of minutes per day. No library, no CDN, no script."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

WIDTH, HEIGHT = 760, 200
LEFT, RIGHT, TOP, BOTTOM = 44, 10, 12, 28


@dataclass(frozen=True)
class Bar:
    x: float
    y: float
    width: float
    height: float
    title: str


@dataclass(frozen=True)
class Tick:
    x: float
    y: float
    label: str


@dataclass(frozen=True)
class Point:
    x: float
    y: float
    title: str


@dataclass
class Chart:
    title: str
    empty: str
    width: int = WIDTH
    height: int = HEIGHT
    bars: list[Bar] = field(default_factory=list)
    points: list[Point] = field(default_factory=list)
    x_ticks: list[Tick] = field(default_factory=list)
    y_ticks: list[Tick] = field(default_factory=list)

    @property
    def line(self) -> str:
        """The points as an SVG polyline's `points`."""
        return " ".join(f"{p.x:.1f},{p.y:.1f}" for p in self.points)

    @property
    def has_data(self) -> bool:
        return any(b.height > 0 for b in self.bars) or bool(self.points)


def _scale(value: float) -> tuple[int, int]:
    """A round step (1, 2, 5 × 10^n, at least 1) and top for an axis up to `value`: at most
    five steps, each labelled with a whole number."""
    step = 1
    while value / step > 5:
        step = step * 5 // 2 if str(step).startswith("2") else step * 2
    return step, max(1, math.ceil(value / step)) * step


def _y_ticks(step: int, top: int, unit: str) -> list[Tick]:
    plot = HEIGHT - TOP - BOTTOM
    return [Tick(LEFT - 6, TOP + plot - plot * value / top, f"{value}{unit}")
            for value in range(0, top + 1, step)]


def requests_per_hour(paid: Sequence[datetime], now: datetime, days: int = 7) -> Chart:
    """Paid requests in each hour of the last `days` days (the current hour last)."""
    hours = days * 24
    end = now.replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
    start = end - timedelta(hours=hours)
    counts = [0] * hours
    for at in paid:
        if start <= at < end:
            counts[int((at - start).total_seconds() // 3600)] += 1
    chart = Chart("Paid requests per hour, last 7 days (UTC)", "No paid requests in 7 days.")
    step_y, top = _scale(max(counts, default=0))
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    step = plot_w / hours
    for index, count in enumerate(counts):
        height = plot_h * count / top
        hour = start + timedelta(hours=index)
        chart.bars.append(Bar(LEFT + index * step, TOP + plot_h - height, max(step - 1, 1),
                              height, f"{hour:%a %d %b %H}:00 — {count} paid"))
        if hour.hour == 0:
            chart.x_ticks.append(Tick(LEFT + index * step, HEIGHT - 8, f"{hour:%a %d}"))
    chart.y_ticks = _y_ticks(step_y, top, "")
    return chart


def time_to_accept(pairs: Sequence[tuple[datetime, datetime]], now: datetime,
                   days: int = 7) -> Chart:
    """The median minutes from payment to acceptance of the requests accepted each day."""
    today = now.replace(hour=0, minute=0, second=0, microsecond=0)
    first = today - timedelta(days=days - 1)
    per_day: list[list[float]] = [[] for _ in range(days)]
    for paid_at, accepted_at in pairs:
        index = (accepted_at - first).days
        if 0 <= index < days and accepted_at >= paid_at:
            per_day[index].append((accepted_at - paid_at).total_seconds() / 60)
    chart = Chart("Median minutes from payment to a mechanic, last 7 days",
                  "No request accepted in 7 days.")
    medians = [statistics.median(day) if day else None for day in per_day]
    step_y, top = _scale(max((m for m in medians if m is not None), default=0))
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    step = plot_w / days
    for index, median in enumerate(medians):
        day = first + timedelta(days=index)
        x = LEFT + step * index + step / 2
        chart.x_ticks.append(Tick(x, HEIGHT - 8, f"{day:%a %d}"))
        if median is not None:
            chart.points.append(Point(x, TOP + plot_h - plot_h * median / top,
                                      f"{day:%a %d %b}: median {median:.1f} min of "
                                      f"{len(per_day[index])} accepted"))
    chart.y_ticks = _y_ticks(step_y, top, " min")
    return chart
