"""How long an API process's event loop waits while expensive reads run, with the reads on
threads of the process (as in-process apps run them) and in reader processes (as a server
runs them), against the same loop with no reads at all, in the same run.

The event loop is what answers every status read: its lag is what a status read waits
before it is even looked at. One process, one fresh database, one session of ``--events``
events; 8 clients (each its own session id, so no cap refuses them) hammer history pages of
1,000 events and past states through `api.expensive.ExpensiveReads` (2 threads, or 2 reader
processes), while a probe sleeps 2 ms at a time on the loop and records how late it wakes.
Rounds interleave idle, threads and processes; the medians of each round's p50 and p99 are
printed, with the lag's p99 as a ratio to the idle loop's. Absolute figures swing with the
machine's load; the ratios are measured side by side.

    .venv/bin/python bench/expensive_reads_lag.py [--seconds 6] [--rounds 3] [--events 3000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from datetime import UTC, datetime
from typing import Any

from benchutil import bench_parser, fresh_database, median, print_table, ratio, run_bench

from api import reads
from api.expensive import ExpensiveReads, ReaderProcesses, keep_the_loop_responsive
from application.sessions import SessionsApplication
from infra.bootstrap import Container
from infra.runtime.readers import ReaderRecipe
from infra.settings import Settings, eventsourcing_env

CLIENTS = 8
PROBE_EVERY = 0.002
MODES = ("idle", "threads", "processes")


async def measure(
    pool: ExpensiveReads | None,
    local: Any,
    session_id: str,
    life: tuple[datetime, datetime],
    *,
    seconds: float,
    events: int,
) -> tuple[float, float, int]:
    """One round: the loop lag's p50 and p99 (ms) and how many reads were served."""
    stop = time.monotonic() + seconds
    lags: list[float] = []
    served = 0
    begin, end = life

    async def client(n: int) -> None:
        nonlocal served
        assert pool is not None
        turn = n
        while time.monotonic() < stop:
            turn += 1
            if turn % 2:
                after = (turn * 37) % events
                await pool.run(f"c{n}", reads.session_events, local, session_id, after, 1000)
            else:
                instant = begin + (end - begin) * ((turn * 0.137) % 1)
                await pool.run(f"c{n}", reads.state_as_of, local, session_id, instant)
            served += 1

    async def probe() -> None:
        while time.monotonic() < stop:
            started = time.perf_counter()
            await asyncio.sleep(PROBE_EVERY)
            lags.append((time.perf_counter() - started - PROBE_EVERY) * 1000)

    clients = [client(n) for n in range(CLIENTS)] if pool is not None else []
    await asyncio.gather(probe(), *clients)
    lags.sort()
    return lags[len(lags) // 2], lags[min(len(lags) - 1, int(len(lags) * 0.99))], served


def bench(args: argparse.Namespace) -> dict[str, Any]:
    keep_the_loop_responsive()  # as a server process does
    with fresh_database() as url:
        settings = Settings.from_env()
        Container(settings, url, frozenset({"api"})).close()  # the schema
        app = SessionsApplication(env={**eventsourcing_env(url), "CREATE_TABLE": "n"})
        begin = datetime.now(UTC)
        session_id = app.create_session("Busy", {}, None, "admin").session_id
        for n in range(args.events):
            app.set_rate_limit(session_id, 1000 - n % 2, "admin")
        end = datetime.now(UTC)
        app.close()
        # This process's own objects for the threads; the reader processes build theirs.
        local = ReaderRecipe(settings, url, os.getppid(), "bench")()
        pools: dict[str, ExpensiveReads | None] = {
            "idle": None,
            "threads": ExpensiveReads(2, CLIENTS),
            "processes": ExpensiveReads(
                2, CLIENTS, ReaderProcesses(2, ReaderRecipe(settings, url, os.getpid(), "bench"))
            ),
        }
        processes = pools["processes"]
        assert processes is not None
        processes.start()
        length = {"seconds": args.seconds, "events": args.events}
        asyncio.run(measure(processes, None, session_id, (begin, end), **length))  # warm-up
        rounds: dict[str, list[tuple[float, float, int]]] = {mode: [] for mode in MODES}
        try:
            for n in range(args.rounds):
                for mode in MODES:
                    run = measure(pools[mode], local, session_id, (begin, end), **length)
                    found = asyncio.run(run)
                    rounds[mode].append(found)
                    print(
                        f"round {n + 1} {mode}: lag p50 {found[0]:.2f} ms, p99 {found[1]:.2f} ms,"
                        f" {found[2]} reads; load {os.getloadavg()[0]:.2f}",
                        flush=True,
                    )
        finally:
            for pool in pools.values():
                if pool is not None:
                    pool.close()
            local.app.close()
    figures = {
        mode: {
            "p50_ms": median([r[0] for r in rounds[mode]]),
            "p99_ms": median([r[1] for r in rounds[mode]]),
            "reads": median([r[2] for r in rounds[mode]]),
        }
        for mode in MODES
    }
    idle = figures["idle"]["p99_ms"]
    print(f"\nevent-loop lag while {CLIENTS} clients hammer expensive reads (medians of rounds):")
    print_table(
        ["reads run", "lag p50 (ms)", "lag p99 (ms)", "p99 / idle", "reads per round"],
        [
            [
                mode,
                f"{f['p50_ms']:.2f}",
                f"{f['p99_ms']:.2f}",
                f"{ratio(f['p99_ms'], idle):.2f}",
                f"{f['reads']:.0f}",
            ]
            for mode, f in figures.items()
        ],
    )
    return {"valid": all(rounds[mode] for mode in MODES), "figures": figures}


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser(__doc__)
    parser.add_argument("--seconds", type=float, default=6.0, help="seconds per round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of each mode")
    parser.add_argument("--events", type=int, default=3000, help="events of the session")
    return run_bench(bench, parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
