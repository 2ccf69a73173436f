"""The auditor's commands: `sessiond history <sessionId>`, `sessiond export` and `sessiond
projections status` (`sessiond projections rebuild` is in `infra/runtime/rebuild.py`)."""

from __future__ import annotations

import argparse
import sys
from contextlib import ExitStack
from typing import IO, Any

import msgspec
from tqdm import tqdm

from api.presenters import event_out
from application.errors import SessionNotFound
from domain.errors import InvalidValue
from domain.values import session_uuid
from infra.bootstrap import Container
from infra.settings import Settings
from projections.history import log_page, session_history

PAGE = 1000


def _describe(data: dict[str, Any]) -> str:
    return ", ".join(f"{name}={value}" for name, value in data.items() if value not in ({}, None))


def print_history(settings: Settings, url: str, session_id: str) -> int:
    """Print every event of the session, one line each; 1 if there is no such session."""
    try:
        uuid = session_uuid(session_id)
    except InvalidValue as error:
        print(f"sessiond: {error}", file=sys.stderr)
        return 2
    container = Container(settings, url, frozenset())
    try:
        try:
            container.app.load(uuid)
        except SessionNotFound:
            print(f"sessiond: no session {session_id}", file=sys.stderr)
            return 1
        after = 0
        while True:
            entries = session_history(container.app, uuid, after, PAGE)
            for e in entries:
                when = e.timestamp.isoformat(timespec="milliseconds")
                print(f"{when}  v{e.version:<4} {e.type:<19} {_describe(e.data)}")
            if len(entries) < PAGE:
                return 0
            after = entries[-1].version
    finally:
        container.close()


def export_log(settings: Settings, url: str, after: int, output: str) -> int:
    """Write the log after position `after` as NDJSON, with a progress bar on stderr."""
    container = Container(settings, url, frozenset())
    encoder = msgspec.json.Encoder()
    try:
        head = container.app.recorder.max_notification_id() or 0
        with ExitStack() as stack:
            out: IO[bytes] = (
                sys.stdout.buffer if output == "-" else stack.enter_context(open(output, "wb"))
            )
            progress = stack.enter_context(
                tqdm(total=max(0, head - after), unit="event", file=sys.stderr, delay=0.5)
            )
            while after < head:
                entries = log_page(container.app, after, PAGE)
                if not entries:
                    break
                for e in entries:
                    out.write(encoder.encode(event_out(e)) + b"\n")
                assert entries[-1].position is not None
                progress.update(entries[-1].position - after)
                after = entries[-1].position
        return 0
    finally:
        container.close()


def projections_status(settings: Settings, url: str) -> int:
    """Print each view's position in the log, how many events it has yet to process, and
    which generation of it serves (0 until it is rebuilt)."""
    container = Container(settings, url, frozenset())
    try:
        head = container.app.recorder.max_notification_id() or 0
        lags = container.projection_lags()
        print(f"{'view':<16} {'position':>10} {'lag':>8} {'generation':>10}")
        for name, lag in lags.items():
            generation = container.views.generation(name)
            print(f"{name:<16} {head - lag:>10} {lag:>8} {generation:>10}")
        print(f"{'(log head)':<16} {head:>10}")
        return 0
    finally:
        container.close()


def run_command(args: argparse.Namespace, settings: Settings, url: str) -> int:
    """`sessiond history | export | projections` with their parsed arguments."""
    if args.command == "history":
        return print_history(settings, url, args.session_id)
    if args.command == "projections":
        return projections_status(settings, url)
    return export_log(settings, url, args.after, args.output)
