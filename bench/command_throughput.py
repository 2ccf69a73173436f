"""Command throughput through the application vs raw PostgreSQL commits, in the same run.

Baseline: N threads, each with its own psycopg connection, doing a single-row INSERT and a
commit in a loop (a table of ``id bigserial, payload text``). Subject: N threads, each driving
its own session through `SessionsApplication` (built as infra builds it), alternating
``stop`` and ``reconnect``: every call loads the session, records one event and saves it.
Both run for the same time in alternating rounds, at 1 and at 8 writers; medians are compared.

At the end the event store is checked: every session's versions are consecutive from 1, every
counted command is there exactly once, the notification ids are strictly increasing, and each
session's events appear in the notification log in version order.

    .venv/bin/python bench/command_throughput.py [--duration 5] [--rounds 3] [--writers 1,8]
"""

from __future__ import annotations

import argparse
import itertools
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

import psycopg
from benchutil import bench_parser, fresh_database, median, print_table, ratio, run_bench, verdict

from application.sessions import SessionsApplication
from domain.values import ADMIN_ACTOR, session_uuid
from infra.settings import eventsourcing_env

TARGET_RATIO_AT_8 = 0.5
PAYLOAD = "x" * 256
BASELINE_DDL = "CREATE TABLE bench_insert (id bigserial PRIMARY KEY, payload text NOT NULL)"
PAGE = 1000


@dataclass(frozen=True)
class Run:
    operations: int
    seconds: float
    errors: int
    cpu_seconds: float  # this process's CPU time (every thread) during the run

    @property
    def rate(self) -> float:
        return self.operations / self.seconds if self.seconds else 0.0

    @property
    def cpu_us_per_op(self) -> float:
        return self.cpu_seconds / self.operations * 1e6 if self.operations else float("nan")


def run_threads(workers: list[Callable[[float], tuple[int, int]]], seconds: float) -> Run:
    """Start one thread per worker, release them together, stop them after `seconds`.

    A worker gets the deadline (``time.monotonic()``) and returns (operations, errors).
    """
    results: list[tuple[int, int]] = [(0, 0)] * len(workers)
    start_line = threading.Barrier(len(workers) + 1)
    deadline = [0.0]

    def body(index: int, work: Callable[[float], tuple[int, int]]) -> None:
        start_line.wait()
        results[index] = work(deadline[0])

    threads = [
        threading.Thread(target=body, args=(i, w), name=f"writer-{i}", daemon=True)
        for i, w in enumerate(workers)
    ]
    for thread in threads:
        thread.start()
    cpu_before = time.process_time()
    started = time.monotonic()
    deadline[0] = started + seconds
    start_line.wait()
    for thread in threads:
        thread.join(seconds + 60)
        if thread.is_alive():
            raise RuntimeError(f"{thread.name} did not finish")
    elapsed = time.monotonic() - started
    cpu = time.process_time() - cpu_before
    return Run(sum(r[0] for r in results), elapsed, sum(r[1] for r in results), cpu)


# -- baseline: raw single-row insert commits --------------------------------------------------


def baseline(url: str, writers: int, seconds: float) -> Run:
    connections = [psycopg.connect(url) for _ in range(writers)]
    try:

        def worker(conn: psycopg.Connection[Any]) -> Callable[[float], tuple[int, int]]:
            def work(deadline: float) -> tuple[int, int]:
                done = errors = 0
                while time.monotonic() < deadline:
                    try:
                        conn.execute("INSERT INTO bench_insert (payload) VALUES (%s)", (PAYLOAD,))
                        conn.commit()
                        done += 1
                    except psycopg.Error:
                        conn.rollback()
                        errors += 1
                return done, errors

            return work

        return run_threads([worker(c) for c in connections], seconds)
    finally:
        for conn in connections:
            conn.close()


# -- subject: stop/reconnect cycles through the application -----------------------------------


@dataclass
class BenchSession:
    session_id: str
    created_version: int
    commands: int = 0
    next_is_stop: bool = True
    errors: list[str] = field(default_factory=list)


