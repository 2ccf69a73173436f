"""10,000 simulated sessions on one node: two gateway workers, one projector, one API process,
one PostgreSQL (a fresh database).

This process creates the sessions through `SessionsApplication` (group-committed threads),
waits until the two workers hold them all (``sessiond_leases``) and each shows a QR code,
scans them all through ``sessiond_gateway_requests`` (as the API's simulator routes do) and
waits until the status view shows them all connected. Then it prints:

- **memory per idle session per worker**: each worker's RSS after ``gc.collect()`` with its
  sessions, less its RSS with none, divided by the sessions it holds;
- **dashboard list**: ``GET /dashboard/`` (operator's cookie) one request at a time for
  `--duration` seconds with every session in the views: p50 and p99 (goal p99 < 100 ms);
- **reconnect storm**: every session's link drops at once (one ``drop`` request each, inserted
  in one transaction); seconds until the status view shows every one connected again with
  exactly Disconnected, ReconnectAttempted, Connected recorded (goal < 30 s); meanwhile
  ``GET /sessions/{id}/status`` with the session's key, one request at a time on random
  sessions: p99 during the storm (goal < 20 ms), next to p99 of the same reads before it
  (the baseline, same run). After each status read the same client reads a bare ASGI app
  (`bare_asgi.py`, granian, one worker) in a process of its own: its p99 is what this
  machine gives any process at that moment (the floor), whatever sessiond does;
- **start-up**: both workers stopped (SIGTERM, together), two new ones started; seconds from
  their start until every session is connected again (each worker restores half: 5,000 of
  10,000; goal < 60 s). Claims are staggered: `SESSIOND_RESTORE_BATCH` per worker tick.

The reconnect backoff is small (0.5 s, cap 1 s) so that the storm measures the system rather
than the policy's wait; QR codes last 600 s so that none expires during the run.

    .venv/bin/python bench/scale_10k.py [--sessions 10000] [--duration 5] [--storms 1]
        [--skip dashboard,startup]

``--storms N`` runs N storms one after another (medians printed, each kept); ``--skip``
leaves parts out (the storm alone: ``--skip dashboard,startup``).

On the 2-core development machine the full run takes several minutes; ``--sessions 1000`` is
what ``bench/run_all.py`` runs.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import random
import re
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from benchutil import (
    Role,
    bench_parser,
    fresh_database,
    print_table,
    run_bench,
    stopping,
    verdict,
    wait_for,
)
from dashboard_list import sign_in
from gateway_storm import (
    WORKER_BOOT,
    Database,
    Memory,
    check_events,
    connected_versions,
    read_memory,
    scan_all,
)
from gateway_storm import Worker as _Worker
from gateway_storm import (
    settings_env as storm_env,
)
from status_read import free_port

from application.sessions import SessionsApplication
from domain.values import ADMIN_ACTOR, session_uuid
from infra.bootstrap import Container
from infra.settings import Settings

CREATE_THREADS = 8
RESTORE_BATCH = 250  # sessions a worker claims per tick (1 s): staggered restarts
GOAL_STORM_S = 30.0
GOAL_STATUS_P99_MS = 20.0
GOAL_DASHBOARD_P99_MS = 100.0
GOAL_STARTUP_S = 60.0


class Worker(_Worker):
    """A ``sessiond worker`` answering SIGUSR1/2 (gc, malloc_trim) with its own name."""

    def __init__(self, name: str, env: dict[str, str], workdir: Path) -> None:
        self.marker = workdir / f"{name}-signal.txt"
        env = {**env, "SESSIOND_BENCH_MARKER": str(self.marker)}
        # Its id is in its log at INFO ("gateway worker … is up"): nothing per session is.
        env = {**env, "SESSIOND_LOG_LEVEL": "info"}
        Role.__init__(self, name, ["-c", WORKER_BOOT], env, workdir)

    def worker_id(self) -> str:
        found = re.findall(r"gateway worker ([0-9a-f]{32}) is up", self.log_path.read_text())
        return str(found[-1]) if found else ""


def tree_cpu(role: Role) -> float:
    """CPU seconds used so far by the role's process and its children (granian's workers)."""
    total = 0.0
    tick = os.sysconf("SC_CLK_TCK")
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            text = (entry / "stat").read_text()
        except OSError:
            continue
        fields = text[text.rindex(")") + 2 :].split()
        if int(entry.name) == role.pid or int(fields[1]) == role.pid:
            total += (int(fields[11]) + int(fields[12])) / tick
    return total


def percentile(values: Sequence[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


def _sample(  # noqa: PLR0917 - a process target, called with positional arguments
    base: str,
    targets: list[tuple[str, dict[str, str]]],
    control: str | None,
    ready: Any,
    stop: Any,
    results: Any,
) -> None:
    """One HTTP client reading one URL after another until `stop` is set (in its own
    process, so that nothing of the benchmark's own work delays it); with a `control` URL,
    each read is followed by one of it (timed apart)."""
    latencies: list[float] = []
    controls: list[float] = []
    failures = 0
    rng = random.Random(7)
    with httpx.Client(base_url=base, timeout=30) as client:
        ready.set()
        while not stop.is_set():
            path, headers = rng.choice(targets)
            started = time.perf_counter()
            response = client.get(path, headers=headers)
            elapsed = (time.perf_counter() - started) * 1000
            if response.status_code == 200:
                latencies.append(elapsed)
            else:
                failures += 1
            if control is not None:
                started = time.perf_counter()
                response = client.get(control)
                elapsed = (time.perf_counter() - started) * 1000
                if response.status_code == 200:
                    controls.append(elapsed)
                else:
                    failures += 1
    results.put((latencies, controls, failures))


class Sampler:
    """Latencies (ms) of one client reading the targets one after another, in a child process
    (and, with `control`, a bare server's after each)."""

    def __init__(
        self, base: str, targets: list[tuple[str, dict[str, str]]], control: str | None = None
    ) -> None:
        self.base = base
        self.targets = targets
        self.control = control
        self.latencies: list[float] = []
        self.controls: list[float] = []
        self.failures = 0
        self._context = multiprocessing.get_context("spawn")
        self._ready = self._context.Event()
        self._stop = self._context.Event()
        self._results = self._context.Queue()
        self._process: Any = None

    def run_for(self, seconds: float) -> None:
        self.start()
        time.sleep(seconds)
        self.stop()

    def start(self) -> None:
        self._stop.clear()
        self._ready.clear()
        self._process = self._context.Process(
            target=_sample,
            args=(self.base, self.targets, self.control, self._ready, self._stop, self._results),
        )
        self._process.start()
        # Its start-up (imports) is not part of what is measured, however long it takes.
        if not self._ready.wait(120):
            raise RuntimeError("the sampling client did not start in 120 s")

    def stop(self) -> None:
        self._stop.set()
        self.latencies, self.controls, self.failures = self._results.get(timeout=60)
        self._process.join(10)

    def summary(self) -> dict[str, float]:
        found = {
            "requests": len(self.latencies),
            "failures": self.failures,
            "p50_ms": statistics.median(self.latencies) if self.latencies else float("nan"),
            "p99_ms": percentile(self.latencies, 99),
        }
        if self.control is not None:
            found["control_p50_ms"] = (
                statistics.median(self.controls) if self.controls else float("nan")
            )
            found["control_p99_ms"] = percentile(self.controls, 99)
        return found


def bare_server(port: int) -> list[str]:
    """The arguments of granian serving `bare_asgi.app` (one worker, like the API)."""
    return [
        "-m",
        "granian",
        "--interface",
        "asgi",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--working-dir",
        str(Path(__file__).resolve().parent),
        "--no-access-log",
        "bare_asgi:app",
    ]


def settings_env(url: str, workdir: Path) -> dict[str, str]:
    """The storm's settings, but for a batch that does not claim 10,000 sessions at once and
    a longer write wait (the views of 10,000 sessions lag more under a storm)."""
    return {
        **storm_env(url, workdir, RESTORE_BATCH),
        "SESSIOND_WRITE_WAIT_TIMEOUT": "30",
    }


def create_sessions(app: SessionsApplication, count: int) -> list[tuple[str, str]]:
    """`count` sessions: (public id, first key)."""
    started = time.monotonic()

    def create(i: int) -> tuple[str, str]:
        created = app.create_session(f"scale-{i}", {}, None, ADMIN_ACTOR)
        return created.session_id, created.first_key.key

    with ThreadPoolExecutor(CREATE_THREADS, thread_name_prefix="create") as pool:
        found = list(pool.map(create, range(count)))
    seconds = time.monotonic() - started
    print(f"  created {count:,} sessions in {seconds:.1f} s ({count / seconds:,.0f}/s)")
    return found


def held_by(db: Database) -> dict[str, int]:
    rows = db.conn.execute("SELECT owner, count(*) FROM sessiond_leases GROUP BY owner").fetchall()
    return {r[0]: int(r[1]) for r in rows}


def connect_all(db: Database, roles: Sequence[Role], session_ids: list[str], n: int) -> None:
    def held_with_qr() -> tuple[bool, str]:
        leases = db.leases()
        _, qr, _, connected = db.counts()
        return leases == n and qr + connected == n, f"{leases} leases, {qr} QR codes"

    seconds = wait_for("leases and QR codes", held_with_qr, roles, 900, 0.5)
    print(f"  the workers hold all {n:,} ({held_by(db)}), QR codes shown: {seconds:.1f} s")
    seconds = scan_all(db, roles, session_ids, n, timeout=900, poll=0.5)
    print(f"  scanned, all {n:,} connected: {seconds:.1f} s", flush=True)


def storm(
    app: SessionsApplication,
    db: Database,
    session_ids: list[str],
    roles: Sequence[Role],
    sampler: Sampler,
) -> dict[str, Any]:
    before = connected_versions(db, session_ids)
    start_position = app.recorder.max_notification_id() or 0
    watch = db.watch(start_position)
    n = len(session_ids)
    cpu = {role.name: tree_cpu(role) for role in roles}
    sampler.start()
    started = time.monotonic()
    ids = db.request([session_uuid(s) for s in session_ids], "drop")

    def back() -> tuple[bool, str]:
        changed, connected = watch.poll()
        done = connected == n and db.answered(ids) == n
        return done, f"{changed} changed, {connected} connected again"

    wait_for("storm", back, roles, 600, 0.05)
    seconds = time.monotonic() - started
    sampler.stop()
    used = {role.name: round(tree_cpu(role) - cpu[role.name], 1) for role in roles}
    problems, _ = check_events(app, start_position, before)
    return {
        "seconds": seconds,
        "cpu_s": used,
        "errors": len(db.errors(ids)),
        "problems": problems[:5],
        "problem_count": len(problems),
        "status": sampler.summary(),
    }


def restart_workers(
    db: Database, workers: list[Worker], env: dict[str, str], workdir: Path, n: int
) -> tuple[dict[str, Any], list[Worker]]:
    """Stop both workers together, start two new ones: seconds until all connected again."""
    for worker in workers:
        os.killpg(worker.pid, signal.SIGTERM)
    for worker in workers:
        worker.stop()
    start_position = db.scalar("SELECT max(position) FROM session_status")
    watch = db.watch(start_position)
    fresh = [Worker(f"worker-{i}-restarted", env, workdir) for i in (1, 2)]

    def restored() -> tuple[bool, str]:
        changed, connected = watch.poll()
        return connected == n, f"{changed} changed, {connected} connected again, {held_by(db)}"

    seconds = wait_for("start-up", restored, fresh, 900, 0.25)
    shares = sorted(held_by(db).values())
    print(f"  two new workers: all {n:,} connected again in {seconds:.1f} s (held: {shares})")
    return {"seconds": seconds, "held": shares}, fresh


def bench(args: argparse.Namespace) -> dict[str, Any]:
    n = args.sessions
    with fresh_database() as url, tempfile.TemporaryDirectory(prefix="sessiond-bench-") as tmp:
        workdir = Path(tmp)
        env = settings_env(url, workdir)
        role_env = {**os.environ, **env}
        container = Container(Settings.from_env(env), url, frozenset())  # tables only
        db = Database(url)
        roles: list[Role] = []
        with stopping(roles, container.close, db.close):
            port = free_port()
            api = Role("api", ["-m", "infra.cli", "api", "--port", str(port)], role_env, workdir)
            projector = Role("projector", ["-m", "infra.cli", "projector"], role_env, workdir)
            workers = [Worker(f"worker-{i}", role_env, workdir) for i in (1, 2)]
            bare_port = free_port()
            bare = Role("bare", bare_server(bare_port), role_env, workdir)
            roles += [api, projector, *workers, bare]
            base = f"http://127.0.0.1:{port}"
            control = f"http://127.0.0.1:{bare_port}/"

            def up() -> tuple[bool, str]:
                try:
                    ready = httpx.get(base + "/health/ready", timeout=2).status_code == 200
                except httpx.HTTPError:
                    ready = False
                live = db.scalar(
                    "SELECT count(*) FROM pg_stat_activity WHERE application_name "
                    "~ '^sessiond-worker:[0-9a-f]{32}$'"  # identities, not the pools
                )
                return ready and live == 2, f"api ready: {ready}, workers: {live}"

            wait_for("the processes", up, roles, 120)
            time.sleep(2.0)
            empty = {w.name: read_memory(w) for w in workers}

            print(f"\nset-up: {n:,} sessions")
            created = create_sessions(container.app, n)
            session_ids = [s for s, _ in created]
            connect_all(db, roles, session_ids, n)
            time.sleep(1.0)
            cpu = {role.name: tree_cpu(role) for role in roles}
            time.sleep(args.duration)
            idle_cpu = {
                role.name: round((tree_cpu(role) - cpu[role.name]) / args.duration, 3)
                for role in roles
            }
            print(f"  idle: share of a core used by each role: {idle_cpu}")
            loaded = {w.name: read_memory(w) for w in workers}
            memory = memory_rows(db, workers, empty, loaded)

            dashboard_figures: dict[str, float] | None = None
            if "dashboard" not in args.skip:
                with httpx.Client(base_url=base, timeout=30) as client:
                    cookie = sign_in(client)
                dashboard = Sampler(base, [("/dashboard/", {"Cookie": cookie})])
                dashboard.run_for(args.duration)
                dashboard_figures = dashboard.summary()
                print(f"\ndashboard list, {n:,} sessions: {describe(dashboard_figures)}")

            targets = [
                (f"/sessions/{sid}/status", {"x-api-key": key})
                for sid, key in random.Random(1).sample(created, min(500, n))
            ]
            quiet = Sampler(base, targets, control)
            quiet.run_for(args.duration)
            quiet_figures = quiet.summary()
            print(f"GET /status, quiet: {describe(quiet_figures)}")

            storms = []
            for round_ in range(1, args.storms + 1):
                print(f"\nstorm {round_}: all {n:,} links drop at once ({load_average()})")
                sampler = Sampler(base, targets, control)
                stormed = storm(container.app, db, session_ids, roles, sampler)
                print(
                    f"  all {n:,} recorded and visible connected again: "
                    f"{stormed['seconds']:.1f} s; errors {stormed['errors']}, "
                    f"event problems {stormed['problem_count']}"
                    f"\n  GET /status during the storm: {describe(stormed['status'])}"
                    f"\n  CPU seconds used meanwhile: {stormed['cpu_s']}",
                    flush=True,
                )
                storms.append(stormed)
                time.sleep(args.duration if round_ < args.storms else 0)
            stormed = median_storm(storms)

            started: dict[str, Any] | None = None
            if "startup" not in args.skip:
                print(f"\nstart-up: both workers stop, two new ones restore {n:,} sessions")
                started, fresh = restart_workers(db, workers, role_env, workdir, n)
                roles += fresh
            problems = {role.name: sum(role.problems().values()) for role in roles}
            for role in roles:
                for message, count in role.problems().most_common(3):
                    print(f"  {role.name} log: {count} times: {message}")
    result = report(n, memory, dashboard_figures, quiet_figures, stormed, started, problems)
    return {**result, "idle_cpu": idle_cpu}


def memory_rows(
    db: Database, workers: list[Worker], empty: dict[str, Memory], loaded: dict[str, Memory]
) -> list[dict[str, Any]]:
    held = held_by(db)
    rows = []
    for worker in workers:
        count = held.get(worker.worker_id(), 0)
        grown = loaded[worker.name].gc_kb - empty[worker.name].gc_kb
        rows.append(
            {
                "worker": worker.name,
                "sessions": count,
                "rss_empty_mb": empty[worker.name].gc_kb / 1024,
                "rss_loaded_mb": loaded[worker.name].gc_kb / 1024,
                "kb_per_session": grown / count if count else float("nan"),
            }
        )
        print(
            f"  {worker.name}: {count:,} sessions, RSS after gc {rows[-1]['rss_empty_mb']:.1f} MB "
            f"→ {rows[-1]['rss_loaded_mb']:.1f} MB: {rows[-1]['kb_per_session']:.1f} KB per "
            "idle connected session"
        )
    return rows


def describe(figures: dict[str, float]) -> str:
    text = (
        f"{figures['requests']:,.0f} requests, p50 {figures['p50_ms']:.1f} ms, "
        f"p99 {figures['p99_ms']:.1f} ms, failures {figures['failures']:.0f}"
    )
    if "control_p99_ms" in figures:
        text += (
            f"; a bare server meanwhile: p50 {figures['control_p50_ms']:.1f} ms, "
            f"p99 {figures['control_p99_ms']:.1f} ms"
        )
    return text


def report(  # noqa: PLR0917 - one call, in order
    n: int,
    memory: list[dict[str, Any]],
    dashboard: dict[str, float] | None,
    quiet: dict[str, float],
    stormed: dict[str, Any],
    started: dict[str, Any] | None,
    problems: dict[str, int],
) -> dict[str, Any]:
    """The summary table; a part skipped (`--skip`) is left out, and so is its goal."""
    status = stormed["status"]
    goals = {
        "storm_met": stormed["seconds"] < GOAL_STORM_S,
        "status_p99_met": status["p99_ms"] < GOAL_STATUS_P99_MS,
    }
    if dashboard is not None:
        goals["dashboard_p99_met"] = dashboard["p99_ms"] < GOAL_DASHBOARD_P99_MS
    if started is not None:
        goals["startup_met"] = started["seconds"] < GOAL_STARTUP_S
    valid = (
        stormed["errors"] == 0
        and stormed["problem_count"] == 0
        and status["failures"] == 0
        and quiet["failures"] == 0
        and (dashboard is None or dashboard["failures"] == 0)
    )
    rows = [
        [
            f"memory per idle session, {m['worker']} ({m['sessions']:,})",
            f"{m['rss_empty_mb']:.1f} MB at 0",
            f"{m['kb_per_session']:.1f} KB",
            "-",
            "-",
        ]
        for m in memory
    ]
    storms = stormed["rounds"]
    each = ""
    if storms["seconds"]:
        each = f" (each: {', '.join(f'{r:.1f}' for r in storms['seconds'])})"
    rows += [
        [
            f"reconnect storm, {n:,} sessions visible connected (s){each}",
            "-",
            f"{stormed['seconds']:.1f}",
            "< 30 s",
            verdict(goals["storm_met"]),
        ],
        [
            "GET /status p99 during the storm vs quiet (ms)"
            + (f" (each: {', '.join(f'{r:.1f}' for r in storms['p99_ms'])})" if each else ""),
            f"{quiet['p99_ms']:.1f}",
            f"{status['p99_ms']:.1f}",
            "< 20 ms",
            verdict(goals["status_p99_met"]),
        ],
        [
            "a bare server's p99 meanwhile, same client (the machine's floor) (ms)",
            f"{quiet['control_p99_ms']:.1f}",
            f"{status['control_p99_ms']:.1f}",
            "-",
            "-",
        ],
    ]
    if dashboard is not None:
        rows.append(
            [
                f"dashboard list p99, {n:,} sessions (ms)",
                "-",
                f"{dashboard['p99_ms']:.1f}",
                "< 100 ms",
                verdict(goals["dashboard_p99_met"]),
            ]
        )
    if started is not None:
        rows.append(
            [
                f"start-up, 2 workers restoring {n:,} ({started['held']}) (s)",
                "-",
                f"{started['seconds']:.1f}",
                "< 60 s",
                verdict(goals["startup_met"]),
            ]
        )
    print(f"\nSummary ({datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} cores)")
    print_table(["figure", "baseline", "subject", "goal", "verdict"], rows, align="lrrll")
    print(f"warnings and errors in the logs: {problems}; valid: {valid}")
    return {
        "sessions": n,
        "memory": memory,
        "dashboard": dashboard,
        "status_quiet": quiet,
        "storm": stormed,
        "startup": started,
        "log_problems": problems,
        "valid": valid,
        **goals,
    }


def median_storm(storms: list[dict[str, Any]]) -> dict[str, Any]:
    """Several storms as one: the median time and the median p99 of the reads (each kept in
    `rounds`); errors and event problems of all of them."""
    seconds = [s["seconds"] for s in storms]
    p99s = [s["status"]["p99_ms"] for s in storms]
    return {
        "seconds": statistics.median(seconds),
        "cpu_s": storms[-1]["cpu_s"],
        "errors": sum(s["errors"] for s in storms),
        "problems": [p for s in storms for p in s["problems"]][:5],
        "problem_count": sum(s["problem_count"] for s in storms),
        "status": {
            "requests": sum(s["status"]["requests"] for s in storms),
            "failures": sum(s["status"]["failures"] for s in storms),
            "p50_ms": statistics.median(s["status"]["p50_ms"] for s in storms),
            "p99_ms": statistics.median(p99s),
            "control_p50_ms": statistics.median(s["status"]["control_p50_ms"] for s in storms),
            "control_p99_ms": statistics.median(s["status"]["control_p99_ms"] for s in storms),
        },
        "rounds": {"seconds": seconds if len(storms) > 1 else [], "p99_ms": p99s},
    }


def load_average() -> str:
    return "load average " + " ".join(Path("/proc/loadavg").read_text().split()[:3])


def parts(text: str) -> set[str]:
    found = set(text.split(",")) - {""}
    unknown = found - {"dashboard", "startup"}
    if unknown:
        raise argparse.ArgumentTypeError(f"no such part: {', '.join(sorted(unknown))}")
    return found


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser(__doc__)
    parser.add_argument("--sessions", type=int, default=10_000)
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per latency read")
    parser.add_argument("--rounds", type=int, default=1, help="accepted for run_all; one round")
    parser.add_argument(
        "--storms", type=int, default=1, help="storms one after another (medians printed)"
    )
    parser.add_argument(
        "--skip",
        type=parts,
        default=set(),
        help="parts left out, comma-separated: dashboard, startup",
    )
    return run_bench(bench, parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
