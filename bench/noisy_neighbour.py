"""A noisy neighbour: tenant A hammers the expensive reads while tenant B's status reads and
webhook deliveries are measured, against the same measurements with A quiet, in the same run.

One real ``sessiond serve`` process (granian, 1 worker, every role, simulator gateway,
``SESSIOND_WEBHOOKS_ALLOW_PRIVATE=true``) on 127.0.0.1 and a fresh database. Both sessions'
rate limits are 100,000 requests a minute, so only the expensive reads' own limits stand
between A and B (the worst case). Set up:

- tenant A: a session with ``--events`` events (rate-limit changes, written through the
  application straight into the store), and a webhook endpoint of its own on a receiver path
  that answers after 0.5 s (a slow endpoint, holding delivery slots as long as it may);
- tenant B: a session with a webhook endpoint for ``session.stopped`` on a path that answers
  at once. The receiver is a process of its own.

Measured in alternating phases (quiet, noisy, quiet, … ``--rounds`` each, ``--duration`` s):

- B's status read: ``GET /sessions/{B}/status`` one at a time over a keep-alive connection,
  from a thread of this process, every 2 ms: p50 / p99 of its latency;
- B's webhook latency: B's session is stopped and started again every 100 ms; each
  ``session.stopped`` delivery's arrival at the receiver minus the event's own timestamp;
- in the noisy phases, A (another process, 32 keep-alive connections, no pause) cycles through
  ``GET /sessions/{A}?asOf=…`` (an instant in A's life), ``GET /sessions/{A}/uptime?bucket=hour``
  (30 days), ``GET /sessions/{A}/events?after=…&limit=1000`` and ``POST /webhooks/{A's}/replay``
  (A's whole life); its answers are counted by status (429 and 409 are its limits at work).
  A's process runs at the lowest CPU priority (``nice`` `A_NICENESS`, 19): a real tenant's
  clients run on machines of their own, not on the server's cores, and this load generator
  (an asyncio HTTP client, CPU-bound) would otherwise take a core from the server itself.
  What is measured of B is unchanged: B's reads and stops run from this process at the
  normal priority.

Printed: B's p50 / p99 quiet and noisy and their ratio. Goals: B's status p99 under 10 ms with
A noisy; B's webhook p99 noisy ≤ 2 x quiet.

    .venv/bin/python bench/noisy_neighbour.py [--duration 8] [--rounds 3] [--events 3000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import tempfile
import threading
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
from benchutil import Role, bench_parser, fresh_database, print_table, ratio, run_bench, verdict
from status_read import ADMIN_KEY, HOST, RATE_LIMIT, BenchSession, Server, create_session

from application.sessions import SessionsApplication
from infra.settings import eventsourcing_env

ADMIN = {"x-api-key": ADMIN_KEY}
CONNECTIONS = 32
STATUS_EVERY = 0.002
TOGGLE_EVERY = 0.1
SLOW_ANSWER = 0.5
STATUS_P99_GOAL_MS = 10.0
#: The CPU priority of tenant A's load generator (its clients would be remote).
A_NICENESS = 19
WEBHOOK_RATIO_GOAL = 2.0


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(p * len(ordered)) - 1))]


# -- the receiver (its own process) -------------------------------------------------------------


def serve_receiver(port_file: str, arrivals_file: str) -> int:
    """Answer every POST: ``/slow`` after `SLOW_ANSWER` s, others at once; write each
    ``session.stopped`` arrival (event time, arrival time) as a line of `arrivals_file`."""
    out = Path(arrivals_file).open("a", buffering=1)  # noqa: SIM115 - open for the process
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length") or 0))
            arrived = time.time()
            if self.path == "/slow":
                time.sleep(SLOW_ANSWER)
            else:
                event = json.loads(body)
                if event.get("type") == "session.stopped":
                    at = datetime.fromisoformat(event["timestamp"]).timestamp()
                    with lock:
                        out.write(f"{at} {arrived}\n")
            self.send_response(200)
            self.send_header("content-length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer((HOST, 0), Handler)
    server.daemon_threads = True
    Path(port_file).write_text(str(server.server_address[1]))
    server.serve_forever()
    return 0


# -- tenant A (its own process) -----------------------------------------------------------------


async def hammer(spec_file: str, seconds: float, out_file: str) -> int:
    """Tenant A: `CONNECTIONS` loops of expensive requests, no pause, for `seconds`, at the
    lowest CPU priority (`A_NICENESS`): the server's cores are not its clients' to take."""
    os.nice(A_NICENESS - os.nice(0))
    spec = json.loads(Path(spec_file).read_text())
    headers = {"x-api-key": spec["key"]}
    begin, end = datetime.fromisoformat(spec["begin"]), datetime.fromisoformat(spec["end"])
    base = f"/sessions/{spec['session_id']}"
    counts: Counter[str] = Counter()
    stop_at = time.monotonic() + seconds
    limits = httpx.Limits(max_connections=CONNECTIONS, max_keepalive_connections=CONNECTIONS)

    def instant() -> str:
        return (begin + (end - begin) * random.random()).isoformat()

    async def loop(client: httpx.AsyncClient, n: int) -> None:
        kinds = ("asOf", "uptime", "events", "replay")
        turn = n
        while time.monotonic() < stop_at:
            kind = kinds[turn % len(kinds)]
            turn += 1
            if kind == "asOf":
                request = client.get(base, params={"asOf": instant()}, headers=headers)
            elif kind == "uptime":
                request = client.get(base + "/uptime", params={"bucket": "hour"}, headers=headers)
            elif kind == "events":
                after = random.randrange(spec["events"])
                params = {"after": str(after), "limit": "1000"}
                request = client.get(base + "/events", params=params, headers=headers)
            else:
                window = {"from": spec["begin"], "to": spec["end"]}
                request = client.post(
                    f"/webhooks/{spec['webhook_id']}/replay", json=window, headers=headers
                )
            try:
                response = await request
                counts[f"{kind} {response.status_code}"] += 1
            except httpx.HTTPError as error:
                counts[f"{kind} {type(error).__name__}"] += 1

    async with httpx.AsyncClient(base_url=spec["url"], timeout=30, limits=limits) as client:
        await asyncio.gather(*(loop(client, n) for n in range(CONNECTIONS)))
    Path(out_file).write_text(json.dumps(counts))
    return 0


# -- tenant B, measured from here ---------------------------------------------------------------


class StatusProbe(threading.Thread):
    """B's status read, one at a time, every `STATUS_EVERY` s, until stopped."""

    def __init__(self, url: str, session: BenchSession) -> None:
        super().__init__(daemon=True)
        self.url, self.session = url, session
        self.latencies_ms: list[float] = []
        self.failures = 0
        self.stopping = threading.Event()

    def run(self) -> None:
        path = f"/sessions/{self.session.session_id}/status"
        headers = {"x-api-key": self.session.key}
        with httpx.Client(base_url=self.url, timeout=10) as client:
            while not self.stopping.is_set():
                started = time.perf_counter()
                response = client.get(path, headers=headers)
                elapsed = (time.perf_counter() - started) * 1000
                if response.status_code == 200:
                    self.latencies_ms.append(elapsed)
                else:
                    self.failures += 1
                self.stopping.wait(STATUS_EVERY)


