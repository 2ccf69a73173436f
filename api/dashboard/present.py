"""What the pages show of a session: its state in words and colour, list pages, formats."""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime

from markupsafe import Markup

from api.presenters import health, health_reason
from api.qr import SVG, render
from domain.values import DesiredState, Status
from projections.status import SessionRow, status_uptime

#: The state shown for a session, its colour (tone) and its words. Never colour alone.
TONES = {
    "connected": "ok",
    "degraded": "warn",
    "connecting": "warn",
    "disconnected": "bad",
    "expired": "bad",
    "stopped": "off",
}
LABELS = {
    "connected": "Connected",
    "degraded": "Degraded",
    "connecting": "Connecting",
    "disconnected": "Disconnected",
    "expired": "Expired",
    "stopped": "Stopped",
}
#: The list's filters: "connected" includes degraded sessions (connected, keepalives failing
#: or silent).
FILTERS = {
    "all": "All",
    "connected": "Connected",
    "connecting": "Connecting",
    "disconnected": "Disconnected",
    "expired": "Expired",
    "stopped": "Stopped",
}
PER_PAGE = 50


def state_of(row: SessionRow) -> str:
    if row.desired == DesiredState.STOPPED:
        return "stopped"
    if row.status == Status.CONNECTED and (row.degraded or row.silent_since is not None):
        return "degraded"
    return row.status if row.status in TONES else "disconnected"


def filter_of(state: str) -> str:
    return "connected" if state == "degraded" else state


#: What a restriction is called, and what the operator does about it.
RESTRICTION_TITLES = {
    "temporarily_banned": "Temporarily banned by WhatsApp",
    "logged_out": "Logged out from the phone",
    "device_unlinked": "The linked device is gone",
    "stream_replaced": "Replaced by another client",
    "client_outdated": "WhatsApp refuses this version of sessiond",
}
RESTRICTION_ADVICE = {
    "temporarily_banned": (
        "Nothing to do now: sending resumes by itself when the ban ends. To avoid another "
        "ban, send less, more slowly, and only to people who expect your messages."
    ),
    "logged_out": "Reconnect the session, then scan the new QR code with the phone.",
    "device_unlinked": "Reconnect the session, then scan the new QR code with the phone.",
    "stream_replaced": (
        "Another client uses this WhatsApp device. Close it, then reconnect the session here."
    ),
    "client_outdated": "Upgrade sessiond to a newer release, then reconnect the session.",
}


@dataclass(frozen=True)
class Banner:
    """A restricted session's banner: what happened, until when, and what to do."""

    kind: str
    title: str
    advice: str
    until: datetime | None
    detail: str | None
    waiting: int  # messages held in the paused queue


def banner(row: SessionRow) -> Banner | None:
    kind = row.restriction_kind
    if kind is None or row.is_deleted:
        return None
    return Banner(
        kind=kind,
        title=RESTRICTION_TITLES.get(kind, kind.replace("_", " ")),
        advice=RESTRICTION_ADVICE.get(kind, "Reconnect the session once the cause is fixed."),
        until=row.restriction_until,
        detail=row.restriction_detail,
        waiting=row.queue_depth,
    )


@dataclass(frozen=True)
class Line:
    """One session as a line of the list (or the head of its page)."""

    row: SessionRow
    state: str
    tone: str
    label: str
    health: str
    uptime: float | None
    banner: Banner | None = None
    health_reason: str | None = None  # why it is degraded: keepalive_failing, silent


def line(row: SessionRow, now: datetime) -> Line:
    state = state_of(row)
    return Line(
        row,
        state,
        TONES[state],
        LABELS[state],
        health(row),
        status_uptime(row, now),
        banner(row),
        health_reason(row),
    )


def watchdog(row: SessionRow, silence_after: float) -> tuple[str, str]:
    """The silence watchdog's state for the session (a key, and its words)."""
    if silence_after <= 0:
        return "off", "off (SESSIOND_SILENCE_AFTER=0)"
    period = _period(silence_after)
    if not row.receives:
        return "waiting", f"not yet: from its first message or receipt on (then {period})"
    return "watching", f"watching: silent after {period} without a word from WhatsApp"


