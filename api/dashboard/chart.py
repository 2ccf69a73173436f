"""The uptime chart: the last 30 days by UTC day, as bars for an inline SVG."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from api.dashboard.present import duration, percent
from projections.status import UPTIME_DAYS, window_start
from projections.uptime import Bucket, overall

WIDTH = 300  # the SVG's own units; CSS scales it to the page
HEIGHT = 100
GAP = 2


@dataclass(frozen=True)
class Bar:
    x: float
    y: float
    width: float
    height: float
    tone: str
    title: str


@dataclass(frozen=True)
class Chart:
    bars: list[Bar]
    width: int
    height: int
    uptime: float | None
    summary: str


def window(now: datetime) -> tuple[datetime, datetime]:
    """From midnight (UTC) 29 days ago to now: one bucket per day, today's still running."""
    return window_start(now, UPTIME_DAYS), now


def tone(uptime: float) -> str:
    if uptime >= 99:
        return "ok"
    return "warn" if uptime >= 90 else "bad"


def chart(points: list[Bucket]) -> Chart:
    """Bars of the day's uptime (a stub where the session was not meant to run that day)."""
    slot = WIDTH / max(1, len(points))
    bars = []
    for index, point in enumerate(points):
        day = point.start.strftime("%Y-%m-%d")
        if point.uptime is None:
            height, bar_tone = 2.0, "none"
            title = f"{day}: not in service"
        else:
            height, bar_tone = max(2.0, point.uptime / 100 * HEIGHT), tone(point.uptime)
            title = (
                f"{day}: {percent(point.uptime)} connected "
                f"({duration(point.connected_seconds)} of {duration(point.running_seconds)})"
            )
        bars.append(Bar(index * slot, HEIGHT - height, slot - GAP, height, bar_tone, title))
    uptime = overall(points)
    days = len(points)
    summary = (
        f"Uptime by day over the last {days} days: {percent(uptime)} overall"
        if uptime is not None
        else f"Uptime by day over the last {days} days: the session was not in service"
    )
    return Chart(bars, WIDTH, HEIGHT, uptime, summary)