class Toggler(threading.Thread):
    """Stops and starts B's session again, every `TOGGLE_EVERY` s: a ``session.stopped``
    delivery every other time."""

    def __init__(self, url: str, session: BenchSession) -> None:
        super().__init__(daemon=True)
        self.url, self.session = url, session
        self.stopping = threading.Event()
        self.stops = 0
        self.failures = 0

    def run(self) -> None:
        base = f"/sessions/{self.session.session_id}"
        with httpx.Client(base_url=self.url, timeout=30, headers=ADMIN) as client:
            while not self.stopping.is_set():
                for action in ("stop", "reconnect"):
                    response = client.post(f"{base}/{action}")
                    if response.status_code != 200:
                        self.failures += 1
                    elif action == "stop":
                        self.stops += 1
                    self.stopping.wait(TOGGLE_EVERY)


def webhook_latencies(arrivals: Path, since: float, until: float) -> list[float]:
    """Arrival minus event time (ms) of each B delivery whose event is in [since, until)."""
    found = []
    for line in arrivals.read_text().splitlines():
        at, arrived = (float(v) for v in line.split())
        if since <= at < until:
            found.append((arrived - at) * 1000)
    return found


# -- set-up ---------------------------------------------------------------------------------


class NoisyServer(Server):
    def __init__(self, database_url: str, workdir: Path) -> None:
        os.environ["SESSIOND_WEBHOOKS_ALLOW_PRIVATE"] = "true"
        try:
            super().__init__(database_url, workdir)
        finally:
            del os.environ["SESSIOND_WEBHOOKS_ALLOW_PRIVATE"]


