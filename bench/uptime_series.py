"""Uptime series for one session over a year of hourly transitions, vs the status read.

One real ``sessiond serve`` process (as in ``status_read.py``) on 127.0.0.1 and a fresh
database. One session is created through the API; then a year of hourly transitions for it
(connected and disconnected in turn every hour, half past, with a few stopped spans) is
inserted straight into ``sessiond_uptime``, dated in the year before the session was created
(negative positions, so they never collide with the projection's own rows).

Measured, one request at a time over one keep-alive connection (httpx), the latency of:

- ``GET /sessions/{id}/uptime?from=…&to=…&bucket=hour`` over that year (8,760 buckets),
- the same with ``bucket=day`` (365 buckets),
- the baseline: ``GET /sessions/{id}/status`` with the session's key (in memory, no query).

The three kinds are interleaved request by request (the order rotates), in rounds, so noise
hits all alike; p50 and p99 are taken over every measured request of a kind, and compared
with the baseline's. Each answer is checked: 200, the bucket count, and the window's uptime
equal to the one computed here from the inserted transitions.

    .venv/bin/python bench/uptime_series.py [--rounds 5] [--requests 40] [--warmup 20]
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import psycopg
from benchutil import bench_parser, fresh_database, median, print_table, ratio, run_bench
from status_read import BenchSession, create_session, serving

from domain.values import session_uuid
from projections.uptime import Transition, series

HOURS = 365 * 24
POSITION_BASE = -1_000_000
STOPPED_HOURS = (  # [first, last) hours of the window in which the session was stopped
    (2_000, 2_048),
    (4_500, 4_520),
    (7_000, 7_100),
)


# -- the fixture ------------------------------------------------------------------------------


def fixture(start: datetime) -> list[Transition]:
    """One transition an hour before `start`, then one every hour at half past, for a year."""
    rows = [Transition(start - timedelta(hours=1), True, False)]
    for n in range(HOURS):
        stopped = any(first <= n < last for first, last in STOPPED_HOURS)
        at = start + timedelta(hours=n, minutes=30)
        rows.append(Transition(at, not stopped, not stopped and n % 2 == 0))
    return rows


def created_at(database_url: str, session: BenchSession, timeout: float = 30.0) -> datetime:
    """When the session was created, from the uptime view (once the projection has it)."""
    uuid = session_uuid(session.session_id)
    deadline = time.monotonic() + timeout
    with psycopg.connect(database_url, autocommit=True) as conn:
        while time.monotonic() < deadline:
            exists = conn.execute("SELECT to_regclass('sessiond_uptime')").fetchone()
            if exists and exists[0] is not None:
                row = conn.execute(
                    "SELECT min(at) FROM sessiond_uptime WHERE session_id = %s", (uuid,)
                ).fetchone()
                if row and row[0] is not None:
                    value: datetime = row[0]
                    return value.astimezone(UTC)
            time.sleep(0.1)
    raise RuntimeError(f"the uptime view did not show {session.session_id} in {timeout} s")


def insert(database_url: str, session: BenchSession, rows: list[Transition]) -> None:
    uuid = session_uuid(session.session_id)
    with psycopg.connect(database_url) as conn, conn.cursor() as curs:
        with curs.copy(
            "COPY sessiond_uptime (session_id, position, at, running, connected) FROM STDIN"
        ) as copy:
            for n, row in enumerate(rows):
                copy.write_row((uuid, POSITION_BASE + n, row.at, row.running, row.connected))
        curs.execute("ANALYZE sessiond_uptime")


# -- the measurement --------------------------------------------------------------------------


@dataclass(frozen=True)
class Kind:
    name: str
    path: str
    params: dict[str, str]
    check: Callable[[httpx.Response], str | None]  # None when the answer is right


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..1)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p * len(ordered)) - 1)]


def kinds(session: BenchSession, start: datetime, end: datetime, expected: float) -> list[Kind]:
    base = f"/sessions/{session.session_id}"
    window = {"from": start.isoformat(), "to": end.isoformat()}

    def status_check(response: httpx.Response) -> str | None:
        return None if response.status_code == 200 else f"status {response.status_code}"

    def uptime_check(buckets: int) -> Callable[[httpx.Response], str | None]:
        def check(response: httpx.Response) -> str | None:
            if response.status_code != 200:
                return f"status {response.status_code}: {response.text[:200]}"
            body: dict[str, Any] = response.json()
            if len(body["items"]) != buckets:
                return f"{len(body['items'])} buckets, expected {buckets}"
            if body["uptime"] is None or abs(body["uptime"] - expected) > 1e-9:
                return f"uptime {body['uptime']}, expected {expected}"
            return None

        return check

    return [
        Kind("status", base + "/status", {}, status_check),
        Kind(
            "uptime, year by hour",
            base + "/uptime",
            {**window, "bucket": "hour"},
            uptime_check(HOURS),
        ),
        Kind(
            "uptime, year by day", base + "/uptime", {**window, "bucket": "day"}, uptime_check(365)
        ),
    ]


def measure(
    client: httpx.Client, kind: Kind, headers: dict[str, str]
) -> tuple[float, int, str | None]:
    started = time.perf_counter()
    response = client.get(kind.path, params=kind.params, headers=headers)
    elapsed = time.perf_counter() - started
    return elapsed, len(response.content), kind.check(response)


def bench(args: argparse.Namespace) -> dict[str, Any]:
    with fresh_database() as url, tempfile.TemporaryDirectory(prefix="sessiond-bench-") as tmp:
        workdir = Path(tmp)
        with (
            serving(url, workdir) as server,
            httpx.Client(base_url=server.url, timeout=30) as client,
        ):
            session = create_session(client, "Bench")
            created = created_at(url, session)
            end = created.replace(minute=0, second=0, microsecond=0)
            start = end - timedelta(days=365)
            rows = fixture(start)
            started = time.monotonic()
            insert(url, session, rows)
            print(
                f"fixture: {len(rows):,} transitions for {session.session_id} from "
                f"{start:%Y-%m-%d %H:%M} to {end:%Y-%m-%d %H:%M} UTC, inserted in "
                f"{time.monotonic() - started:.2f} s",
                flush=True,
            )
            expected = series(rows, start, end, end - start)[0].uptime
            assert expected is not None
            todo = kinds(session, start, end, expected)
            headers = {"x-api-key": session.key}
            for n in range(args.warmup):
                for kind in todo[n % 3 :] + todo[: n % 3]:
                    _, _, error = measure(client, kind, headers)
                    if error:
                        raise RuntimeError(f"warm-up {kind.name}: {error}")
            latencies: dict[str, list[float]] = {k.name: [] for k in todo}
            per_round: dict[str, list[float]] = {k.name: [] for k in todo}
            sizes: dict[str, int] = {}
            errors: dict[str, int] = {k.name: 0 for k in todo}
            print(
                f"{args.rounds} rounds of {args.requests} requests of each kind, "
                f"interleaved one by one (after {args.warmup} warm-up requests each)",
                flush=True,
            )
            for number in range(1, args.rounds + 1):
                samples: dict[str, list[float]] = {k.name: [] for k in todo}
                for n in range(args.requests):
                    shift = (n + number) % 3
                    for kind in todo[shift:] + todo[:shift]:
                        seconds, size, error = measure(client, kind, headers)
                        samples[kind.name].append(seconds * 1000)
                        sizes[kind.name] = size
                        if error:
                            errors[kind.name] += 1
                            print(f"round {number} {kind.name}: {error}", flush=True)
                for name, values in samples.items():
                    latencies[name] += values
                    per_round[name].append(percentile(values, 0.99))
                print(
                    f"round {number}  "
                    + "  ".join(
                        f"{name}: p50 {percentile(v, 0.5):7.2f} ms p99 "
                        f"{percentile(v, 0.99):7.2f} ms"
                        for name, v in samples.items()
                    ),
                    flush=True,
                )
                if server.process.poll() is not None:
                    raise RuntimeError(f"sessiond died during the run:\n{server.log()}")
    return report(
        args,
        latencies=latencies,
        per_round=per_round,
        sizes=sizes,
        errors=errors,
        transitions=len(rows),
    )


def report(
    args: argparse.Namespace,
    *,
    latencies: dict[str, list[float]],
    per_round: dict[str, list[float]],
    sizes: dict[str, int],
    errors: dict[str, int],
    transitions: int,
) -> dict[str, Any]:
    figures: dict[str, dict[str, float]] = {}
    for name, values in latencies.items():
        figures[name] = {
            "requests": float(len(values)),
            "p50_ms": percentile(values, 0.5),
            "p99_ms": percentile(values, 0.99),
            "max_ms": max(values) if values else float("nan"),
            "median_round_p99_ms": median(per_round[name]),
            "bytes": float(sizes.get(name, 0)),
            "errors": float(errors[name]),
        }
    status = figures["status"]
    print()
    print(
        f"Uptime series over a year ({transitions:,} transitions) vs status read — "
        f"{args.rounds} interleaved rounds, sequential requests, one keep-alive connection"
    )
    rows = [
        [
            name,
            f"{f['requests']:.0f}",
            f"{f['p50_ms']:.2f}",
            f"{f['p99_ms']:.2f}",
            f"{f['max_ms']:.2f}",
            f"{ratio(f['p50_ms'], status['p50_ms']):.1f}",
            f"{ratio(f['p99_ms'], status['p99_ms']):.1f}",
            f"{f['bytes'] / 1024:,.1f}",
            f"{f['errors']:.0f}",
        ]
        for name, f in figures.items()
    ]
    print_table(
        [
            "request",
            "n",
            "p50 ms",
            "p99 ms",
            "max ms",
            "p50 / status",
            "p99 / status",
            "KiB",
            "errors",
        ],
        rows,
    )
    print("ratios are latency / the status read's latency in the same run (higher = slower)")
    valid = all(f["errors"] == 0 for f in figures.values())
    if not valid:
        print("INVALID RUN: wrong or non-200 answers were counted (see the rounds above)")
    hour, day = figures["uptime, year by hour"], figures["uptime, year by day"]
    return {
        "benchmark": "uptime_series",
        "rounds": args.rounds,
        "requests_per_round": args.requests,
        "warmup": args.warmup,
        "transitions": transitions,
        "status": status,
        "hour": hour,
        "day": day,
        "ratio_p50_hour": ratio(hour["p50_ms"], status["p50_ms"]),
        "ratio_p99_hour": ratio(hour["p99_ms"], status["p99_ms"]),
        "ratio_p50_day": ratio(day["p50_ms"], status["p50_ms"]),
        "ratio_p99_day": ratio(day["p99_ms"], status["p99_ms"]),
        "valid": valid,
    }


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser(__doc__, rounds=5)
    parser.add_argument("--requests", type=int, default=40, help="of each kind, per round")
    parser.add_argument("--warmup", type=int, default=20, help="requests of each kind")
    parser.add_argument(
        "--duration", type=float, help="ignored (this benchmark counts requests; run_all.py)"
    )
    args = parser.parse_args(argv)
    if not 1 <= args.rounds <= 20 or not 1 <= args.requests <= 10_000 or args.warmup < 0:
        parser.error("rounds must be 1..20, requests 1..10000 and warmup ≥ 0")
    return run_bench(bench, args)


if __name__ == "__main__":
    sys.exit(main())
