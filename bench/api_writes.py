"""Concurrent writes through one ``sessiond serve``: its default pool vs a larger one, same run.

`--clients` HTTP clients (16) each drive a session of their own, alternating
``POST /sessions/{id}/stop`` and ``POST /sessions/{id}/reconnect`` (each answered once every
API process's views have the change: read-your-writes), for `--duration` seconds. The subject
is ``serve`` with its default pool (the connection budget: 5); the baseline the same with
``SESSIOND_POOL_MAX=10`` (what the pool was before the budget, roughly). Rounds alternate,
each on a fresh database and a fresh server; medians are compared.

    .venv/bin/python bench/api_writes.py [--clients 16] [--duration 8] [--rounds 2]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from benchutil import bench_parser, fresh_database, median, print_table, ratio, run_bench
from status_read import Server, create_session

CONFIGS: list[tuple[str, dict[str, str]]] = [
    ("pool 5 (default)", {}),
    ("pool 10", {"SESSIOND_POOL_MAX": "10"}),
]


def start_server(url: str, workdir: Path, env: dict[str, str]) -> Server:
    saved = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    try:
        server = Server(url, workdir)
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    server.wait_ready()
    return server


async def drive(base: str, sessions: list[Any], seconds: float) -> dict[str, Any]:
    """Every client stops and reconnects its session in turn for `seconds`."""
    latencies: list[float] = []
    failures: list[str] = []
    deadline = time.monotonic() + seconds

    async def client(session: Any) -> None:
        headers = {"x-api-key": session.key}
        limits = httpx.Limits(max_connections=1)
        async with httpx.AsyncClient(base_url=base, timeout=30, limits=limits) as http:
            turn = 0
            while time.monotonic() < deadline:
                action = ("stop", "reconnect")[turn % 2]
                started = time.perf_counter()
                response = await http.post(
                    f"/sessions/{session.session_id}/{action}", headers=headers
                )
                if response.status_code == 200:
                    latencies.append((time.perf_counter() - started) * 1000)
                    turn += 1
                else:
                    failures.append(f"{action}: {response.status_code} {response.text[:120]}")

    started = time.monotonic()
    await asyncio.gather(*(client(s) for s in sessions))
    elapsed = time.monotonic() - started
    ordered = sorted(latencies)
    return {
        "commands_per_s": len(latencies) / elapsed,
        "p50_ms": statistics.median(ordered) if ordered else float("nan"),
        "p99_ms": ordered[int(0.99 * (len(ordered) - 1))] if ordered else float("nan"),
        "failures": len(failures),
        "first_failures": failures[:3],
    }


def one_round(label: str, env: dict[str, str], args: argparse.Namespace) -> dict[str, Any]:
    with fresh_database() as url, tempfile.TemporaryDirectory(prefix="sessiond-bench-") as tmp:
        server = start_server(url, Path(tmp), {**env, "SESSIOND_GATEWAY": "simulator"})
        try:
            with httpx.Client(base_url=server.url, timeout=30) as http:
                sessions = [create_session(http, f"writer-{i}") for i in range(args.clients)]
            asyncio.run(drive(server.url, sessions, args.warmup))
            cpu = server.cpu_seconds()
            result = asyncio.run(drive(server.url, sessions, args.duration))
            result["server_cpu_s"] = server.cpu_seconds() - cpu
        finally:
            server.stop()
    print(
        f"  {label}: {result['commands_per_s']:.0f} commands/s, p50 {result['p50_ms']:.1f} ms, "
        f"p99 {result['p99_ms']:.1f} ms, failures {result['failures']} "
        f"(load average {' '.join(Path('/proc/loadavg').read_text().split()[:3])})",
        flush=True,
    )
    for failure in result["first_failures"]:
        print(f"    {failure}")
    return result


def bench(args: argparse.Namespace) -> dict[str, Any]:
    runs: dict[str, list[dict[str, Any]]] = {label: [] for label, _ in CONFIGS}
    for number in range(args.rounds):
        order = CONFIGS if number % 2 == 0 else CONFIGS[::-1]
        print(f"round {number + 1}")
        for label, env in order:
            runs[label].append(one_round(label, env, args))
    figures = {
        label: {
            "commands_per_s": median([r["commands_per_s"] for r in found]),
            "p99_ms": median([r["p99_ms"] for r in found]),
            "failures": sum(r["failures"] for r in found),
        }
        for label, found in runs.items()
    }
    subject, baseline = figures[CONFIGS[0][0]], figures[CONFIGS[1][0]]
    share = ratio(subject["commands_per_s"], baseline["commands_per_s"])
    print(f"\n{args.clients} clients writing through one serve (medians of {args.rounds})")
    print_table(
        ["pool", "commands/s", "p99 ms", "failures"],
        [
            [label, f"{f['commands_per_s']:.0f}", f"{f['p99_ms']:.1f}", str(f["failures"])]
            for label, f in figures.items()
        ],
        align="lrrr",
    )
    print(f"default pool / pool 10: {share:.2f}")
    valid = all(f["failures"] == 0 for f in figures.values())
    return {"clients": args.clients, "figures": figures, "ratio": share, "valid": valid}


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser(__doc__, rounds=2, duration=8.0)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--warmup", type=float, default=1.0)
    return run_bench(bench, parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
