"""Status read vs a bare Litestar ``/ping`` served the same way, in the same run.

One real ``sessiond serve`` process (granian, 1 worker, every role) on 127.0.0.1 and a fresh
database. ``GET /ping`` (no key, no lookup) is the baseline; ``GET /sessions/{id}/status`` with
the session's own key is the subject. Both are loaded at 64 concurrent keep-alive connections
in alternating rounds (ping/status, then status/ping, ...), and the medians are compared.

The load generator is ``wrk`` (installed with apt-get when missing and running as root). Without
it a Python asyncio client is used instead, and the output says so: on 2 cores that client is
likely the bottleneck, so its figures understate the server.

Each status round reads a different session (each with a limit of 100,000 requests a minute),
so no round can run into a session's rate limit; any non-2xx answer is counted and printed.

    .venv/bin/python bench/status_read.py [--duration 5] [--rounds 3] [--connections 64]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx
from benchutil import (
    Role,
    bench_parser,
    fresh_database,
    median,
    print_table,
    ratio,
    run_bench,
    verdict,
)

HOST = "127.0.0.1"
ADMIN_KEY = "bench-admin-key-0123456789abcdef"
RATE_LIMIT = 100_000
TARGET_RATIO = 0.5
TARGET_P99_MS = 10.0
WRK_MARKER = "WRKJSON "
WRK_LUA = """\
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "WRKJSON {\\"requests\\": %.0f, \\"duration_us\\": %.0f, \\"p50_us\\": %.0f, "
    .. "\\"p90_us\\": %.0f, \\"p99_us\\": %.0f, \\"max_us\\": %.0f, \\"mean_us\\": %.1f, "
    .. "\\"status_errors\\": %.0f, \\"connect\\": %.0f, \\"read\\": %.0f, \\"write\\": %.0f, "
    .. "\\"timeout\\": %.0f}\\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max, latency.mean, e.status, e.connect, e.read, e.write,
    e.timeout))
end
"""


# -- the server -----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


@contextmanager
def serving(url: str, workdir: Path) -> Iterator[Server]:
    """A ready ``sessiond serve`` on the database at `url` (announced), stopped at the end."""
    server = Server(url, workdir)
    try:
        server.wait_ready()
        print(f"server: sessiond serve on {server.url} (pid {server.process.pid})", flush=True)
        yield server
    finally:
        server.stop()


class Server(Role):
    """One ``sessiond serve`` process in its own process group; `stop` kills the group."""

    def __init__(self, database_url: str, workdir: Path) -> None:
        self.port = free_port()
        self.url = f"http://{HOST}:{self.port}"
        env = {
            **os.environ,
            "SESSIOND_DATABASE_URL": database_url,
            "SESSIOND_ADMIN_KEY": ADMIN_KEY,
            "SESSIOND_DEFAULT_RATE_LIMIT": str(RATE_LIMIT),
            "SESSIOND_LOG_LEVEL": "warning",
            "SESSIOND_DATA_DIR": str(workdir / "var"),
        }
        args = ["-m", "infra.cli", "serve", "--host", HOST, "--port", str(self.port)]
        super().__init__("sessiond", args, env, workdir)

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"sessiond exited early:\n{self.log()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.url + "/health/ready", timeout=1).status_code == 200:
                    return
            time.sleep(0.1)
        raise RuntimeError(f"sessiond was not ready in {timeout} s:\n{self.log()}")

    def cpu_seconds(self) -> float:
        """CPU time (user + system) used so far by every process of the server's group."""
        ticks = os.sysconf("SC_CLK_TCK")
        total = 0
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                text = stat.read_text()
            except OSError:
                continue
            fields = text[text.rindex(")") + 2 :].split()
            # fields[0] is field 3 (state): pgrp is field 5, utime 14, stime 15.
            if int(fields[2]) == self.process.pid:
                total += int(fields[11]) + int(fields[12])
        return total / ticks

    def stop(self) -> None:
        pid = self.process.pid
        super().stop()
        # Workers left behind by a server that died first.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)


@dataclass(frozen=True)
class BenchSession:
    session_id: str
    key: str


