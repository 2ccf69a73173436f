"""What a `/metrics` scrape costs with 10,000 sessions, and what the alerting figures add.

In process, on the status rows as an API process holds them (10,000 sessions in a mix of
states: connected, silent, retrying for minutes to days, expired, restricted, stopped and
deleted), `SessionsCollector` rendered to Prometheus text, in interleaved rounds:

- baseline: the families `/metrics` had before the alerting figures (their methods skipped);
- subject: every family, the alerting ones included (sessions down per threshold and the
  oldest, webhook endpoints, requests limited).

The projection lags and the webhook endpoints' aggregate query (one row) are given, not
read: they do not grow with the sessions. Target: a scrape of 10,000 sessions under 100 ms
on one core (Prometheus scrapes every 15 to 60 s).

    .venv/bin/python bench/metrics_scrape.py [--sessions 10000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchutil import bench_parser, median, print_table, ratio, run_bench, verdict
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import Metric

from api.controllers.metrics import Scrape, SessionsCollector
from projections.status import SessionRow
from projections.webhooks import EndpointHealth

TARGET_MS = 100.0
NOW = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)


class BeforeAlerting(SessionsCollector):
    """The collector without the families added for alerting."""

    def _down(self) -> Iterator[Metric]:
        return iter(())

    def _webhooks(self) -> Iterator[Metric]:
        return iter(())

    def _requests(self) -> Iterator[Metric]:
        return iter(())


def rows(count: int) -> list[SessionRow]:
    made = []
    for n in range(count):
        kind = n % 10
        row = SessionRow(
            session_id=f"sess_{n:06}",
            name=f"bench-{n}",
            status="connected",
            created_at=NOW - timedelta(days=3),
            updated_at=NOW,
            messages_sent=n % 97,
            messages_received=n % 31,
            queue_depth=n % 7,
        )
        if kind == 1:
            row.status, row.down_since = "disconnected", NOW - timedelta(minutes=n % 3000)
        elif kind == 2:
            row.status, row.down_since = "connecting", NOW - timedelta(minutes=n % 90)
        elif kind == 3:
            row.status = "expired"
        elif kind == 4:
            row.restriction_kind, row.status = "logged_out", "disconnected"
            row.down_since = NOW - timedelta(hours=2)
        elif kind == 5:
            row.silent_since = NOW - timedelta(minutes=40)
        elif kind == 6:
            row.desired, row.status = "stopped", "disconnected"
        elif kind == 7:
            row.desired = "deleted"
        made.append(row)
    return made


def scrape_ms(collector: SessionsCollector) -> float:
    started = time.perf_counter()
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    generate_latest(registry)
    return (time.perf_counter() - started) * 1000


def bench(args: argparse.Namespace) -> dict[str, Any]:
    held = rows(args.sessions)
    lags = {"session_status": 0, "webhooks": 3, "messages": 1}
    scrape = Scrape(
        now=NOW,
        lags=lags,
        webhooks=EndpointHealth(enabled=40, disabled=2, failing=1, oldest_failing_since=NOW),
        requests_limited=12,
        requests_near_limit=40,
    )
    before: list[float] = []
    after: list[float] = []
    for _ in range(args.rounds):
        for _ in range(args.scrapes):
            before.append(scrape_ms(BeforeAlerting(held, lags, scrape)))
            after.append(scrape_ms(SessionsCollector(held, lags, scrape)))
    baseline, subject = median(before), median(after)
    met = subject < TARGET_MS
    print_table(
        ["scrape of /metrics", "sessions", "median ms"],
        [
            ["before the alerting figures", f"{args.sessions:,}", f"{baseline:.1f}"],
            ["with them", f"{args.sessions:,}", f"{subject:.1f}"],
        ],
    )
    print(
        f"ratio {ratio(subject, baseline):.2f}; target < {TARGET_MS:.0f} ms: {verdict(met)}",
        flush=True,
    )
    return {
        "benchmark": "metrics_scrape",
        "sessions": args.sessions,
        "baseline_ms": baseline,
        "subject_ms": subject,
        "ratio": ratio(subject, baseline),
        "target_ms": TARGET_MS,
        "target_met": met,
        "valid": True,
    }


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser(__doc__)
    parser.add_argument("--sessions", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--scrapes", type=int, default=10, help="scrapes of each kind a round")
    parser.add_argument("--duration", type=float, default=None, help="ignored (run_all's)")
    return run_bench(bench, parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
