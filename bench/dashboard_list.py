"""The dashboard's sessions list with 1,000 sessions, under concurrent load.

One real ``sessiond serve`` (granian, 1 worker, every role, simulator gateway) on 127.0.0.1 and
a fresh database seeded with 1,000 sessions in every state (connected, connecting, stopped,
disconnected). Three endpoints are loaded in interleaved rounds at `--connections` keep-alive
connections, and the medians compared:

- ``GET /ping`` (no key, no lookup): the floor;
- ``GET /sessions`` with the admin key: the JSON API's list (all 1,000 sessions, one body);
- ``GET /dashboard/`` with the operator's cookie: the list page (counts of every state over the
  1,000, the newest 50 rendered with Jinja2) — the subject.

The QR codes of the sessions still linking turn over while the load runs, so the views keep
changing as they would on a live system. Load generator: wrk when present (installed with
apt-get as root), else a Python client (the output says so).

    .venv/bin/python bench/dashboard_list.py [--sessions 1000] [--duration 5] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
from benchutil import bench_parser, fresh_database, median, print_table, ratio, run_bench
from status_read import (
    ADMIN_KEY,
    Load,
    LoadGenerator,
    PythonClient,
    Wrk,
    describe,
    ensure_wrk,
    serving,
    summarise,
)

ADMIN = {"x-api-key": ADMIN_KEY}
TOKEN = re.compile(r'name="csrf_token" value="([^"]+)"')
TARGET_P99_MS = 100.0  # an operator's page, not an API hot path


def seed(client: httpx.Client, count: int) -> dict[str, int]:
    """`count` sessions: a third connected (scanned), a sixth stopped, a sixth dropped
    (disconnected, retrying), the rest showing QR codes."""

    def create(number: int) -> str:
        response = client.post("/sessions", json={"name": f"bench-{number:04}"}, headers=ADMIN)
        if response.status_code != 201:
            raise RuntimeError(f"POST /sessions: {response.status_code} {response.text}")
        return str(response.json()["sessionId"])

    def act(path: str) -> None:
        for _ in range(200):  # the worker shows the first QR code shortly after creation
            response = client.post(path, headers=ADMIN)
            if response.status_code == 200:
                return
            time.sleep(0.05)
        raise RuntimeError(f"POST {path}: {response.status_code} {response.text}")

    with ThreadPoolExecutor(8) as pool:
        ids = list(pool.map(create, range(count)))
        scanned = ids[: count // 3]
        list(pool.map(lambda s: act(f"/simulator/sessions/{s}/scan"), scanned))
        dropped = scanned[: count // 6]
        list(pool.map(lambda s: act(f"/simulator/sessions/{s}/drop"), dropped))
        stopped = ids[count // 3 : count // 3 + count // 6]
        list(pool.map(lambda s: act(f"/sessions/{s}/stop"), stopped))
    listed = client.get("/sessions", headers=ADMIN).json()
    states: dict[str, int] = {}
    for item in listed["items"]:
        state = "stopped" if item["stopped"] else item["status"]
        states[state] = states.get(state, 0) + 1
    return states


def sign_in(client: httpx.Client) -> str:
    """The dashboard cookie of a signed-in operator."""
    token = TOKEN.search(client.get("/dashboard/sign-in").text)
    assert token is not None
    response = client.post(
        "/dashboard/sign-in", data={"admin_key": ADMIN_KEY, "csrf_token": token.group(1)}
    )
    if response.status_code != 303:
        raise RuntimeError(f"sign-in: {response.status_code} {response.text[:500]}")
    return f"sessiond_dashboard={client.cookies['sessiond_dashboard']}"


def bench(args: argparse.Namespace) -> dict[str, Any]:
    os.environ["SESSIOND_GATEWAY"] = "simulator"  # the server inherits the environment
    os.environ["SESSIOND_WRITE_WAIT_TIMEOUT"] = "30"
    loads: dict[str, list[Load]] = {"ping": [], "json": [], "page": []}
    with fresh_database() as url, tempfile.TemporaryDirectory(prefix="sessiond-bench-") as tmp:
        workdir = Path(tmp)
        with serving(url, workdir) as server:
            with httpx.Client(base_url=server.url, timeout=60) as client:
                began = time.monotonic()
                states = seed(client, args.sessions)
                print(
                    f"seeded {args.sessions:,} sessions in {time.monotonic() - began:.1f} s: "
                    + ", ".join(f"{k} {v}" for k, v in sorted(states.items())),
                    flush=True,
                )
                cookie = sign_in(client)
                page = client.get("/dashboard/", headers={"Cookie": cookie})
                if page.status_code != 200 or f"of {args.sessions} sessions" not in page.text:
                    raise RuntimeError(f"the list page is wrong: {page.status_code}")
                print(f"list page: {len(page.content):,} bytes, {args.sessions:,} sessions counted")
            wrk = None if args.python_client else ensure_wrk(install=not args.no_install)
            generator: LoadGenerator = (
                Wrk(wrk, args.wrk_threads, workdir, server) if wrk else PythonClient(server)
            )
            print(
                f"load generator: {generator.name}; {args.connections} connections; "
                f"{args.rounds} rounds of {args.duration:g} s, order rotating",
                flush=True,
            )
            targets = {
                "ping": (server.url + "/ping", {}),
                "json": (server.url + "/sessions", ADMIN),
                "page": (server.url + "/dashboard/", {"Cookie": cookie}),
            }
            for target, headers in targets.values():  # warm-up
                generator.run(target, headers, 1.0, args.connections)
            kinds = list(targets)
            for number in range(args.rounds):
                order = kinds[number % 3 :] + kinds[: number % 3]
                for kind in order:
                    target, headers = targets[kind]
                    load = generator.run(target, headers, args.duration, args.connections)
                    loads[kind].append(load)
                    print(f"round {number + 1}  {describe(kind, load)}", flush=True)
                if server.process.poll() is not None:
                    raise RuntimeError(f"sessiond died during the run:\n{server.log()}")
    return report(args, generator.name, loads)


def report(
    args: argparse.Namespace, generator: str, loads: dict[str, list[Load]]
) -> dict[str, Any]:
    ping, json_list, page = (summarise(loads[k]) for k in ("ping", "json", "page"))
    valid = all(s["non_2xx"] == 0 and s["socket_errors"] == 0 for s in (ping, json_list, page))
    print()
    print(
        f"Dashboard list with {args.sessions:,} sessions — medians of {args.rounds} "
        f"interleaved rounds, {args.connections} connections, {generator}"
    )
    rows = [
        [
            name,
            f"{s['rps']:,.0f}",
            f"{s['p50_ms']:.2f}",
            f"{s['p99_ms']:.2f}",
            f"{s['cpu_us_per_request']:.0f}",
            f"{s['non_2xx']:.0f}",
        ]
        for name, s in (
            ("GET /ping", ping),
            ("GET /sessions (JSON, all)", json_list),
            ("GET /dashboard/ (page of 50)", page),
        )
    ]
    print_table(["endpoint", "req/s", "p50 ms", "p99 ms", "server CPU µs/req", "non-2xx"], rows)
    vs_json = ratio(page["rps"], json_list["rps"])
    vs_ping = ratio(page["rps"], ping["rps"])
    p99_ok = page["p99_ms"] < TARGET_P99_MS
    print(f"throughput ratio page/JSON list: {vs_json:.2f}; page/ping: {vs_ping:.3f}")
    print(
        f"page p99 {page['p99_ms']:.1f} ms (p99 ratio to the JSON list "
        f"{ratio(page['p99_ms'], json_list['p99_ms']):.2f}); target < {TARGET_P99_MS:g} ms: "
        + ("met" if p99_ok else "MISSED")
    )
    if not valid:
        print("INVALID RUN: non-2xx answers or socket errors were counted")
    return {
        "benchmark": "dashboard_list",
        "generator": generator,
        "sessions": args.sessions,
        "connections": args.connections,
        "rounds": args.rounds,
        "ping": ping,
        "json_list": json_list,
        "page": page,
        "ratio_page_json": vs_json,
        "ratio_page_ping": vs_ping,
        "p99_met": p99_ok,
        "valid": valid,
        "per_round_p99_ms": [x.p99_ms for x in loads["page"]],
        "median_page_p99_ms": median([x.p99_ms for x in loads["page"]]),
    }


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser(__doc__, rounds=3, duration=5.0)
    parser.add_argument("--sessions", type=int, default=1000)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--wrk-threads", type=int, default=1)
    parser.add_argument("--python-client", action="store_true", help="do not use wrk")
    parser.add_argument("--no-install", action="store_true", help="never apt-get install wrk")
    args = parser.parse_args(argv)
    if not 1 <= args.rounds <= 20 or not 0.5 <= args.duration <= 120:
        parser.error("rounds must be 1..20 and duration 0.5..120 s")
    if not 6 <= args.sessions <= 20_000:
        parser.error("sessions must be 6..20,000")
    return run_bench(bench, args)


if __name__ == "__main__":
    sys.exit(main())
