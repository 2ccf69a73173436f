"""Rebuild of the status view from the log vs raw decoded reading of the log, in the same run.

A fresh database (created on 127.0.0.1, dropped at the end) is filled with N events (default
1,000,000): S sessions (default N / 100), each created with its first API key, then going
round a cycle of gateway and operator events (QR code, connected, keepalive lost and
restored, connection lost, retry, connected, stopped, reconnect requested), one event per
session per round, so that sessions interleave in the log as they do in service. Sessions are
built as `Session` aggregates in memory; their events, made into stored events by the
application's mapper, are copied into the recorder's table in large batches (no projector
runs).

Then, in interleaved rounds (the order alternates):

- baseline: read the notification log in pages of `--page-size` and decode every notification
  into a domain event with the application's mapper (what any rebuild must at least do);
- subject: ``sessiond projections rebuild session_status`` as the command runs it
  (`ViewRebuild`, without its progress bar): build a new generation of the status view from
  position 0, switch to it (no projector runs, so the handover is immediate) and drop the
  previous generation.

Printed: events/s of both (medians), the ratio subject / baseline (target ≥ 0.35) and the total
time of the rebuild (target for 1,000,000 events: well under a minute). The rebuilt view is
checked: one row per session, at the head of the log, each row's status and version equal to
its session's.

    .venv/bin/python bench/rebuild.py [--events 1000000] [--sessions N] [--rounds 1]
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import uuid4

import psycopg
from benchutil import bench_parser, fresh_database, median, print_table, ratio, run_bench, verdict
from psycopg.sql import SQL, Identifier

from application.keys import SESSION_KEY_KIND, generate_key
from application.sessions import SessionsApplication
from domain.session import Session
from domain.values import ADMIN_ACTOR, public_session_id
from infra.bootstrap import Container
from infra.postgres.status import PostgresSessionStatusView
from infra.runtime.rebuild import DEFAULT_PAGE_SIZE, ViewRebuild
from infra.settings import Settings

TARGET_RATIO = 0.35
TARGET_SECONDS_PER_MILLION = 60.0
INSERT_BATCH = 20_000
VIEW = "session_status"


# -- the log ----------------------------------------------------------------------------------


def _step(session: Session, step: int, jid: str) -> None:
    """The session's next event in its cycle (it starts and ends the cycle connecting)."""
    now = datetime.now(UTC)
    match step % 9:
        case 0:
            session.issue_qr(f"2@{uuid4().hex}", now + timedelta(seconds=60), 1, 6)
        case 1 | 6:
            session.connect(jid, "Phone")
        case 2:
            session.lose_keepalive()
        case 3:
            session.restore_keepalive()
        case 4:
            session.disconnect("connection_lost", "dropped", 1, now + timedelta(seconds=2))
        case 5:
            session.attempt_reconnect()
        case 7:
            session.stop(ADMIN_ACTOR)
        case _:
            session.request_reconnect(ADMIN_ACTOR)


class LogWriter:
    """Collects stored events (made by the application's mapper, as a save makes them) and
    copies them into the recorder's table, `INSERT_BATCH` at a time, under the table lock the
    recorder takes: the rows and their notification ids are those a save would write, about
    five times faster than the recorder's own insert (which is not what is measured here)."""

    def __init__(self, app: SessionsApplication) -> None:
        self.app = app
        self.datastore = app.factory.datastore  # type: ignore[attr-defined]
        table = Identifier(app.recorder.events_table_name)  # type: ignore[attr-defined]
        self.lock = SQL("LOCK TABLE {0} IN EXCLUSIVE MODE").format(table)
        self.copy = SQL(
            "COPY {0} (originator_id, originator_version, topic, state) FROM STDIN"
        ).format(table)
        self.pending: list[Any] = []
        self.written = 0

    def add(self, session: Session) -> None:
        self.pending += [self.app.mapper.to_stored_event(e) for e in session.collect_events()]
        if len(self.pending) >= INSERT_BATCH:
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        with self.datastore.transaction(commit=True) as curs:
            curs.execute(self.lock)
            with curs.copy(self.copy) as copy:
                for e in self.pending:
                    copy.write_row((e.originator_id, e.originator_version, e.topic, e.state))
        self.written += len(self.pending)
        self.pending = []