def write_events(database_url: str, session_id: str, count: int) -> None:
    """`count` more events of the session (rate-limit changes), saved through the application."""
    app = SessionsApplication(env={**eventsourcing_env(database_url), "CREATE_TABLE": "n"})
    try:
        for n in range(count):
            app.set_rate_limit(session_id, RATE_LIMIT - (n % 2), "admin")
    finally:
        app.close()


def register(client: httpx.Client, session: BenchSession, url: str, events: list[str]) -> str:
    response = client.post(
        "/webhooks", json={"url": url, "events": events}, headers={"x-api-key": session.key}
    )
    if response.status_code != 201:
        raise RuntimeError(f"POST /webhooks: {response.status_code} {response.text}")
    webhook_id: str = response.json()["webhookId"]
    return webhook_id


def phase(
    server: Server,
    b: BenchSession,
    arrivals: Path,
    seconds: float,
    noisy: Role | None,
) -> tuple[list[float], list[float], int]:
    probe, toggler = StatusProbe(server.url, b), Toggler(server.url, b)
    since = time.time()
    probe.start()
    toggler.start()
    time.sleep(seconds)
    probe.stopping.set()
    toggler.stopping.set()
    probe.join(30)
    toggler.join(30)
    until = time.time()
    if noisy is not None:
        noisy.process.wait(seconds + 60)
    time.sleep(2.0)  # the last deliveries of the phase arrive
    failures = probe.failures + toggler.failures
    return probe.latencies_ms, webhook_latencies(arrivals, since, until), failures


def bench(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="sessiond-noisy-") as tmp, fresh_database() as url:
        workdir = Path(tmp)
        port_file, arrivals = workdir / "receiver.port", workdir / "arrivals.txt"
        arrivals.touch()
        receiver = Role(
            "receiver",
            [__file__, "--receiver", str(port_file), str(arrivals)],
            dict(os.environ),
            workdir,
        )
        server = NoisyServer(url, workdir)
        try:
            server.wait_ready()
            while not port_file.exists() or not port_file.read_text():
                receiver.check()
                time.sleep(0.05)
            hook = f"http://{HOST}:{port_file.read_text()}"
            with httpx.Client(base_url=server.url, timeout=30) as client:
                a, b = create_session(client, "Tenant A"), create_session(client, "Tenant B")
                begin = datetime.now(UTC)
                write_events(url, a.session_id, args.events)
                end = datetime.now(UTC) + timedelta(seconds=1)
                webhook_a = register(client, a, hook + "/slow", ["session.stopped"])
                register(client, b, hook + "/b", ["session.stopped"])
                spec = workdir / "a.json"
                spec.write_text(
                    json.dumps(
                        {
                            "url": server.url,
                            "session_id": a.session_id,
                            "key": a.key,
                            "webhook_id": webhook_a,
                            "begin": begin.isoformat(),
                            "end": end.isoformat(),
                            "events": args.events,
                        }
                    )
                )
            print(f"tenant A: {args.events:,} events; warming up", flush=True)
            phase(server, b, arrivals, min(args.duration, 3.0), None)  # not measured
            print(f"measuring {args.rounds} rounds", flush=True)
            status: dict[str, list[float]] = {"quiet": [], "noisy": []}
            hooks: dict[str, list[float]] = {"quiet": [], "noisy": []}
            a_answers: Counter[str] = Counter()
            failures = 0
            for n in range(args.rounds):
                for mode in ("quiet", "noisy") if n % 2 == 0 else ("noisy", "quiet"):
                    noisy = None
                    if mode == "noisy":
                        out = workdir / f"a-{n}.json"
                        noisy = Role(
                            f"tenant-a-{n}",
                            [__file__, "--hammer", str(spec), str(args.duration), str(out)],
                            dict(os.environ),
                            workdir,
                        )
                    reads, delivered, failed = phase(server, b, arrivals, args.duration, noisy)
                    if noisy is not None:
                        a_answers.update(json.loads(out.read_text()) if out.exists() else {})
                    status[mode] += reads
                    hooks[mode] += delivered
                    failures += failed
                    print(
                        f"round {n + 1} {mode}: status p99 {percentile(reads, 0.99):.2f} ms "
                        f"({len(reads)}), webhook p99 {percentile(delivered, 0.99):.0f} ms "
                        f"({len(delivered)})",
                        flush=True,
                    )
            problems = server.problems()
        finally:
            server.stop()
            receiver.stop()
    return report(status, hooks, a_answers, failures, problems, args)