def _period(seconds: float) -> str:
    if seconds >= 3600 and seconds % 3600 == 0:
        return f"{seconds / 3600:g} h"
    if seconds >= 60 and seconds % 60 == 0:
        return f"{seconds / 60:g} min"
    return f"{seconds:g} s"


@dataclass(frozen=True)
class ListPage:
    lines: list[Line]
    counts: dict[str, int]
    wanted: str
    page: int
    pages: int
    total: int

    @property
    def first(self) -> int:
        return (self.page - 1) * PER_PAGE + 1 if self.total else 0

    @property
    def last(self) -> int:
        return min(self.page * PER_PAGE, self.total)


def list_page(rows: list[SessionRow], wanted: str, page: int, now: datetime) -> ListPage:
    """One page of the live sessions, newest first, with the count of each filter.

    One pass over the rows; only the page's lines are built (1,000 sessions cost ~1 ms).
    """
    counts: Counter[str] = Counter()
    chosen: list[SessionRow] = []
    for row in rows:
        if row.is_deleted:
            continue
        group = filter_of(state_of(row))
        counts[group] += 1
        if wanted in ("all", group):
            chosen.append(row)
    counts["all"] = sum(counts.values())
    chosen.sort(key=lambda r: (r.created_at, r.session_id), reverse=True)
    pages = max(1, math.ceil(len(chosen) / PER_PAGE))
    page = min(max(page, 1), pages)
    shown = chosen[(page - 1) * PER_PAGE : page * PER_PAGE]
    return ListPage(
        lines=[line(row, now) for row in shown],
        counts={name: counts[name] for name in FILTERS},
        wanted=wanted,
        page=page,
        pages=pages,
        total=len(chosen),
    )


@dataclass(frozen=True)
class QrPanel:
    svg: Markup
    attempt: int
    max_attempts: int
    expires_at: datetime
    seconds_left: int


_SIZE = re.compile(rb'width="(\d+)" height="(\d+)"')


def qr_panel(row: SessionRow, now: datetime) -> QrPanel | None:
    """The QR code being shown, as inline SVG that scales (segno's has a fixed size)."""
    if row.qr_code is None or row.qr_expires_at is None:
        return None
    svg = render(row.qr_code, SVG)  # the API's renderer; cached per code
    svg = _SIZE.sub(
        lambda m: (
            b'viewBox="0 0 %s %s" role="img" aria-labelledby="qr-caption"'
            % (m.group(1), m.group(2))
        ),
        svg,
        count=1,
    )
    left = max(0, math.ceil((row.qr_expires_at - now).total_seconds()))
    return QrPanel(
        svg=Markup(svg.decode()),  # noqa: S704 - segno's SVG of our own code, no user text
        attempt=row.qr_attempt,
        max_attempts=row.qr_max_attempts,
        expires_at=row.qr_expires_at,
        seconds_left=left,
    )


def when(instant: datetime | None) -> str:
    if instant is None:
        return "—"
    return instant.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def duration(seconds: float) -> str:
    """``3 d 4 h``, ``2 h 5 min``, ``4 min 10 s``, ``12 s``: the two largest units."""
    total = max(0, int(seconds))
    days, rest = divmod(total, 86_400)
    hours, rest = divmod(rest, 3_600)
    minutes, secs = divmod(rest, 60)
    parts = [(days, "d"), (hours, "h"), (minutes, "min"), (secs, "s")]
    while len(parts) > 1 and parts[0][0] == 0:
        parts.pop(0)
    return " ".join(f"{n} {unit}" for n, unit in parts[:2])


def percent(uptime: float | None) -> str:
    """An uptime figure (already a percentage with two decimals) as the JSON API gives it:
    ``99.95 %``, ``99.9 %``, ``100 %``."""
    if uptime is None:
        return "—"
    return f"{uptime:.2f}".rstrip("0").rstrip(".") + " %"


def event_name(kind: str) -> str:
    """``ApiKeyIssued`` as ``Api key issued``, ``QRIssued`` as ``QR issued``."""
    words = re.split(r"(?<=[a-z])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", kind)
    text = " ".join(w if w.isupper() else w.lower() for w in words if w)
    return text[:1].upper() + text[1:]
