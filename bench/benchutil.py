"""Helpers shared by the benchmarks: a fresh database per run, medians, a result file.

Benchmarks print figures; they are never timed tests. This machine is noisy, so every figure
is reported next to a baseline measured in the same run (interleaved rounds, median).
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
UUID_PATTERN = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
TIME_PATTERN = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d")


def base_database_url() -> str:
    """SESSIOND_BENCH_DATABASE_URL when set, else the local PostgreSQL with trust auth."""
    url = os.environ.get("SESSIOND_BENCH_DATABASE_URL", "").strip() or DEFAULT_DATABASE_URL
    host = str(conninfo_to_dict(url).get("host") or "")
    if host and host not in LOCAL_HOSTS and not host.startswith("/"):
        raise SystemExit(f"bench: the database must be on this machine, not {host!r}")
    return url


@contextmanager
def fresh_database(prefix: str = "sessiond_bench_") -> Iterator[str]:
    """Create a database with sessiond's schema (its migrations applied, as at start-up) for
    one benchmark run; drop it (forcefully) at the end."""
    from infra.postgres.schema import migrate  # noqa: PLC0415

    base = base_database_url()
    name = prefix + uuid.uuid4().hex[:12]
    with psycopg.connect(base, autocommit=True, connect_timeout=10) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    print(f"database: created {name}", flush=True)
    try:
        url = make_conninfo(base, dbname=name)
        migrate(url)
        yield url
    finally:
        try:
            with psycopg.connect(base, autocommit=True, connect_timeout=10) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            print(f"database: dropped {name}", flush=True)
        except psycopg.Error as error:
            print(f"database: could not drop {name}: {error}", file=sys.stderr, flush=True)


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def ratio(subject: float, baseline: float) -> float:
    return subject / baseline if baseline else float("nan")


def verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def write_result(path: str | None, result: dict[str, Any]) -> None:
    """Write the machine-readable result for `run_all.py`, when it asked for one."""
    if path:
        Path(path).write_text(json.dumps(result, indent=2, sort_keys=True))


def print_table(
    headers: Sequence[str], rows: Sequence[Sequence[str]], align: str | None = None
) -> None:
    """Print a plain table; `align` has one letter per column, ``l`` or ``r`` (default lr…r)."""
    align = align or "l" + "r" * (len(headers) - 1)
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=True)]

    def line(cells: Sequence[str]) -> str:
        padded = [
            cell.ljust(w) if a == "l" else cell.rjust(w)
            for cell, w, a in zip(cells, widths, align, strict=True)
        ]
        return "  ".join(padded).rstrip()

    print(line(headers))
    print(line(["-" * w for w in widths]))
    for row in rows:
        print(line(row))


def _raise_exit(signum: int, _frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def exit_on_termination() -> None:
    """SIGTERM and SIGHUP raise SystemExit, so that `finally` blocks and atexit hooks stop
    the processes and drop the databases a benchmark started."""
    for number in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(number, _raise_exit)


def bench_parser(
    doc: str | None, *, rounds: int | None = None, duration: float | None = None
) -> argparse.ArgumentParser:
    """The command line of a benchmark: described by its module's first paragraph, with the
    ``--json-out`` file `run_bench` writes the result to (`run_all.py` passes it); and, when
    their defaults are given, ``--rounds`` and ``--duration`` (seconds per round)."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0] if doc else None)
    parser.add_argument("--json-out", help="write the result here (used by run_all.py)")
    if duration is not None:
        parser.add_argument("--duration", type=float, default=duration, help="seconds per round")
    if rounds is not None:
        parser.add_argument("--rounds", type=int, default=rounds)
    return parser


def run_bench(
    bench: Callable[[argparse.Namespace], dict[str, Any]], args: argparse.Namespace
) -> int:
    """Run `bench`, write its result for `run_all.py`; the exit code says whether it was valid."""
    exit_on_termination()
    result = bench(args)
    write_result(args.json_out, result)
    return 0 if result["valid"] else 1


def machine_busy_seconds() -> float:
    """CPU time used on the machine so far, every core (from /proc/stat: not idle, not iowait)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


class Role:
    """A process of the benchmark (a ``sessiond`` role, a receiver) in its own process group,
    its output in ``<workdir>/<name>.log``; `stop` ends the group (also at exit)."""

    def __init__(
        self,
        name: str,
        args: list[str],
        env: dict[str, str],
        workdir: Path,
        *,
        python: bool = True,
    ) -> None:
        self.name = name
        self.log_path = workdir / f"{name}.log"
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(  # our own CLI and scripts, fixed arguments
            [sys.executable, *args] if python else args,
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.paused = False
        atexit.register(self.stop)

    @property
    def pid(self) -> int:
        return self.process.pid

    def check(self) -> None:
        if self.process.poll() is not None:
            raise RuntimeError(f"{self.name} exited with {self.process.returncode}:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-5000:]

    def problems(self) -> Counter[str]:
        """The log's WARNING, ERROR and traceback lines, counted by message (ids and times
        taken out)."""
        text = self.log_path.read_text(errors="replace")
        keys = ("WARNING", "ERROR", "CRITICAL", "Traceback")
        found: Counter[str] = Counter()
        for line in text.splitlines():
            if any(k in line for k in keys):
                message = UUID_PATTERN.sub("<id>", line.split(" ", 2)[-1])
                found[TIME_PATTERN.sub("<time>", message)[:160]] += 1
        return found

    def cpu_seconds(self) -> float:
        """CPU time (user + system) the process has used so far."""
        text = Path(f"/proc/{self.pid}/stat").read_text()
        fields = text[text.rindex(")") + 2 :].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def pause(self) -> None:
        if not self.paused:
            os.killpg(self.pid, signal.SIGSTOP)
            self.paused = True

    def resume(self) -> None:
        if self.paused:
            os.killpg(self.pid, signal.SIGCONT)
            self.paused = False

    def stop(self) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGCONT)  # a paused group ends too
                os.killpg(self.pid, signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.pid, signal.SIGKILL)
                self.process.wait(5)
        if not self._log.closed:
            self._log.close()


@contextmanager
def stopping(roles: list[Role], *closing: Callable[[], object]) -> Iterator[None]:
    """Run a benchmark's body with its `roles`: if it fails, show the end of each one's log;
    at the end, stop every role (the last started first), then call each of `closing`."""
    try:
        yield
    except BaseException:
        for role in roles:
            print(f"--- the end of the {role.name}'s log ---\n{role.log()}", file=sys.stderr)
        raise
    finally:
        for role in reversed(roles):
            role.stop()
        for close in closing:
            close()


def wait_for(
    what: str,
    check: Callable[[], tuple[bool, str]],
    roles: Iterable[Role],
    timeout: float,
    interval: float = 0.1,
) -> float:
    """Wait until `check` says done; print its progress every 5 s; return the seconds taken.
    Fails as soon as a role's process has exited, or after `timeout` seconds."""
    started = time.monotonic()
    shown = started
    while True:
        done, progress = check()
        now = time.monotonic()
        if done:
            return now - started
        for role in roles:
            role.check()
        if now - started > timeout:
            raise RuntimeError(f"not within {timeout:g} s: {what} ({progress})")
        if now - shown >= 5:
            print(f"  … {what}: {progress} after {now - started:.0f} s", flush=True)
            shown = now
        time.sleep(interval)