def report(  # noqa: PLR0917 - the figures of one run
    status: dict[str, list[float]],
    hooks: dict[str, list[float]],
    a_answers: Counter[str],
    failures: int,
    problems: Counter[str],
    args: argparse.Namespace,
) -> dict[str, Any]:
    figures: dict[str, Any] = {}
    for name, samples in (("status", status), ("webhook", hooks)):
        figures[name] = {
            mode: {
                "p50_ms": percentile(samples[mode], 0.5),
                "p99_ms": percentile(samples[mode], 0.99),
                "count": len(samples[mode]),
            }
            for mode in ("quiet", "noisy")
        }
    s, w = figures["status"], figures["webhook"]
    status_ratio = ratio(s["noisy"]["p99_ms"], s["quiet"]["p99_ms"])
    webhook_ratio = ratio(w["noisy"]["p99_ms"], w["quiet"]["p99_ms"])
    status_met = s["noisy"]["p99_ms"] < STATUS_P99_GOAL_MS
    webhook_met = webhook_ratio <= WEBHOOK_RATIO_GOAL
    print(f"\ntenant A's answers (noisy phases): {dict(sorted(a_answers.items()))}")
    served = sum(v for k, v in a_answers.items() if k.endswith((" 200", " 202")))
    refused = sum(v for k, v in a_answers.items() if k.endswith((" 429", " 409")))
    noisy_seconds = args.rounds * args.duration
    print(
        f"tenant A: {served:,} expensive requests served and {refused:,} refused (429/409) in "
        f"{args.rounds} noisy phases: {served / noisy_seconds:.0f} and "
        f"{refused / noisy_seconds:.0f} a second"
    )
    print(
        f"(tenant A's load generator ran at nice {A_NICENESS}, as remote clients would not "
        "take the server's cores; tenant B at the normal priority)"
    )
    print(f"\ntenant B, with A quiet and with A noisy ({CONNECTIONS} connections):")
    print_table(
        ["measure", "quiet p50", "quiet p99", "noisy p50", "noisy p99", "p99 ratio", "goal"],
        [
            [
                "status read (ms)",
                f"{s['quiet']['p50_ms']:.2f}",
                f"{s['quiet']['p99_ms']:.2f}",
                f"{s['noisy']['p50_ms']:.2f}",
                f"{s['noisy']['p99_ms']:.2f}",
                f"{status_ratio:.2f}",
                f"noisy p99 < {STATUS_P99_GOAL_MS:.0f} ms: {verdict(status_met)}",
            ],
            [
                "webhook delivery (ms)",
                f"{w['quiet']['p50_ms']:.0f}",
                f"{w['quiet']['p99_ms']:.0f}",
                f"{w['noisy']['p50_ms']:.0f}",
                f"{w['noisy']['p99_ms']:.0f}",
                f"{webhook_ratio:.2f}",
                f"ratio ≤ {WEBHOOK_RATIO_GOAL:.0f}: {verdict(webhook_met)}",
            ],
        ],
        align="lrrrrrl",
    )
    if failures:
        print(f"INVALID: {failures} of tenant B's requests failed")
    for line, count in problems.most_common(5):
        print(f"server log: {count} x {line}")
    valid = failures == 0 and all(v["count"] for v in (*s.values(), *w.values()))
    return {
        "valid": valid,
        "status": s,
        "webhook": w,
        "status_ratio": status_ratio,
        "webhook_ratio": webhook_ratio,
        "status_met": status_met,
        "webhook_met": webhook_met,
        "a_answers": dict(a_answers),
        "a_served_per_s": served / noisy_seconds,
        "a_refused_per_s": refused / noisy_seconds,
        "connections": CONNECTIONS,
        "a_niceness": A_NICENESS,
        "events": args.events,
    }


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--receiver"]:
        return serve_receiver(argv[1], argv[2])
    if argv[:1] == ["--hammer"]:
        return asyncio.run(hammer(argv[1], float(argv[2]), argv[3]))
    parser = bench_parser(__doc__)
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per phase")
    parser.add_argument("--rounds", type=int, default=3, help="noisy phases (and quiet ones)")
    parser.add_argument("--events", type=int, default=3000, help="events of tenant A")
    return run_bench(bench, parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