def fill(app: SessionsApplication, events: int, sessions: int) -> dict[str, Session]:
    """Record about `events` events of `sessions` interleaved sessions; return the sessions."""
    started = time.perf_counter()
    writer = LogWriter(app)
    created: dict[str, Session] = {}
    for n in range(sessions):
        session = Session(
            id=uuid4(), name=f"bench-{n}", labels={"region": "eu"}, requests_per_minute=None,
            actor=ADMIN_ACTOR,
        )  # fmt: skip
        key = generate_key(SESSION_KEY_KIND)
        session.issue_key(key.key_id, key.prefix, key.key_hash, "default", ADMIN_ACTOR)
        created[public_session_id(session.id)] = session
        writer.add(session)
    step = 0
    while writer.written + len(writer.pending) < events:
        for n, session in enumerate(created.values()):
            if writer.written + len(writer.pending) >= events:
                break
            _step(session, step, f"49{n:09d}:1@s.whatsapp.net")
            writer.add(session)
        step += 1
    writer.flush()
    seconds = time.perf_counter() - started
    print(
        f"log: {writer.written:,} events of {sessions:,} sessions recorded in {seconds:.1f} s "
        f"({writer.written / seconds:,.0f} events/s)",
        flush=True,
    )
    return created


# -- the two measurements ---------------------------------------------------------------------


def raw_read(app: SessionsApplication, page_size: int) -> tuple[int, float]:
    """Read and decode the whole log in pages; (events, seconds)."""
    recorder, mapper = app.recorder, app.mapper
    count = position = 0
    started = time.perf_counter()
    while True:
        page = recorder.select_notifications(position, page_size, inclusive_of_start=False)
        if not page:
            break
        for notification in page:
            mapper.to_domain_event(notification)
        count += len(page)
        position = page[-1].id
    return count, time.perf_counter() - started


def rebuild(container: Container, page_size: int) -> tuple[int, float, float]:
    """Rebuild the status view from scratch and switch; (events, total s, build-only s)."""
    started = time.perf_counter()
    report = ViewRebuild(container, VIEW, page_size=page_size, progress=False).run()
    return report.events, time.perf_counter() - started, report.build_seconds


def check(container: Container, sessions: dict[str, Session]) -> list[str]:
    """The rebuilt view has every session, at the head, as its aggregate says."""
    problems = []
    container.views.resolve()
    view = container.views.of(PostgresSessionStatusView)
    head = container.app.recorder.max_notification_id() or 0
    if view.max_tracking_id(container.app.name) != head:
        problems.append(f"the view is at {view.max_tracking_id(container.app.name)}, not {head}")
    rows = {row.session_id: row for row in view.all_sessions()}
    if len(rows) != len(sessions):
        problems.append(f"{len(rows)} rows for {len(sessions)} sessions")
    for session_id, session in sessions.items():
        row = rows.get(session_id)
        if row is None or (row.status, row.version) != (session.status, session.version):
            problems.append(f"{session_id}: row {row and (row.status, row.version)} vs session")
    return problems


def table_size(url: str, table: str) -> str:
    with psycopg.connect(url) as conn:
        found = conn.execute(
            "SELECT pg_size_pretty(pg_total_relation_size(%s::regclass))", (table,)
        ).fetchone()
    return str(found[0]) if found else "?"


# -- the benchmark ----------------------------------------------------------------------------


def bench(args: argparse.Namespace) -> dict[str, Any]:
    reads: list[tuple[int, float]] = []
    rebuilds: list[tuple[int, float, float]] = []
    with fresh_database() as url:
        settings = Settings.from_env(
            {"SESSIOND_DATABASE_URL": url, "SESSIOND_DATA_DIR": str(Path("var").resolve())}
        )
        container = Container(settings, url, frozenset())
        try:
            sessions = fill(container.app, args.events, args.sessions)
            table = container.app.recorder.events_table_name  # type: ignore[attr-defined]
            print(f"log: {table} takes {table_size(url, table)}", flush=True)
            raw_read(container.app, args.page_size)  # warm the cache: both read it warm
            for number in range(1, args.rounds + 1):
                order = ("read", "rebuild") if number % 2 else ("rebuild", "read")
                for kind in order:
                    if kind == "read":
                        count, seconds = raw_read(container.app, args.page_size)
                        reads.append((count, seconds))
                        extra = ""
                    else:
                        count, seconds, build = rebuild(container, args.page_size)
                        rebuilds.append((count, seconds, build))
                        extra = f", of which building {build:.1f} s"
                    print(
                        f"round {number}  {kind:<8} {count / seconds:>9,.0f} events/s  "
                        f"({count:,} in {seconds:.1f} s{extra})",
                        flush=True,
                    )
            problems = check(container, sessions)
        finally:
            container.close()
    return report(args, reads, rebuilds, problems)


