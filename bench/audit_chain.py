"""The audit chain's cost on the command path: the command benchmark's stop/reconnect commands
with the chain's triggers on and off, in interleaved rounds on one database.

Both sides run the same code in the same process against the same tables; only the two
triggers that hash each event and write the chain's head (`sessiond_chain`,
`sessiond_chain_head`) are disabled on the "off" side, so the ratio is the chain's cost alone,
the figure least moved by the machine's load. (The log this leaves is not one chain: the
rounds without it recorded events without hashes. It is a benchmark's database, dropped at
the end.) `bench/versus.py … command_throughput` compares two trees instead.

    .venv/bin/python bench/audit_chain.py [--duration 5] [--rounds 4] [--writers 1,8]
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import psycopg
from benchutil import fresh_database, median, print_table, ratio, run_bench, verdict
from command_throughput import BenchSession, Run, subject

from application.sessions import SessionsApplication
from domain.values import ADMIN_ACTOR
from infra.settings import eventsourcing_env

#: The issue's goal: commands at most 5 % slower with the chain.
TARGET_RATIO = 0.95
TRIGGERS = ("sessiond_chain", "sessiond_chain_head")


def set_chain(url: str, *, on: bool) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        for trigger in TRIGGERS:
            conn.execute(
                f"ALTER TABLE sessiond_events {'ENABLE' if on else 'DISABLE'} TRIGGER {trigger}"
            )
        if on:  # events recorded without it are not chained: the chain goes on after them
            conn.execute(
                "UPDATE sessiond_audit_head SET position = "
                "(SELECT coalesce(max(notification_id), 0) FROM sessiond_events)"
            )


def bench(args: argparse.Namespace) -> dict[str, Any]:
    by_writers: dict[str, Any] = {}
    with fresh_database() as url:
        for writers in args.writers:
            app = SessionsApplication(env=eventsourcing_env(url, pool_size=writers))
            try:
                sessions = []
                for i in range(writers):
                    created = app.create_session(f"bench-{writers}-{i}", {}, None, ADMIN_ACTOR)
                    sessions.append(
                        BenchSession(created.session_id, app.load(created.session_id).version)
                    )
                print(f"\n{writers} writer(s): {args.rounds} rounds of {args.duration:g} s each")
                runs: dict[str, list[Run]] = {"on": [], "off": []}
                for number in range(args.rounds + 1):  # round 0 warms both sides up
                    order = ("on", "off") if number % 2 else ("off", "on")
                    for side in order:
                        set_chain(url, on=side == "on")
                        run = subject(app, sessions, args.warmup if number == 0 else args.duration)
                        if number == 0:
                            continue
                        runs[side].append(run)
                        print(
                            f"round {number}  chain {side:<3} {run.rate:>9,.0f} commands/s  "
                            f"({run.operations:,} in {run.seconds:.2f} s, errors {run.errors})",
                            flush=True,
                        )
                set_chain(url, on=True)
                on = median([r.rate for r in runs["on"]])
                off = median([r.rate for r in runs["off"]])
                by_writers[str(writers)] = {
                    "chain_off_commands_per_s": off,
                    "chain_on_commands_per_s": on,
                    "ratio": ratio(on, off),
                    "ratio_per_round": [
                        ratio(a.rate, b.rate) for a, b in zip(runs["on"], runs["off"], strict=True)
                    ],
                    "errors": sum(r.errors for r in runs["on"] + runs["off"]),
                }
            finally:
                app.close()
    print()
    print(
        f"Commands with the audit chain vs without — medians of {args.rounds} interleaved "
        f"rounds of {args.duration:g} s"
    )
    print_table(
        ["writers", "chain off commands/s", "chain on commands/s", "ratio", "per round", "errors"],
        [
            [
                writers,
                f"{f['chain_off_commands_per_s']:,.0f}",
                f"{f['chain_on_commands_per_s']:,.0f}",
                f"{f['ratio']:.3f}",
                ", ".join(f"{r:.2f}" for r in f["ratio_per_round"]),
                str(f["errors"]),
            ]
            for writers, f in by_writers.items()
        ],
    )
    met = all(f["ratio"] >= TARGET_RATIO for f in by_writers.values())
    print(f"target: ratio ≥ {TARGET_RATIO} (at most 5 % slower): {verdict(met)}")
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
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per round")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds, each side")
    parser.add_argument(
        "--writers",
        type=lambda text: [int(n) for n in text.split(",")],
        default=[1, 8],
        help="comma-separated writer counts (default 1,8)",
    )
    parser.add_argument("--json-out", help="write the result here (used by run_all.py)")
    args = parser.parse_args(argv)
    if not 1 <= args.rounds <= 20 or not 0.5 <= args.duration <= 120:
        parser.error("rounds must be 1..20 and duration 0.5..120 s")
    if not args.writers or not all(1 <= n <= 64 for n in args.writers):
        parser.error("writer counts must be 1..64")
    return run_bench(bench, args)


if __name__ == "__main__":
    sys.exit(main())
