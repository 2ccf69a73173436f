"""The audit chain's cost on the command path: the command benchmark's stop/reconnect commands
with the chain and without it, in interleaved rounds on one database.

Both sides run in the same process against the same tables, each on sessions of its own; the
"off" side's recorder inserts the events as eventsourcing does, without chaining them (and the
database's fallback trigger, which would chain them, is disabled during its rounds), so the
ratio is the chain's cost alone: hashing, the head's lock and its update, one more round trip
per commit. Besides throughput, the CPU time per command of this process and of the
database's backends is reported: the figure least moved by the machine's load. (The log this
leaves is not one chain: the "off" rounds recorded events without hashes. It is a benchmark's
database, dropped at the end.) `bench/versus.py … command_throughput` compares two trees.

    .venv/bin/python bench/audit_chain.py [--duration 5] [--rounds 4] [--writers 1,8]
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psycopg
from benchutil import fresh_database, median, print_table, ratio, run_bench, verdict
from command_throughput import BenchSession, Run, subject, writers_args
from eventsourcing.persistence import StoredEvent
from eventsourcing.postgres import PostgresApplicationRecorder
from psycopg import Cursor
from psycopg.rows import DictRow

from application.sessions import SessionsApplication
from domain.values import ADMIN_ACTOR
from infra.postgres.recorder import PollingApplicationRecorder
from infra.settings import eventsourcing_env

#: The issue's goal: commands at most 5 % slower with the chain.
TARGET_RATIO = 0.95


class UnchainedRecorder(PollingApplicationRecorder):
    """sessiond's recorder without the audit chain (the benchmark's "off" side)."""

    def _insert_stored_events(
        self, curs: Cursor[DictRow], stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> None:
        PostgresApplicationRecorder._insert_stored_events(self, curs, stored_events, **kwargs)


def backends_cpu(url: str) -> float:
    """CPU seconds used so far by the PostgreSQL backends connected to the benchmark's
    database (this machine's /proc): what the chain's triggers cost shows here, less moved
    by other processes' load than throughput is."""
    ticks = os.sysconf("SC_CLK_TCK")
    with psycopg.connect(url, autocommit=True) as conn:
        pids = [
            row[0]
            for row in conn.execute(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                "AND pid <> pg_backend_pid()"
            )
        ]
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / ticks  # utime, stime
    return total


def set_fallback_trigger(url: str, *, on: bool) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            f"ALTER TABLE sessiond_events {'ENABLE' if on else 'DISABLE'} TRIGGER sessiond_chain"
        )


def bench(args: argparse.Namespace) -> dict[str, Any]:
    by_writers: dict[str, Any] = {}
    with fresh_database() as url:
        for writers in args.writers:
            env = eventsourcing_env(url, pool_size=writers)
            apps = {
                "on": SessionsApplication(env=env),
                "off": SessionsApplication(
                    env={**env, "APPLICATION_RECORDER_TOPIC": "__main__:UnchainedRecorder"}
                ),
            }
            try:
                sessions: dict[str, list[BenchSession]] = {"on": [], "off": []}
                for side, app in apps.items():
                    for i in range(writers):
                        created = app.create_session(
                            f"bench-{side}-{writers}-{i}", {}, None, ADMIN_ACTOR
                        )
                        sessions[side].append(
                            BenchSession(created.session_id, app.load(created.session_id).version)
                        )
                print(f"\n{writers} writer(s): {args.rounds} rounds of {args.duration:g} s each")
                runs: dict[str, list[Run]] = {"on": [], "off": []}
                database_cpu: dict[str, list[float]] = {"on": [], "off": []}
                for number in range(args.rounds + 1):  # round 0 warms both sides up
                    order = ("on", "off") if number % 2 else ("off", "on")
                    for side in order:
                        set_fallback_trigger(url, on=side == "on")
                        before = backends_cpu(url)
                        run = subject(
                            apps[side],
                            sessions[side],
                            args.warmup if number == 0 else args.duration,
                        )
                        database_us = (backends_cpu(url) - before) / max(run.operations, 1) * 1e6
                        if number == 0:
                            continue
                        runs[side].append(run)
                        database_cpu[side].append(database_us)
                        print(
                            f"round {number}  chain {side:<3} {run.rate:>9,.0f} commands/s  "
                            f"({run.operations:,} in {run.seconds:.2f} s, errors {run.errors}; "
                            f"CPU per command: Python {run.cpu_us_per_op:,.0f} µs, "
                            f"PostgreSQL {database_us:,.0f} µs)",
                            flush=True,
                        )
                set_fallback_trigger(url, on=True)
                on = median([r.rate for r in runs["on"]])
                off = median([r.rate for r in runs["off"]])
                cpu = {
                    side: median([r.cpu_us_per_op for r in runs[side]]) + median(database_cpu[side])
                    for side in ("on", "off")
                }
                by_writers[str(writers)] = {
                    "cpu_us_per_command_off": cpu["off"],
                    "cpu_us_per_command_on": cpu["on"],
                    "cpu_ratio": ratio(cpu["off"], cpu["on"]),
                    "database_cpu_us_per_command_off": median(database_cpu["off"]),
                    "database_cpu_us_per_command_on": median(database_cpu["on"]),
                    "chain_off_commands_per_s": off,
                    "chain_on_commands_per_s": on,
                    "ratio": ratio(on, off),
                    "ratio_per_round": [
                        ratio(a.rate, b.rate) for a, b in zip(runs["on"], runs["off"], strict=True)
                    ],
                    "errors": sum(r.errors for r in runs["on"] + runs["off"]),
                }
            finally:
                for app in apps.values():
                    app.close()
    print()
    print(
        f"Commands with the audit chain vs without — medians of {args.rounds} interleaved "
        f"rounds of {args.duration:g} s"
    )
    print_table(
        [
            "writers",
            "chain off commands/s",
            "chain on commands/s",
            "ratio",
            "per round",
            "CPU µs/command off",
            "on",
            "of which PostgreSQL off",
            "on",
            "CPU ratio",
            "errors",
        ],
        [
            [
                writers,
                f"{f['chain_off_commands_per_s']:,.0f}",
                f"{f['chain_on_commands_per_s']:,.0f}",
                f"{f['ratio']:.3f}",
                ", ".join(f"{r:.2f}" for r in f["ratio_per_round"]),
                f"{f['cpu_us_per_command_off']:,.0f}",
                f"{f['cpu_us_per_command_on']:,.0f}",
                f"{f['database_cpu_us_per_command_off']:,.0f}",
                f"{f['database_cpu_us_per_command_on']:,.0f}",
                f"{f['cpu_ratio']:.3f}",
                str(f["errors"]),
            ]
            for writers, f in by_writers.items()
        ],
    )
    print(
        "CPU = this process (every thread) plus the database's backends, per command; "
        "CPU ratio = off / on (1.0: no cost)"
    )
    met = all(f["ratio"] >= TARGET_RATIO for f in by_writers.values())
    print(f"target: throughput ratio ≥ {TARGET_RATIO} (at most 5 % slower): {verdict(met)}")
    errors = sum(f["errors"] for f in by_writers.values())
    return {
        "benchmark": "audit_chain",
        "rounds": args.rounds,
        "duration_s": args.duration,
        "writers": by_writers,
        "target_ratio": TARGET_RATIO,
        "ratio_met": met,
        "valid": errors == 0,
    }


def main(argv: list[str] | None = None) -> int:
    return run_bench(bench, writers_args(__doc__, 4, argv))


if __name__ == "__main__":
    sys.exit(main())
