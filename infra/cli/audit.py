"""The auditor's commands: `sessiond history <sessionId>`, `sessiond export`, `sessiond audit
verify` and `sessiond projections status` (`sessiond projections rebuild` is in
`infra/runtime/rebuild.py`)."""

from __future__ import annotations

import argparse
import base64
import sys
from contextlib import ExitStack
from typing import IO, Any

import msgspec
from eventsourcing.persistence import Notification
from tqdm import tqdm

from api.presenters import event_out
from application.audit import Break, ChainedEvent, Checkpoint, microseconds
from application.errors import SessionNotFound
from domain.errors import InvalidValue
from domain.values import session_uuid
from infra.bootstrap import Container
from infra.cli.refusal import refused
from infra.runtime.audit import AuditKeyError, verify_chain
from infra.settings import Settings
from projections.history import entry, session_history

PAGE = 1000


def _describe(data: dict[str, Any]) -> str:
    return ", ".join(f"{name}={value}" for name, value in data.items() if value not in ({}, None))


def print_history(settings: Settings, url: str, session_id: str) -> int:
    """Print every event of the session, one line each; 1 if there is no such session."""
    try:
        uuid = session_uuid(session_id)
    except InvalidValue as error:
        return refused(error, 2)
    container = Container(settings, url, frozenset())
    try:
        try:
            container.app.load(uuid)
        except SessionNotFound:
            return refused(f"no session {session_id}", 1)
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


def _instant(when: Any) -> str:
    return str(when.isoformat(timespec="microseconds").replace("+00:00", "Z"))


def _chain_out(event: ChainedEvent) -> dict[str, Any]:
    """The event as stored, what its hash covers (README "Tamper-evident history")."""
    return {
        "originatorId": str(event.originator_id),
        "version": event.version,
        "topic": event.topic,
        "recordedAt": None if event.recorded_at is None else _instant(event.recorded_at),
        "recordedAtMicros": None if event.recorded_at is None else microseconds(event.recorded_at),
        "state": base64.b64encode(event.state).decode(),
        "hash": None if event.hash is None else event.hash.hex(),
    }


def _checkpoint_out(checkpoint: Checkpoint) -> dict[str, Any]:
    return {
        "checkpoint": {
            "position": checkpoint.position,
            "events": checkpoint.events,
            "hash": checkpoint.hash.hex(),
            "signedAt": _instant(checkpoint.signed_at),
            "signedAtMicros": microseconds(checkpoint.signed_at),
            "publicKey": base64.b64encode(checkpoint.public_key).decode(),
            "signature": base64.b64encode(checkpoint.signature).decode(),
        }
    }


def export_log(settings: Settings, url: str, after: int, output: str) -> int:
    """Write the log after position `after` as NDJSON, with a progress bar on stderr: each
    event decoded and as stored with its hash, each checkpoint after the event it signs, and
    the chain's head last (after a start line giving the chain's hash at `after` when it is
    not the log's start)."""
    container = Container(settings, url, frozenset())
    encoder = msgspec.json.Encoder()
    store = container.audit_store
    try:
        head = store.witness()
        end = head.position
        with ExitStack() as stack:
            out: IO[bytes] = (
                sys.stdout.buffer if output == "-" else stack.enter_context(open(output, "wb"))
            )
            progress = stack.enter_context(
                tqdm(total=max(0, end - after), unit="event", file=sys.stderr, delay=0.5)
            )
            if after > 0:
                start = store.chain_before(after)
                out.write(
                    encoder.encode(
                        {
                            "chainFrom": {
                                "position": after,
                                "events": start[1],
                                "hash": start[0].hex(),
                            }
                        }
                    )
                    + b"\n"
                )
            checkpoints = iter(c for c in store.checkpoints(after) if c.position <= end)
            waiting = next(checkpoints, None)
            done = after
            for page in store.events(after, PAGE):
                for event in page:
                    if event.position > end:
                        break
                    decoded = entry(
                        container.app.mapper.to_domain_event(
                            Notification(
                                id=event.position,
                                originator_id=event.originator_id,
                                originator_version=event.version,
                                topic=event.topic,
                                state=event.state,
                            )
                        ),
                        event.position,
                    )
                    record = msgspec.to_builtins(event_out(decoded))
                    record["chain"] = _chain_out(event)
                    out.write(encoder.encode(record) + b"\n")
                    while waiting is not None and waiting.position <= event.position:
                        out.write(encoder.encode(_checkpoint_out(waiting)) + b"\n")
                        waiting = next(checkpoints, None)
                    progress.update(event.position - done)
                    done = event.position
                if done >= end:
                    break
            out.write(
                encoder.encode(
                    {
                        "head": {
                            "position": head.position,
                            "events": head.events,
                            "hash": head.hash.hex(),
                        }
                    }
                )
                + b"\n"
            )
        return 0
    finally:
        container.close()


def verify_audit_chain(settings: Settings, url: str) -> int:
    """Walk the whole log against its hashes, checkpoints and head, with a progress bar on
    stderr; 0 and one line when it holds, 1 and the first broken position otherwise."""
    container = Container(settings, url, frozenset())
    try:
        try:
            key = container.audit_key()
        except AuditKeyError as error:
            return refused(error, 2)
        store = container.audit_store
        head = store.witness()
        with tqdm(total=head.events, unit="event", file=sys.stderr, delay=0.5) as progress:
            result = verify_chain(store, key.public, progress=progress.update, head=head)
        if isinstance(result, Break):
            print(f"broken at position {result.position}: {result.problem}")
            return 1
        last = result.last_checkpoint
        when = "none yet" if last is None else _instant(last.signed_at)
        where = "" if last is None else f" (position {last.position})"
        print(
            f"verified {result.events} events up to position {result.position}, "
            f"last checkpoint at {when}{where}"
        )
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
    """`sessiond history | export | audit | projections` with their parsed arguments."""
    if args.command == "audit":
        return verify_audit_chain(settings, url)
    if args.command == "history":
        return print_history(settings, url, args.session_id)
    if args.command == "projections":
        return projections_status(settings, url)
    return export_log(settings, url, args.after, args.output)