def create_session(client: httpx.Client, name: str) -> BenchSession:
    admin = {"x-api-key": ADMIN_KEY}
    response = client.post("/sessions", json={"name": name}, headers=admin)
    if response.status_code != 201:
        raise RuntimeError(f"POST /sessions: {response.status_code} {response.text}")
    created: dict[str, Any] = response.json()
    session = BenchSession(created["sessionId"], created["apiKey"]["key"])
    response = client.put(
        f"/sessions/{session.session_id}/rate-limit",
        json={"requestsPerMinute": RATE_LIMIT},
        headers=admin,
    )
    if response.status_code != 200:
        raise RuntimeError(f"PUT rate-limit: {response.status_code} {response.text}")
    response = client.get(
        f"/sessions/{session.session_id}/status", headers={"x-api-key": session.key}
    )
    if response.status_code != 200:
        raise RuntimeError(f"GET status: {response.status_code} {response.text}")
    limit = response.headers.get("ratelimit-limit")
    if limit != str(RATE_LIMIT):
        raise RuntimeError(f"GET status: RateLimit-Limit is {limit}, expected {RATE_LIMIT}")
    return session


# -- load generators --------------------------------------------------------------------------


@dataclass(frozen=True)
class Load:
    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    mean_ms: float
    non_2xx: int
    socket_errors: int
    server_cpu_s: float

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    @property
    def cpu_us_per_request(self) -> float:
        return self.server_cpu_s / self.requests * 1e6 if self.requests else float("nan")


class LoadGenerator:
    name = ""

    def run(self, url: str, headers: dict[str, str], seconds: float, connections: int) -> Load:
        raise NotImplementedError


def ensure_wrk(install: bool) -> str | None:
    path = shutil.which("wrk")
    if path or not install:
        return path
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        print("wrk: not on PATH, and cannot install it (not root, or no apt-get)")
        return None
    print("wrk: not on PATH; running `apt-get install -y wrk`", flush=True)
    result = subprocess.run(
        ["apt-get", "install", "-y", "wrk"],
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
    )
    if result.returncode != 0:
        print(f"wrk: apt-get failed ({result.returncode}):\n{result.stderr[-2000:]}")
        return None
    return shutil.which("wrk")


class Wrk(LoadGenerator):
    def __init__(self, path: str, threads: int, workdir: Path, server: Server) -> None:
        self.path = path
        self.threads = threads
        self.script = workdir / "report.lua"
        self.script.write_text(WRK_LUA)
        self.server = server
        self.name = f"wrk ({threads} thread{'s' if threads > 1 else ''})"

    def run(self, url: str, headers: dict[str, str], seconds: float, connections: int) -> Load:
        args = [self.path, "-t", str(self.threads), "-c", str(connections)]
        args += ["-d", f"{seconds:g}s", "--timeout", "5s", "-s", str(self.script)]
        for name, value in headers.items():
            args += ["-H", f"{name}: {value}"]
        args.append(url)
        cpu_before = self.server.cpu_seconds()
        result = subprocess.run(
            args, check=False, capture_output=True, text=True, timeout=seconds + 60
        )
        cpu = self.server.cpu_seconds() - cpu_before
        line = next((ln for ln in result.stdout.splitlines() if ln.startswith(WRK_MARKER)), None)
        if result.returncode != 0 or line is None:
            raise RuntimeError(f"wrk failed ({result.returncode}):\n{result.stdout}{result.stderr}")
        data = json.loads(line[len(WRK_MARKER) :])
        return Load(
            requests=int(data["requests"]),
            seconds=data["duration_us"] / 1e6,
            p50_ms=data["p50_us"] / 1000,
            p99_ms=data["p99_us"] / 1000,
            mean_ms=data["mean_us"] / 1000,
            non_2xx=int(data["status_errors"]),
            socket_errors=sum(int(data[k]) for k in ("connect", "read", "write", "timeout")),
            server_cpu_s=cpu,
        )