def subject(app: SessionsApplication, sessions: list[BenchSession], seconds: float) -> Run:
    def worker(session: BenchSession) -> Callable[[float], tuple[int, int]]:
        def work(deadline: float) -> tuple[int, int]:
            done = errors = 0
            while time.monotonic() < deadline:
                try:
                    if session.next_is_stop:
                        position = app.stop(session.session_id, ADMIN_ACTOR)
                    else:
                        position = app.reconnect(session.session_id, ADMIN_ACTOR)
                except Exception as error:  # counted and shown, never hidden
                    errors += 1
                    if len(session.errors) < 3:
                        session.errors.append(f"{type(error).__name__}: {error}")
                    continue
                session.next_is_stop = not session.next_is_stop
                if position is None:
                    errors += 1
                    session.errors.append("stop recorded nothing (was already stopped)")
                    continue
                done += 1
                session.commands += 1
            return done, errors

        return work

    return run_threads([worker(s) for s in sessions], seconds)


# -- verification -----------------------------------------------------------------------------


def verify(app: SessionsApplication, sessions: list[BenchSession]) -> list[str]:
    """Problems found in the event store; an empty list means ordering and OCC held."""
    problems: list[str] = []
    versions_of: dict[UUID, list[int]] = {}
    for session in sessions:
        uuid = session_uuid(session.session_id)
        versions = [e.originator_version for e in app.recorder.select_events(uuid)]
        versions_of[uuid] = versions
        if versions != list(range(1, len(versions) + 1)):
            problems.append(f"{session.session_id}: versions are not consecutive from 1")
        expected = session.created_version + session.commands
        if len(versions) != expected:
            problems.append(
                f"{session.session_id}: {len(versions)} events stored, {expected} expected"
            )
    ids: list[int] = []
    positions: dict[UUID, list[tuple[int, int]]] = {}
    start = 1
    for _ in range(10_000_000 // PAGE):
        page = app.recorder.select_notifications(start=start, limit=PAGE)
        if not page:
            break
        for notification in page:
            ids.append(notification.id)
            key = UUID(str(notification.originator_id))
            positions.setdefault(key, []).append((notification.originator_version, notification.id))
        start = page[-1].id + 1
    if any(b <= a for a, b in itertools.pairwise(ids)):
        problems.append("notification ids are not strictly increasing")
    stored = sum(len(v) for v in versions_of.values())
    if len(ids) != stored:
        problems.append(f"{len(ids)} notifications, but {stored} stored events")
    for uuid, versions in versions_of.items():
        logged = positions.get(uuid, [])
        if [v for v, _ in logged] != versions:
            problems.append(f"{uuid}: the log does not hold its events in version order")
    print(
        f"verify: {len(sessions)} sessions, {stored:,} events, {len(ids):,} notifications "
        f"(ids {ids[0] if ids else '-'}..{ids[-1] if ids else '-'}, "
        f"{(ids[-1] - ids[0] + 1 - len(ids)) if ids else 0} gaps): "
        + ("ordering and optimistic concurrency held" if not problems else "PROBLEMS FOUND")
    )
    for problem in problems[:20]:
        print(f"verify: {problem}")
    return problems


# -- the benchmark ----------------------------------------------------------------------------


def bench(args: argparse.Namespace) -> dict[str, Any]:
    by_writers: dict[str, Any] = {}
    with fresh_database() as url:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(BASELINE_DDL)
        apps: list[SessionsApplication] = []
        all_sessions: list[BenchSession] = []
        try:
            for writers in args.writers:
                app = SessionsApplication(env=eventsourcing_env(url, pool_size=writers))
                apps.append(app)
                sessions = []
                for i in range(writers):
                    created = app.create_session(f"bench-{writers}-{i}", {}, None, ADMIN_ACTOR)
                    version = app.load(created.session_id).version
                    sessions.append(BenchSession(created.session_id, version))
                all_sessions += sessions
                print(f"\n{writers} writer(s): {args.rounds} rounds of {args.duration:g} s each")
                if args.warmup > 0:
                    baseline(url, writers, args.warmup)
                    subject(app, sessions, args.warmup)
                base_runs: list[Run] = []
                subject_runs: list[Run] = []
                for number in range(1, args.rounds + 1):
                    order = ("baseline", "subject") if number % 2 else ("subject", "baseline")
                    for kind in order:
                        if kind == "baseline":
                            run = baseline(url, writers, args.duration)
                            base_runs.append(run)
                            unit = "commits/s "
                        else:
                            run = subject(app, sessions, args.duration)
                            subject_runs.append(run)
                            unit = "commands/s"
                        print(
                            f"round {number}  {kind:<8} {run.rate:>9,.0f} {unit}  "
                            f"({run.operations:,} in {run.seconds:.2f} s, "
                            f"Python CPU {run.cpu_us_per_op:,.0f} µs/op, errors {run.errors})",
                            flush=True,
                        )
                for session in sessions:
                    for message in session.errors:
                        print(f"error in {session.session_id}: {message}")
                base = median([r.rate for r in base_runs])
                commands = median([r.rate for r in subject_runs])
                by_writers[str(writers)] = {
                    "baseline_commits_per_s": base,
                    "commands_per_s": commands,
                    "ratio": ratio(commands, base),
                    "ratio_per_round": [
                        ratio(s.rate, b.rate) for b, s in zip(base_runs, subject_runs, strict=True)
                    ],
                    "baseline_runs": [r.rate for r in base_runs],
                    "subject_runs": [r.rate for r in subject_runs],
                    "errors": sum(r.errors for r in subject_runs + base_runs),
                    "baseline_cpu_us_per_op": median([r.cpu_us_per_op for r in base_runs]),
                    "subject_cpu_us_per_op": median([r.cpu_us_per_op for r in subject_runs]),
                }
            print()
            problems = verify(apps[-1], all_sessions)
        finally:
            for app in apps:
                app.close()
    return report(args, by_writers, problems)


def report(
    args: argparse.Namespace, by_writers: dict[str, Any], problems: list[str]
) -> dict[str, Any]:
    print()
    print(
        f"Command throughput vs raw single-row insert commits — medians of {args.rounds} "
        f"interleaved rounds of {args.duration:g} s"
    )
    rows = []
    for writers, figures in by_writers.items():
        rows.append(
            [
                writers,
                f"{figures['baseline_commits_per_s']:,.0f}",
                f"{figures['commands_per_s']:,.0f}",
                f"{figures['ratio']:.2f}",
                ", ".join(f"{r:.2f}" for r in figures["ratio_per_round"]),
                f"{figures['baseline_cpu_us_per_op']:,.0f}",
                f"{figures['subject_cpu_us_per_op']:,.0f}",
                str(figures["errors"]),
            ]
        )
    print_table(
        [
            "writers",
            "baseline commits/s",
            "commands/s",
            "ratio",
            "per round",
            "CPU µs/commit",
            "CPU µs/command",
            "errors",
        ],
        rows,
    )
    print("CPU = this benchmark process (every thread) per operation; PostgreSQL not included")
    at_8 = by_writers.get("8")
    if at_8 is not None:
        met = at_8["ratio"] >= TARGET_RATIO_AT_8
        print(f"target at 8 writers: ratio ≥ {TARGET_RATIO_AT_8}: {verdict(met)}")
    errors = sum(f["errors"] for f in by_writers.values())
    return {
        "benchmark": "command_throughput",
        "rounds": args.rounds,
        "duration_s": args.duration,
        "writers": by_writers,
        "target_ratio_at_8": TARGET_RATIO_AT_8,
        "ratio_met": None if at_8 is None else at_8["ratio"] >= TARGET_RATIO_AT_8,
        "verified": not problems,
        "problems": problems,
        "valid": not problems and errors == 0,
    }


def writers_args(doc: str | None, rounds: int, argv: list[str] | None) -> argparse.Namespace:
    """The command line of a benchmark of writers (this one, `audit_chain.py`): rounds of
    ``--duration`` seconds after ``--warmup``, for each count of ``--writers``."""
    parser = bench_parser(doc, rounds=rounds, duration=5.0)
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds, each side")
    parser.add_argument(
        "--writers",
        type=lambda text: [int(n) for n in text.split(",")],
        default=[1, 8],
        help="comma-separated writer counts (default 1,8)",
    )
    args = parser.parse_args(argv)
    if not 1 <= args.rounds <= 20 or not 0.5 <= args.duration <= 120:
        parser.error("rounds must be 1..20 and duration 0.5..120 s")
    if not args.writers or not all(1 <= n <= 64 for n in args.writers):
        parser.error("writer counts must be 1..64")
    return args


def main(argv: list[str] | None = None) -> int:
    return run_bench(bench, writers_args(__doc__, 3, argv))


if __name__ == "__main__":
    sys.exit(main())
