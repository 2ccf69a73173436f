"""Webhook delivery: deliveries per second to a local receiver with 1 and 4 workers, and the
event → delivery latency under a steady load, against the receiver's raw POST rate.

One ``sessiond projector`` process (its webhooks projection enqueues one delivery per event
and endpoint) and four ``sessiond worker`` processes (each runs a webhook dispatcher; simulator
gateway, ``SESSIOND_WEBHOOKS_ALLOW_PRIVATE=true``) run against a fresh database. The receiver is
a small asyncio HTTP/1.1 server in its own process (keep-alive, answers ``200 ok`` at once); it
records every request's ``webhook-id`` and arrival time (``time.time()``) and keeps a sample of
requests, whose signatures are checked here with `standardwebhooks` against the secret
`Webhooks.register` returned. One global endpoint is registered for ``message.received``.

The events are inbound messages (``MessageReceived``, recorded by threads of this process
through `SessionsApplication.record_received`, the path the gateway reports through) on a few
sessions that were created and stopped before the workers started: the workers have no client
to run, so what they do is deliver webhooks, and ``message.received`` is the webhook a busy
service sends most. (Creating sessions instead would make every worker start a simulated
client for each new session, issue QR codes and record more events: other work than delivery.)

- **Burst** (deliveries/s, with 1 and with 4 workers): the workers are paused (``SIGSTOP``),
  ``--events`` messages are recorded and the projector enqueues them all; then 1 (or all 4)
  workers resume (``SIGCONT``; any others stay paused). Measured from the resume until the
  receiver has every delivery: what the dispatchers can push, signing and recording each
  attempt included.
- **Steady load** (latency, with 1 and with 4 workers): messages recorded at a steady offered
  rate (``--rate-1``, ``--rate-4``) for ``--duration`` seconds; for each event, its timestamp in
  the event store to its arrival at the receiver (both this machine's clock): p50 / p99. The
  whole path: the commit, the projector's NOTIFY-driven read, the outbox row and its NOTIFY, the
  claim, the signature, the POST.
- **Baseline** (same run, interleaved rounds): the same receiver blasted by a plain
  ``httpx.AsyncClient`` on the HTTP stack the workers use (httpx-aiohttp's transport, no
  address vetting, 16 requests in flight on keep-alive connections) with ``--events`` POSTs of
  the same size: the ceiling of one Python HTTP client process against this receiver.
  Reported: deliveries/s ÷ raw POSTs/s. (httpx's own transport, httpcore, managed about a
  third of that here, and less with more requests in flight: its pool rescans every
  connection on every request and answer.)

Every round checks that each event arrived exactly once, that the sampled signatures verify,
and that the outbox marked every delivery delivered. CPU use of each process per phase is
printed: on the 2-core development machine everything (PostgreSQL, the projector, four
workers, the receiver and this process) shares two cores.

    .venv/bin/python bench/webhook_delivery.py [--events 5000] [--rounds 1] [--duration 8]
        [--rate-1 300] [--rate-4 600] [--profile]

``--profile`` samples the stacks of every thread of each worker (every 5 ms, a thread of
their own) and prints where their time went.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import httpx
import psycopg
from benchutil import (
    ROOT,
    Role,
    bench_parser,
    fresh_database,
    machine_busy_seconds,
    median,
    print_table,
    ratio,
    run_bench,
    stopping,
    verdict,
)
from httpx_aiohttp import AiohttpTransport
from standardwebhooks.webhooks import Webhook

from application.ports import InboundMessage
from application.sessions import SessionsApplication
from application.webhooks import Webhooks
from domain.values import ADMIN_ACTOR, session_uuid
from infra.bootstrap import Container
from infra.postgres.gateway import WORKER_APP_PREFIX
from infra.settings import Settings, eventsourcing_env

ADMIN_KEY = "bench-admin-key-0123456789abcdef"
WORKERS = 4
THREADS = 8  # recording threads in this process
SESSIONS = 32  # the sessions the messages are recorded on (stopped: no client runs them)
#: The raw baseline's requests in flight (aiohttp's pool costs the same from 1 to 64).
RAW_CONCURRENCY = 16
TARGET_PER_S = 500.0  # with 4 workers
TARGET_P99_MS = 250.0  # with 4 workers, at the offered load
SAMPLE_EVERY = 50  # the receiver keeps every 50th request whole, for the signature check
SENDER = "14155550123@s.whatsapp.net"
CORES = os.cpu_count() or 1

# `sessiond <role>` itself; with SESSIOND_BENCH_PROFILE set, a thread samples every thread's
# stack every 5 ms and writes the counts there at exit.
BOOT = """\
import os, sys, threading, time, collections, json
out = os.environ.get("SESSIOND_BENCH_PROFILE")
if out:
    me = None
    own, total, by_thread = collections.Counter(), collections.Counter(), collections.Counter()
    names = {}
    samples = [0]
    def sample():
        while True:
            time.sleep(0.005)
            samples[0] += 1
            names.update({t.ident: t.name for t in threading.enumerate()})
            for ident, frame in sys._current_frames().items():
                if ident == threading.get_ident():
                    continue
                name = names.get(ident, "?").split("_")[0].rstrip("0123456789-")
                code = frame.f_code
                top = f"{name} {code.co_filename.split('site-packages/')[-1]}:{code.co_name}"
                own[top] += 1
                seen = set()
                while frame is not None:
                    c = frame.f_code
                    key = f"{name} {c.co_filename.split('site-packages/')[-1]}:{c.co_name}"
                    if key not in seen:
                        seen.add(key)
                        total[key] += 1
                    frame = frame.f_back
                by_thread[name] += 1
    threading.Thread(target=sample, daemon=True, name="sampler").start()
    import atexit
    def dump():
        data = {"samples": samples[0], "own": own.most_common(60),
                "total": total.most_common(120), "threads": by_thread.most_common()}
        with open(out, "w") as f:
            json.dump(data, f)
    atexit.register(dump)