def report(
    args: argparse.Namespace,
    reads: list[tuple[int, float]],
    rebuilds: list[tuple[int, float, float]],
    problems: list[str],
) -> dict[str, Any]:
    read_rate = median([count / seconds for count, seconds in reads])
    rebuild_rate = median([count / seconds for count, seconds, _ in rebuilds])
    rebuild_seconds = median([seconds for _, seconds, _ in rebuilds])
    build_rate = median([count / build for count, _, build in rebuilds])
    events = rebuilds[0][0] if rebuilds else 0
    per_million = rebuild_seconds * 1_000_000 / events if events else float("nan")
    the_ratio = ratio(rebuild_rate, read_rate)
    per_round = [
        ratio(count / seconds, read_count / read_seconds)
        for (count, seconds, _), (read_count, read_seconds) in zip(rebuilds, reads, strict=True)
    ]
    print()
    print(
        f"Status view rebuild vs raw decoded read of the log — {events:,} events, pages of "
        f"{args.page_size:,}, medians of {args.rounds} interleaved round(s)"
    )
    print_table(
        ["measure", "events/s", "ratio", "seconds"],
        [
            ["raw decoded read (baseline)", f"{read_rate:,.0f}", "1.00", ""],
            ["rebuild + switch + drop", f"{rebuild_rate:,.0f}", f"{the_ratio:.2f}", ""],
            [
                "  of which building",
                f"{build_rate:,.0f}",
                f"{ratio(build_rate, read_rate):.2f}",
                "",
            ],
            ["rebuild, total", "", "", f"{rebuild_seconds:.1f}"],
        ],
    )
    ratio_met = the_ratio >= TARGET_RATIO
    time_met = per_million < TARGET_SECONDS_PER_MILLION
    print(f"ratio per round: {', '.join(f'{r:.2f}' for r in per_round)}")
    print(f"target: ratio ≥ {TARGET_RATIO}: {verdict(ratio_met)}")
    print(
        f"target: 1,000,000 events well under {TARGET_SECONDS_PER_MILLION:.0f} s: "
        f"{per_million:.1f} s per million: {verdict(time_met)}"
    )
    print("check: " + ("the rebuilt view matches every session" if not problems else "PROBLEMS"))
    for problem in problems[:20]:
        print(f"check: {problem}")
    return {
        "benchmark": "rebuild",
        "events": events,
        "sessions": args.sessions,
        "page_size": args.page_size,
        "rounds": args.rounds,
        "read_events_per_s": read_rate,
        "rebuild_events_per_s": rebuild_rate,
        "build_events_per_s": build_rate,
        "rebuild_seconds": rebuild_seconds,
        "seconds_per_million": per_million,
        "ratio": the_ratio,
        "ratio_per_round": per_round,
        "target_ratio": TARGET_RATIO,
        "ratio_met": ratio_met,
        "time_met": time_met,
        "problems": problems,
        "valid": not problems,
    }


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser(__doc__)
    parser.add_argument("--events", type=int, default=1_000_000, help="events in the log")
    parser.add_argument("--sessions", type=int, help="sessions (default: events / 100)")
    parser.add_argument("--rounds", type=int, default=1, help="interleaved rounds of each")
    parser.add_argument("--page-size", type=int, default=DEFAULT_PAGE_SIZE)
    parser.add_argument("--duration", type=float, help="ignored (run_all.py passes it)")
    args = parser.parse_args(argv)
    args.sessions = args.sessions or max(1, args.events // 100)
    if not 1_000 <= args.events <= 20_000_000 or not 1 <= args.rounds <= 10:
        parser.error("events must be 1,000..20,000,000 and rounds 1..10")
    if not 1 <= args.sessions <= args.events // 2:
        parser.error("sessions must be 1..events / 2 (each starts with two events)")
    return run_bench(bench, args)


if __name__ == "__main__":
    sys.exit(main())