class PythonClient(LoadGenerator):
    """Keep-alive HTTP/1.1 over asyncio streams, one task per connection (the fallback)."""

    name = "python asyncio client (FALLBACK, not wrk: the client is likely the bottleneck)"

    def __init__(self, server: Server) -> None:
        self.server = server

    def run(self, url: str, headers: dict[str, str], seconds: float, connections: int) -> Load:
        cpu_before = self.server.cpu_seconds()
        latencies, statuses, errors, elapsed = asyncio.run(
            self._load(url, headers, seconds, connections)
        )
        cpu = self.server.cpu_seconds() - cpu_before
        latencies.sort()
        n = len(latencies)

        def pct(p: float) -> float:
            return latencies[min(n - 1, int(p * n))] * 1000 if n else float("nan")

        return Load(
            requests=n,
            seconds=elapsed,
            p50_ms=pct(0.50),
            p99_ms=pct(0.99),
            mean_ms=sum(latencies) / n * 1000 if n else float("nan"),
            non_2xx=sum(c for s, c in statuses.items() if not 200 <= s < 300),
            socket_errors=errors,
            server_cpu_s=cpu,
        )

    async def _load(
        self, url: str, headers: dict[str, str], seconds: float, connections: int
    ) -> tuple[list[float], Counter[int], int, float]:
        parsed = httpx.URL(url)
        lines = [f"GET {parsed.raw_path.decode()} HTTP/1.1", f"Host: {parsed.host}:{parsed.port}"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        request = ("\r\n".join(lines) + "\r\n\r\n").encode()
        latencies: list[float] = []
        statuses: Counter[int] = Counter()
        errors = [0]
        start = time.perf_counter()
        deadline = start + seconds

        async def connection() -> None:
            try:
                reader, writer = await asyncio.open_connection(parsed.host, parsed.port)
            except OSError:
                errors[0] += 1
                return
            try:
                while time.perf_counter() < deadline:
                    sent = time.perf_counter()
                    writer.write(request)
                    head = await reader.readuntil(b"\r\n\r\n")
                    length = 0
                    for header in head.split(b"\r\n")[1:]:
                        name, _, value = header.partition(b":")
                        if name.strip().lower() == b"content-length":
                            length = int(value)
                    if length:
                        await reader.readexactly(length)
                    latencies.append(time.perf_counter() - sent)
                    statuses[int(head[9:12])] += 1
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
                errors[0] += 1
            finally:
                writer.close()

        await asyncio.gather(*(connection() for _ in range(connections)))
        return latencies, statuses, errors[0], time.perf_counter() - start


# -- the benchmark ----------------------------------------------------------------------------


def describe(label: str, load: Load) -> str:
    return (
        f"{label:<6} {load.rps:>9,.0f} req/s  p50 {load.p50_ms:6.2f} ms  p99 {load.p99_ms:6.2f} ms"
        f"  mean {load.mean_ms:6.2f} ms  server CPU {load.cpu_us_per_request:6.1f} µs/req"
        f"  non-2xx {load.non_2xx}  socket errors {load.socket_errors}"
    )


def summarise(loads: list[Load]) -> dict[str, float]:
    return {
        "rps": median([x.rps for x in loads]),
        "p50_ms": median([x.p50_ms for x in loads]),
        "p99_ms": median([x.p99_ms for x in loads]),
        "mean_ms": median([x.mean_ms for x in loads]),
        "cpu_us_per_request": median([x.cpu_us_per_request for x in loads]),
        "non_2xx": float(sum(x.non_2xx for x in loads)),
        "socket_errors": float(sum(x.socket_errors for x in loads)),
    }


def bench(args: argparse.Namespace) -> dict[str, Any]:
    with fresh_database() as url, tempfile.TemporaryDirectory(prefix="sessiond-bench-") as tmp:
        workdir = Path(tmp)
        with serving(url, workdir) as server:
            with httpx.Client(base_url=server.url, timeout=10) as client:
                sessions = [create_session(client, f"bench-{i}") for i in range(args.rounds + 1)]
            wrk = None if args.python_client else ensure_wrk(install=not args.no_install)
            generator: LoadGenerator = (
                Wrk(wrk, args.wrk_threads, workdir, server) if wrk else PythonClient(server)
            )
            print(f"load generator: {generator.name}; {args.connections} connections")
            print(
                f"{args.rounds} rounds of {args.duration:g} s each, alternating order; "
                f"one fresh session per status round (rate limit {RATE_LIMIT:,}/min)",
                flush=True,
            )
            ping_url = server.url + "/ping"

            def status(session: BenchSession) -> tuple[str, dict[str, str]]:
                path = f"/sessions/{session.session_id}/status"
                return server.url + path, {"x-api-key": session.key}

            if args.warmup > 0:
                generator.run(ping_url, {}, args.warmup, args.connections)
                generator.run(*status(sessions[0]), args.warmup, args.connections)
            pings: list[Load] = []
            statuses: list[Load] = []
            for number in range(1, args.rounds + 1):
                order = ("ping", "status") if number % 2 else ("status", "ping")
                for kind in order:
                    if kind == "ping":
                        load = generator.run(ping_url, {}, args.duration, args.connections)
                        pings.append(load)
                    else:
                        target, headers = status(sessions[number])
                        load = generator.run(target, headers, args.duration, args.connections)
                        statuses.append(load)
                    print(f"round {number}  {describe(kind, load)}", flush=True)
                if server.process.poll() is not None:
                    raise RuntimeError(f"sessiond died during the run:\n{server.log()}")
    return report(args, generator.name, pings, statuses)


def report(
    args: argparse.Namespace, generator: str, pings: list[Load], statuses: list[Load]
) -> dict[str, Any]:
    ping = summarise(pings)
    status = summarise(statuses)
    per_round = [ratio(s.rps, p.rps) for p, s in zip(pings, statuses, strict=True)]
    status_ratio = ratio(status["rps"], ping["rps"])
    valid = status["non_2xx"] == 0 and ping["non_2xx"] == 0
    ratio_ok = status_ratio >= TARGET_RATIO
    p99_ok = status["p99_ms"] < TARGET_P99_MS
    print()
    print(f"Status read vs /ping — medians of {len(pings)} interleaved rounds, {generator}")
    rows = [
        [
            name,
            f"{s['rps']:,.0f}",
            f"{s['p50_ms']:.2f}",
            f"{s['p99_ms']:.2f}",
            f"{s['cpu_us_per_request']:.1f}",
            f"{s['non_2xx']:.0f}",
        ]
        for name, s in (("GET /ping", ping), ("GET /sessions/{id}/status", status))
    ]
    print_table(["endpoint", "req/s", "p50 ms", "p99 ms", "server CPU µs/req", "non-2xx"], rows)
    print(
        f"ratio status/ping (req/s): {status_ratio:.2f}  [per round: "
        + ", ".join(f"{r:.2f}" for r in per_round)
        + f"]  target ≥ {TARGET_RATIO}: {verdict(ratio_ok)}"
    )
    print(f"status p99 {status['p99_ms']:.2f} ms  target < {TARGET_P99_MS:g} ms: {verdict(p99_ok)}")
    print(
        f"note: {args.connections} closed-loop connections ⇒ mean latency ≈ connections / "
        f"throughput (status: {args.connections / status['rps'] * 1000:.1f} ms)"
        if status["rps"]
        else "note: no status responses"
    )
    if not valid:
        print("INVALID RUN: non-2xx answers were counted (see the rounds above)")
    return {
        "benchmark": "status_read",
        "generator": generator,
        "connections": args.connections,
        "rounds": len(pings),
        "duration_s": args.duration,
        "ping": ping,
        "status": status,
        "ratio": status_ratio,
        "ratio_per_round": per_round,
        "rounds_detail": {
            "ping": [{**asdict(x), "rps": x.rps} for x in pings],
            "status": [{**asdict(x), "rps": x.rps} for x in statuses],
        },
        "targets": {"ratio": TARGET_RATIO, "p99_ms": TARGET_P99_MS},
        "ratio_met": ratio_ok,
        "p99_met": p99_ok,
        "valid": valid,
    }


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser(__doc__, rounds=3, duration=5.0)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds, each endpoint")
    parser.add_argument("--wrk-threads", type=int, default=1)
    parser.add_argument("--python-client", action="store_true", help="do not use wrk")
    parser.add_argument("--no-install", action="store_true", help="never apt-get install wrk")
    args = parser.parse_args(argv)
    if not 1 <= args.rounds <= 20 or not 0.5 <= args.duration <= 120:
        parser.error("rounds must be 1..20 and duration 0.5..120 s")
    return run_bench(bench, args)


if __name__ == "__main__":
    sys.exit(main())