from infra.cli.main import main
sys.exit(main(sys.argv[1:]))
"""


# -- the receiver (its own process) -------------------------------------------------------------

OK_ANSWER = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 2\r\n\r\nok"


class Recording:
    """What the receiver keeps: every webhook-id with its arrival, and a sample of requests."""

    def __init__(self) -> None:
        self.arrivals: list[tuple[str, float]] = []
        self.samples: list[dict[str, Any]] = []

    def add(self, headers: dict[str, str], body: bytes, at: float) -> None:
        self.arrivals.append((headers.get("webhook-id", ""), at))
        if len(self.arrivals) % SAMPLE_EVERY == 1:
            self.samples.append({"headers": headers, "body": body.decode("utf-8", "replace")})


class ReceiverProtocol(asyncio.Protocol):
    """HTTP/1.1 with keep-alive, enough for POSTs with a content-length and for the control
    requests (``GET /_count``, ``GET /_dump``, ``POST /_reset``) of the benchmark."""

    def __init__(self, recording: list[Recording]) -> None:
        self.recording = recording
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            lines = bytes(self.buffer[:end]).decode("latin-1").split("\r\n")
            headers = {}
            for line in lines[1:]:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            length = int(headers.get("content-length") or 0)
            if len(self.buffer) < end + 4 + length:
                return
            body = bytes(self.buffer[end + 4 : end + 4 + length])
            del self.buffer[: end + 4 + length]
            self.answer(lines[0].split(" "), headers, body)

    def answer(self, request: list[str], headers: dict[str, str], body: bytes) -> None:
        assert self.transport is not None
        path = request[1] if len(request) > 1 else "/"
        if not path.startswith("/_"):
            self.recording[0].add(headers, body, time.time())
            self.transport.write(OK_ANSWER)
            return
        if path == "/_reset":
            self.recording[0] = Recording()
            content = b"reset"
        elif path == "/_count":
            content = str(len(self.recording[0].arrivals)).encode()
        else:  # /_dump
            recording = self.recording[0]
            content = json.dumps(
                {"arrivals": recording.arrivals, "samples": recording.samples}
            ).encode()
        self.transport.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
            + f"content-length: {len(content)}\r\n\r\n".encode()
            + content
        )


def serve_receiver(port_file: str) -> int:
    async def serve() -> None:
        recording = [Recording()]
        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            lambda: ReceiverProtocol(recording), "127.0.0.1", 0, backlog=1024
        )
        port = server.sockets[0].getsockname()[1]
        part = Path(port_file + ".part")
        part.write_text(str(port))
        part.replace(port_file)
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()
        server.close()

    asyncio.run(serve())
    return 0


# -- the processes ------------------------------------------------------------------------------


@dataclass
class Cpu:
    """CPU seconds over a phase: the workers, the projector, the receiver, this process, and
    the machine as a whole (PostgreSQL and the other engineer's runs are the rest)."""

    workers: float
    projector: float
    receiver: float
    bench: float
    machine: float
    wall: float

    def describe(self) -> str:
        rest = self.machine - self.workers - self.projector - self.receiver - self.bench
        return (
            f"CPU s: workers {self.workers:.1f}, projector {self.projector:.1f}, receiver "
            f"{self.receiver:.1f}, bench {self.bench:.1f}, PostgreSQL and the rest {rest:.1f}; "
            f"machine busy {self.machine:.1f} of {self.wall * CORES:.1f}"
        )


class CpuMeter:
    def __init__(self, workers: Sequence[Role], projector: Role, receiver: Role) -> None:
        self.workers, self.projector, self.receiver = workers, projector, receiver
        self.start = self.read()

    def read(self) -> tuple[float, ...]:
        return (
            sum(w.cpu_seconds() for w in self.workers),
            self.projector.cpu_seconds(),
            self.receiver.cpu_seconds(),
            time.process_time(),
            machine_busy_seconds(),
            time.monotonic(),
        )

    def done(self) -> Cpu:
        end = self.read()
        return Cpu(*(b - a for a, b in zip(self.start, end, strict=True)))


# -- the receiver, from here --------------------------------------------------------------------


class ReceiverClient:
    def __init__(self, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}"
        self.client = httpx.Client(base_url=self.url, timeout=30)

    def reset(self) -> None:
        self.client.post("/_reset").raise_for_status()

    def count(self) -> int:
        return int(self.client.get("/_count").text)

    def dump(self) -> tuple[list[tuple[str, float]], list[dict[str, Any]]]:
        data = self.client.get("/_dump").json()
        return [(a[0], float(a[1])) for a in data["arrivals"]], data["samples"]

    def wait_for(self, count: int, roles: Sequence[Role], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while (got := self.count()) < count:
            for role in roles:
                role.check()
            if time.monotonic() > deadline:
                raise RuntimeError(f"the receiver got {got} of {count} in {timeout:g} s")
            time.sleep(0.02)


def raw_blast(url: str, count: int, body: bytes) -> float:
    """Seconds for `count` POSTs from one plain AsyncClient, RAW_CONCURRENCY in flight."""

    async def blast() -> float:
        limits = httpx.Limits(max_connections=RAW_CONCURRENCY, max_keepalive_connections=64)
        transport = AiohttpTransport(limits=limits, trust_env=False)
        async with httpx.AsyncClient(transport=transport, timeout=30) as client:
            queue = iter(range(count))

            async def one_lane() -> None:
                for n in queue:
                    response = await client.post(
                        url,
                        content=body,
                        headers={
                            "content-type": "application/json",
                            "webhook-id": f"raw_{n}",
                            "webhook-timestamp": str(int(time.time())),
                            "webhook-signature": "v1,"
                            + "A" * 44,  # as long as a real one, not checked
                        },
                    )
                    if response.status_code != 200:
                        raise RuntimeError(f"raw POST answered {response.status_code}")

            started = time.monotonic()
            await asyncio.gather(*(one_lane() for _ in range(RAW_CONCURRENCY)))
            return time.monotonic() - started

    return asyncio.run(blast())


# -- the database -------------------------------------------------------------------------------


class Database:
    def __init__(self, url: str) -> None:
        self.conn = psycopg.connect(url, autocommit=True)

    def close(self) -> None:
        self.conn.close()

    def scalar(self, query: str, params: Sequence[Any] = ()) -> int:
        row = self.conn.execute(query, params).fetchone()
        return int(row[0]) if row and row[0] is not None else 0

    def deliveries(self, status: str, after: int) -> int:
        return self.scalar(
            "SELECT count(*) FROM sessiond_webhook_deliveries WHERE status = %s AND position > %s",
            (status, after),
        )

    def not_delivered(self, after: int) -> list[str]:
        rows = self.conn.execute(
            "SELECT event_id, status, attempts, last_error FROM sessiond_webhook_deliveries "
            "WHERE position > %s AND status <> 'delivered' LIMIT 5",
            (after,),
        ).fetchall()
        return [f"{r[0]} {r[1]} after {r[2]} attempts: {r[3]}" for r in rows]

    def failed_attempts(self, after: int) -> int:
        return self.scalar(
            "SELECT count(*) FROM sessiond_webhook_attempts a JOIN sessiond_webhook_deliveries d "
            "USING (delivery_id) WHERE d.position > %s AND (a.status_code IS NULL "
            "OR a.status_code <> 200)",
            (after,),
        )

    def workers_up(self) -> int:
        return self.scalar(
            "SELECT count(DISTINCT application_name) FROM pg_stat_activity "
            "WHERE application_name LIKE %s",
            (WORKER_APP_PREFIX + "%",),
        )

    def endpoint_known(self) -> bool:
        return bool(self.scalar("SELECT count(*) FROM sessiond_webhook_endpoints"))


def wait_until(what: str, check: Callable[[], bool], roles: Sequence[Role], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        for role in roles:
            role.check()
        if time.monotonic() > deadline:
            raise RuntimeError(f"not within {timeout:g} s: {what}")
        time.sleep(0.02)


# -- recording events ---------------------------------------------------------------------------


class Recorder:
    """Records inbound messages from THREADS threads, each on its own sessions."""

    def __init__(self, app: SessionsApplication, sessions: Sequence[UUID]) -> None:
        self.app = app
        self.sessions = sessions
        self.counter = 0

    def one(self, thread: int, n: int) -> int:
        mine = self.sessions[thread::THREADS]
        message = InboundMessage(
            whatsapp_id=f"3EB0{uuid4().hex[:16].upper()}",
            sender=SENDER,
            chat=SENDER,
            text=f"inbound message number {n}, a few words long like most",
            sent_at=datetime.now(UTC),
        )
        position = self.app.record_received(mine[n % len(mine)], message)
        if position is None:
            raise RuntimeError("a message was not recorded")
        return position

    def burst(self, count: int) -> list[int]:
        """`count` events as fast as THREADS threads record them; their positions."""

        def lane(thread: int) -> list[int]:
            return [self.one(thread, n) for n in range(thread, count, THREADS)]

        with ThreadPoolExecutor(THREADS) as pool:
            return [p for lane_positions in pool.map(lane, range(THREADS)) for p in lane_positions]

    def steady(self, rate: float, seconds: float) -> tuple[list[int], float]:
        """Events at `rate` per second for `seconds` (each thread keeps to its share of a
        fixed schedule; one that falls behind records at once); positions and the rate
        achieved."""
        count = max(1, round(rate * seconds))
        started = time.monotonic()

        def lane(thread: int) -> list[int]:
            positions = []
            for n in range(thread, count, THREADS):
                wait = started + n / rate - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
                positions.append(self.one(thread, n))
            return positions

        with ThreadPoolExecutor(THREADS) as pool:
            positions = [
                p for lane_positions in pool.map(lane, range(THREADS)) for p in lane_positions
            ]
        return positions, count / (time.monotonic() - started)

    def timestamps(self, positions: Sequence[int]) -> dict[int, float]:
        """Each event's own timestamp (from the event store), by position."""
        wanted = set(positions)
        found: dict[int, float] = {}
        start, stop = min(positions), max(positions)
        while start <= stop:
            page = self.app.recorder.select_notifications(start=start, limit=1000, stop=stop)
            if not page:
                break
            for notification in page:
                if notification.id in wanted:
                    event: Any = self.app.mapper.to_domain_event(notification)
                    found[notification.id] = event.timestamp.timestamp()
            start = page[-1].id + 1
        return found


# -- one phase ----------------------------------------------------------------------------------


@dataclass
class Phase:
    kind: str  # raw | burst | steady
    workers: int
    events: int
    seconds: float  # raw and burst: until the last one arrived
    cpu: Cpu
    offered_per_s: float = 0.0  # steady: the rate achieved by the recording threads
    latencies_ms: list[float] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def per_s(self) -> float:
        return self.events / self.seconds if self.seconds else float("nan")

    def percentile(self, q: float, values: list[float] | None = None) -> float:
        values = self.latencies_ms if values is None else values
        if not values:
            return float("nan")
        ordered = sorted(values)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class Bench:
    def __init__(
        self,
        *,
        app: SessionsApplication,
        db: Database,
        receiver: ReceiverClient,
        workers: list[Role],
        roles: list[Role],
        secret: str,
    ) -> None:
        self.app, self.db, self.receiver = app, db, receiver
        self.workers, self.roles, self.secret = workers, roles, secret
        self.sessions: list[UUID] = []
        self.recorder = Recorder(app, self.sessions)

    def meter(self) -> CpuMeter:
        return CpuMeter(self.workers, self.roles[0], self.roles[1])

    def use(self, count: int) -> None:
        """The first `count` workers run, the others are paused."""
        for n, worker in enumerate(self.workers):
            if n < count:
                worker.resume()
            else:
                worker.pause()

    def settle(self, after: int, expected: int) -> None:
        """Wait until the outbox marked `expected` deliveries after `after` delivered."""
        wait_until(
            "every delivery marked delivered",
            lambda: self.db.deliveries("delivered", after) >= expected,
            self.roles,
            60,
        )

    def raw(self, events: int, body: bytes) -> Phase:
        self.receiver.reset()
        meter = self.meter()
        seconds = raw_blast(self.receiver.url + "/raw", events, body)
        cpu = meter.done()
        problems = []
        if (got := self.receiver.count()) != events:
            problems.append(f"raw: the receiver counted {got} of {events}")
        return Phase("raw", 0, events, seconds, cpu, problems=problems)

    def burst(self, workers: int, events: int) -> Phase:
        after = self.app.recorder.max_notification_id() or 0
        self.use(0)
        self.receiver.reset()
        positions = self.recorder.burst(events)
        wait_until(
            "the projector enqueued the burst",
            lambda: self.db.deliveries("pending", after) >= events,
            self.roles,
            120,
        )
        meter = self.meter()
        started = time.time()
        self.use(workers)
        self.receiver.wait_for(events, self.roles, 300)
        arrivals, samples = self.receiver.dump()
        cpu = meter.done()
        last = max(at for _, at in arrivals)
        self.use(WORKERS)
        self.settle(after, events)
        problems = self.check(positions, arrivals, samples, after)
        return Phase("burst", workers, events, last - started, cpu, problems=problems)

    def steady(self, workers: int, rate: float, seconds: float, *, light: bool = False) -> Phase:
        after = self.app.recorder.max_notification_id() or 0
        self.use(workers)
        self.receiver.reset()
        meter = self.meter()
        started = time.monotonic()
        positions, offered = self.recorder.steady(rate, seconds)
        self.receiver.wait_for(len(positions), self.roles, 300)
        cpu = meter.done()
        arrivals, samples = self.receiver.dump()
        self.use(WORKERS)
        self.settle(after, len(positions))
        problems = self.check(positions, arrivals, samples, after)
        stamps = self.recorder.timestamps(positions)
        arrived = dict(arrivals)
        latencies = [
            (arrived[f"evt_{p}"] - stamps[p]) * 1000
            for p in positions
            if f"evt_{p}" in arrived and p in stamps
        ]
        if len(latencies) != len(positions):
            problems.append(f"steady: {len(latencies)} latencies for {len(positions)} events")
        return Phase(
            "light" if light else "steady",
            workers,
            len(positions),
            time.monotonic() - started,
            cpu,
            offered_per_s=offered,
            latencies_ms=latencies,
            problems=problems,
        )

    def check(
        self,
        positions: Sequence[int],
        arrivals: Sequence[tuple[str, float]],
        samples: Sequence[dict[str, Any]],
        after: int,
    ) -> list[str]:
        """Each event arrived exactly once, the sampled signatures verify, nothing failed."""
        problems = []
        expected = {f"evt_{p}" for p in positions}
        ids = [event_id for event_id, _ in arrivals]
        if len(ids) != len(set(ids)):
            problems.append(f"{len(ids) - len(set(ids))} events arrived more than once")
        if set(ids) != expected:
            missing, extra = len(expected - set(ids)), len(set(ids) - expected)
            problems.append(f"{missing} events missing, {extra} unexpected ones arrived")
        webhook = Webhook(self.secret)
        for sample in samples:
            try:
                body = webhook.verify(sample["body"], sample["headers"])
            except Exception as error:
                problems.append(f"a signature did not verify: {error}")
                continue
            if body["type"] != "message.received":
                problems.append(f"a {body['type']} arrived")
        if failed := self.db.failed_attempts(after):
            problems.append(f"{failed} attempts failed")
        if not samples:
            problems.append("no sampled request to verify")
        return problems


# -- the run ------------------------------------------------------------------------------------


def settings_env(url: str, workdir: Path) -> dict[str, str]:
    return {
        "SESSIOND_DATABASE_URL": url,
        "SESSIOND_GATEWAY": "simulator",
        "SESSIOND_ADMIN_KEY": ADMIN_KEY,
        "SESSIOND_WEBHOOKS_ALLOW_PRIVATE": "true",
        "SESSIOND_LOG_LEVEL": "warning",
        "SESSIOND_DATA_DIR": str(workdir / "var"),
    }


def start_receiver(workdir: Path, roles: list[Role]) -> int:
    port_file = workdir / "receiver.port"
    receiver = Role(
        "receiver",
        [str(Path(__file__).resolve()), "--serve-receiver", str(port_file)],
        dict(os.environ),
        workdir,
        python=True,
    )
    roles.append(receiver)
    wait_until("the receiver", port_file.exists, roles, 30)
    return int(port_file.read_text())


def bench(args: argparse.Namespace) -> dict[str, Any]:
    with fresh_database() as url, tempfile.TemporaryDirectory(prefix="sessiond-bench-") as tmp:
        workdir = Path(tmp)
        env = settings_env(url, workdir)
        Container(Settings.from_env(env), url, frozenset()).close()  # tables; roles elsewhere
        app = SessionsApplication(env=eventsourcing_env(url, pool_size=THREADS))
        db = Database(url)
        roles: list[Role] = []
        phases: list[Phase] = []
        log_problems: dict[str, Counter[str]] = {}
        with stopping(roles, app.close, db.close):
            sessions = []
            for n in range(SESSIONS):
                created = app.create_session(f"Webhook bench {n}", {}, None, ADMIN_ACTOR)
                app.stop(created.session_id, ADMIN_ACTOR)
                sessions.append(session_uuid(created.session_id))
            role_env = {**os.environ, **env}
            projector = Role(
                "projector",
                ["-c", BOOT, "projector"],
                {**role_env, "SESSIOND_BENCH_PROFILE": str(workdir / "profile-projector.json")}
                if args.profile
                else role_env,
                workdir,
                python=True,
            )
            roles.append(projector)
            port = start_receiver(workdir, roles)
            receiver = ReceiverClient(port)
            registered = Webhooks(app).register(
                receiver.url + "/hook", ["message.received"], None, ADMIN_ACTOR
            )
            workers = []
            for n in range(WORKERS):
                worker_env = dict(role_env)
                if args.profile:
                    worker_env["SESSIOND_BENCH_PROFILE"] = str(workdir / f"profile-{n}.json")
                workers.append(
                    Role(f"worker-{n}", ["-c", BOOT, "worker"], worker_env, workdir, python=True)
                )
            roles += workers
            wait_until(
                "the workers and the endpoint",
                lambda: db.workers_up() >= WORKERS and db.endpoint_known(),
                roles,
                60,
            )
            runner = Bench(
                app=app,
                db=db,
                receiver=receiver,
                workers=workers,
                roles=roles,
                secret=registered.secret,
            )
            runner.sessions += sessions
            # Warm up: connections, caches, the endpoint in every dispatcher.
            runner.steady(WORKERS, 200, 2)
            print(
                f"set-up: {SESSIONS} stopped sessions, one endpoint for message.received, "
                f"{WORKERS} workers, the projector and the receiver; warmed up",
                flush=True,
            )
            body = json.dumps(
                {
                    "type": "message.received",
                    "timestamp": datetime.now(UTC).isoformat(),
                    "data": {"sessionId": "sess_" + "0" * 32, "text": "x" * 220},
                }
            ).encode()
            for number in range(1, args.rounds + 1):
                done = [runner.raw(args.events, body)]
                done += [runner.burst(k, args.events) for k in (1, WORKERS)]
                done.append(runner.steady(1, args.rate_1, args.duration))
                done.append(runner.steady(WORKERS, args.rate_4, args.duration))
                done.append(runner.steady(WORKERS, args.rate_light, args.duration, light=True))
                for phase in done:
                    print(f"round {number}: {describe(phase)}", flush=True)
                    for problem in phase.problems[:5]:
                        print(f"  problem: {problem}", flush=True)
                phases += done
            log_problems = {role.name: role.problems() for role in roles}
        if args.profile:
            show_profile(workdir / "profile-projector.json", "the projector")
            for n in range(WORKERS):
                show_profile(workdir / f"profile-{n}.json", f"worker-{n}")
    return report(args, phases, log_problems)


def describe(phase: Phase) -> str:
    if phase.kind == "raw":
        head = f"raw POSTs: {phase.events:,} in {phase.seconds:.2f} s ({phase.per_s:,.0f}/s)"
    elif phase.kind == "burst":
        head = (
            f"burst, {phase.workers} worker(s): {phase.events:,} deliveries in "
            f"{phase.seconds:.2f} s ({phase.per_s:,.0f}/s)"
        )
    else:
        head = (
            f"{phase.kind}, {phase.workers} worker(s): {phase.events:,} events offered at "
            f"{phase.offered_per_s:,.0f}/s, latency p50 {phase.percentile(0.5):.0f} ms, p99 "
            f"{phase.percentile(0.99):.0f} ms, max {max(phase.latencies_ms, default=0):.0f} ms"
        )
    return f"{head}\n         {phase.cpu.describe()}"


IDLE = (
    "threading.py:wait",
    "selectors.py:select",
    "thread.py:_worker",
    "queue.py:get",
    "_acompat.py:get",
    "threading.py:_wait_for_tstate_lock",
)


def show_profile(path: Path, name: str) -> None:
    """The sampled stacks: busy frames on top (idle waits left out), and this project's
    functions anywhere in the stack."""
    if not path.exists():
        print(f"profile of {name}: none written")
        return
    data = json.loads(path.read_text())
    print(f"\nprofile of {name}: {data['samples']} samples of every thread, 5 ms apart")
    print("  on top of the stack (idle waits left out; psycopg's wait is waiting on PostgreSQL):")
    busy = [(key, count) for key, count in data["own"] if not key.endswith(IDLE)]
    for key, count in busy[:20]:
        print(f"    {count:>6} {key}")
    print("  this project's functions anywhere in the stack:")
    ours = [(key, count) for key, count in data["total"] if str(ROOT) in key]
    for key, count in ours[:25]:
        print(f"    {count:>6} {key.replace(str(ROOT) + '/', '')}")


def report(
    args: argparse.Namespace, phases: list[Phase], log_problems: dict[str, Counter[str]]
) -> dict[str, Any]:
    def of(kind: str, workers: int) -> list[Phase]:
        return [p for p in phases if p.kind == kind and p.workers == workers]

    raw = median([p.per_s for p in of("raw", 0)])
    label = f"raw POSTs (plain httpx-aiohttp, {RAW_CONCURRENCY} in flight)"
    rows = [[label, f"{raw:,.0f}/s", "1.00", "-", ""]]
    result: dict[str, Any] = {
        "benchmark": "webhook_delivery",
        "events": args.events,
        "rounds": args.rounds,
        "raw_per_s": raw,
        "workers": {},
    }
    for workers in (1, WORKERS):
        per_s = median([p.per_s for p in of("burst", workers)])
        steady = of("steady", workers)
        p50 = median([p.percentile(0.5) for p in steady])
        p99 = median([p.percentile(0.99) for p in steady])
        offered = median([p.offered_per_s for p in steady])
        target = workers == WORKERS
        rows.append(
            [
                f"burst, {workers} worker(s): deliveries",
                f"{per_s:,.0f}/s",
                f"{ratio(per_s, raw):.2f}",
                f"≥ {TARGET_PER_S:g}/s" if target else "-",
                verdict(per_s >= TARGET_PER_S) if target else "",
            ]
        )
        rows.append(
            [
                f"steady {offered:,.0f}/s, {workers} worker(s): latency p50",
                f"{p50:,.0f} ms",
                "-",
                "-",
                "",
            ]
        )
        rows.append(
            [
                f"steady {offered:,.0f}/s, {workers} worker(s): latency p99",
                f"{p99:,.0f} ms",
                "-",
                f"< {TARGET_P99_MS:g} ms" if target else "-",
                verdict(p99 < TARGET_P99_MS) if target else "",
            ]
        )
        result["workers"][str(workers)] = {
            "deliveries_per_s": per_s,
            "ratio": ratio(per_s, raw),
            "offered_per_s": offered,
            "p50_ms": p50,
            "p99_ms": p99,
        }
    light = of("light", WORKERS)
    light_offered = median([p.offered_per_s for p in light])
    for q, name in ((0.5, "p50"), (0.99, "p99")):
        value = median([p.percentile(q) for p in light])
        rows.append(
            [
                f"light load {light_offered:,.0f}/s, {WORKERS} workers: latency {name}",
                f"{value:,.0f} ms",
                "-",
                "-",
                "",
            ]
        )
        result[f"light_{name}_ms"] = value
    result["light_offered_per_s"] = light_offered
    result["busy"] = {f"{p.kind}_{p.workers}": p.cpu.machine / (p.cpu.wall * CORES) for p in phases}
    four = result["workers"][str(WORKERS)]
    result["throughput_met"] = four["deliveries_per_s"] >= TARGET_PER_S
    result["latency_met"] = four["p99_ms"] < TARGET_P99_MS
    problems = [p for phase in phases for p in phase.problems]
    result["problems"] = problems[:50]
    result["log_problems"] = {k: v.total() for k, v in log_problems.items()}
    result["valid"] = not problems
    print(
        f"\nWebhook delivery — {args.events:,} events per burst, {args.duration:g} s of steady "
        f"load; medians of {args.rounds} interleaved round(s); ratio = deliveries / raw POSTs"
    )
    print_table(["figure", "value", "ratio", "target", "verdict"], rows, align="lrrll")
    print("notes:")
    print(
        f"- every process shares {CORES} cores: PostgreSQL, the projector, {WORKERS} workers "
        "(paused ones use none), the receiver and this process (recording threads); see the "
        "CPU lines above"
    )
    print(
        "- latency: the event's timestamp in the event store (made just before its commit) to "
        "its arrival at the receiver; it includes the projector (six views per event) and "
        "recording the events here, on the same cores: where 'machine busy' is near its "
        "'of', the machine is saturated and latency is a queue growing for the whole phase"
    )
    for name, lines in log_problems.items():
        if lines:
            line, count = lines.most_common(1)[0]
            print(f"- {name} log: {lines.total()} warning/error lines, e.g. {count}x {line}")
    if problems:
        print(f"INVALID RUN: {len(problems)} problems (see above)")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser(__doc__, rounds=1)
    parser.add_argument("--events", type=int, default=5000, help="per burst and raw baseline")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds of steady load")
    parser.add_argument("--rate-1", type=float, default=300.0, help="offered events/s, 1 worker")
    parser.add_argument("--rate-4", type=float, default=500.0, help="offered events/s, 4 workers")
    parser.add_argument(
        "--rate-light", type=float, default=100.0, help="offered events/s, 4 workers, light load"
    )
    parser.add_argument("--profile", action="store_true", help="sample the workers' stacks")
    parser.add_argument("--serve-receiver", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_receiver:
        return serve_receiver(args.serve_receiver)
    if not 100 <= args.events <= 100_000 or not 1 <= args.rounds <= 20:
        parser.error("events must be 100..100000 and rounds 1..20")
    if not 1 <= args.duration <= 120 or min(args.rate_1, args.rate_4, args.rate_light) <= 0:
        parser.error("duration must be 1..120 s and the rates positive")
    return run_bench(bench, args)


if __name__ == "__main__":
    sys.exit(main())
