"""`sessiond session export | import | keygen`: moving a linked session between deployments.

The file: one line naming the format and its version (``sessiond-session-export/1``), then an
age file (https://age-encryption.org/v1, with pyrage) holding the export as JSON
(`application.moving.SessionExport`, which names the format and version again). age
authenticates what it encrypts: a wrong passphrase or identity and a file altered anywhere
are both refused at decryption, before anything is read or changed. The passphrase comes
from ``--passphrase-file``, else ``SESSIOND_EXPORT_PASSPHRASE``, else the terminal (never the
command line); or the file is encrypted to age recipients (``--recipient age1…``), read back
with their identities (``--identity FILE``).

Everything that can be checked without the database (the arguments, the passphrase, the
file's decryption) is checked before the database is reached (`prepare`).
"""

from __future__ import annotations

import argparse
import contextlib
import getpass
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pyrage
from pyrage import passphrase as age_passphrase
from pyrage import x25519

from application.errors import SessionNotFound
from application.moving import (
    DeviceStore,
    MoveRefused,
    SessionExport,
    SessionMoves,
    decode_export,
    encode_export,
)
from domain.errors import DomainError, InvalidValue
from domain.values import ADMIN_ACTOR, session_uuid
from infra.cli.refusal import refused
from infra.settings import Settings

if TYPE_CHECKING:
    from infra.bootstrap import Container

MAGIC = b"sessiond-session-export/"
VERSION = 1
HEADER = MAGIC + str(VERSION).encode() + b"\n"
PASSPHRASE_VARIABLE = "SESSIOND_EXPORT_PASSPHRASE"  # noqa: S105 - a variable's name
MIN_PASSPHRASE = 12
#: How many times a passphrase file refused for its scrypt work factor is tried (see
#: `_open_with_passphrase`), and how rage says that refusal.
WORK_TRIES = 10
EXCESSIVE_WORK = "Excessive work parameter"
#: How long an export waits for the session's worker to stop its client, by default.
STOP_WAIT = 30.0
#: How long an export waits for the webhook view to hold what is recorded.
VIEW_WAIT = 10.0


class Refused(Exception):
    """What the command refuses, in one line (printed as ``sessiond: <line>``, exit 1)."""


@dataclass
class Prepared:
    """What `prepare` found before the database: the key to encrypt with, or the export
    decrypted from the file."""

    passphrase: str | None = None
    recipients: list[x25519.Recipient] = field(default_factory=list)
    document: SessionExport | None = None


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    session = commands.add_parser(
        "session", help="move a linked session to another deployment (export, import)"
    )
    actions = session.add_subparsers(dest="action", required=True)
    export = actions.add_parser(
        "export",
        help="write the session's device and settings to an encrypted file, and stop it here "
        "for good",
    )
    export.add_argument("session_id", help="the session's id (sess_…)")
    export.add_argument("-o", "--output", required=True, help="the file to write (new)")
    export.add_argument(
        "--recipient",
        action="append",
        default=[],
        help="encrypt to this age recipient (age1…) instead of a passphrase; repeatable",
    )
    export.add_argument(
        "--passphrase-file",
        help=f"read the passphrase from this file's first line (else {PASSPHRASE_VARIABLE}, "
        "else the terminal asks)",
    )
    export.add_argument(
        "--wait",
        type=float,
        default=STOP_WAIT,
        help="seconds to wait for the session's worker to stop it",
    )
    imported = actions.add_parser(
        "import", help="create the session of an export file here; it resumes without a scan"
    )
    imported.add_argument("file", help="the export file")
    imported.add_argument(
        "--identity",
        action="append",
        default=[],
        help="an age identity file (AGE-SECRET-KEY-1…) for a file encrypted to a recipient",
    )
    imported.add_argument("--passphrase-file", help="as for export")
    imported.add_argument("--json", action="store_true", help="print the result as JSON")
    keygen = actions.add_parser(
        "keygen", help="make an age identity to import with; prints its recipient"
    )
    keygen.add_argument("-o", "--output", required=True, help="the identity file to write (new)")


# -- before the database ---------------------------------------------------------------------


def prepare(args: argparse.Namespace) -> Prepared:
    """Check what needs no database; `Refused` says what is wrong."""
    if args.action == "export":
        session_id(args.session_id)
        if Path(args.output).exists():
            raise Refused(
                f"{args.output} exists: choose another file (an export is never "
                "written over another)"
            )
        if args.recipient:
            return Prepared(recipients=[_recipient(r) for r in args.recipient])
        return Prepared(passphrase=_passphrase(args.passphrase_file, confirm=True))
    return Prepared(document=_read_export(args))


def session_id(value: str) -> str:
    try:
        session_uuid(value)
    except InvalidValue as error:
        raise Refused(str(error)) from None
    return value


def _recipient(text: str) -> x25519.Recipient:
    try:
        return x25519.Recipient.from_str(text.strip())
    except pyrage.RecipientError:
        raise Refused(f"{text!r} is not an age recipient (age1…)") from None


def _passphrase(path: str | None, *, confirm: bool) -> str:
    if path is not None:
        try:
            lines = Path(path).read_text().splitlines()
        except OSError as error:
            raise Refused(f"cannot read the passphrase file: {error}") from None
        value = lines[0] if lines else ""
    elif os.environ.get(PASSPHRASE_VARIABLE):
        value = os.environ[PASSPHRASE_VARIABLE]
    elif sys.stdin.isatty():
        value = getpass.getpass("passphrase: ")
        if confirm and getpass.getpass("passphrase again: ") != value:
            raise Refused("the two passphrases differ")
    else:
        otherwise = ", or encrypt to --recipient" if confirm else ""
        raise Refused(
            f"no passphrase: give --passphrase-file, set {PASSPHRASE_VARIABLE} or run it in a "
            f"terminal{otherwise}"
        )
    if confirm and len(value) < MIN_PASSPHRASE:
        raise Refused(f"the passphrase must be at least {MIN_PASSPHRASE} characters")
    if not value:
        raise Refused("the passphrase is empty")
    return value


def _identities(paths: list[str]) -> list[x25519.Identity]:
    identities = []
    for path in paths:
        try:
            text = Path(path).read_text()
        except OSError as error:
            raise Refused(f"cannot read the identity file: {error}") from None
        keys = [line.strip() for line in text.splitlines() if line.startswith("AGE-SECRET-KEY-")]
        if not keys:
            raise Refused(f"{path} holds no age identity (AGE-SECRET-KEY-1…)")
        try:
            identities += [x25519.Identity.from_str(key) for key in keys]
        except pyrage.IdentityError:
            raise Refused(f"{path} holds an identity that is not valid") from None
    return identities


def _read_export(args: argparse.Namespace) -> SessionExport:
    try:
        data = Path(args.file).read_bytes()
    except OSError as error:
        raise Refused(f"cannot read {args.file}: {error.strerror or error}") from None
    header, _, sealed = data.partition(b"\n")
    if not header.startswith(MAGIC):
        raise Refused(f"{args.file} is not a sessiond session export")
    version = header[len(MAGIC) :].decode(errors="replace")
    if version != str(VERSION):
        raise Refused(
            f"{args.file} is an export of format {version!r}; this sessiond reads format {VERSION}"
        )
    with_passphrase = b"\n-> scrypt " in sealed.split(b"\n---", 1)[0]
    try:
        if with_passphrase:
            passphrase = _passphrase(args.passphrase_file, confirm=False)
            plain = _open_with_passphrase(sealed, passphrase, args.file)
        else:
            if not args.identity:
                raise Refused(
                    f"{args.file} is encrypted to an age recipient: give its identity with "
                    "--identity FILE"
                )
            plain = pyrage.decrypt(sealed, _identities(args.identity))
    except pyrage.DecryptError:
        what = "passphrase" if with_passphrase else "identity"
        raise Refused(
            f"cannot decrypt {args.file}: wrong {what}, or the file was altered; nothing was "
            "changed"
        ) from None
    try:
        return decode_export(plain)
    except MoveRefused as error:
        raise Refused(f"{args.file}: {error}") from None


def _open_with_passphrase(sealed: bytes, passphrase: str, name: str) -> bytes:
    """Decrypt the age file `sealed` with `passphrase`.

    Before it runs scrypt, rage times one short scrypt to learn this machine's speed and
    refuses a file whose work factor would take more than about 16 times a second at that
    speed. One timing taken while the process waited for a CPU makes the machine look many
    times slower than it is, and a file written on it a moment before is refused although
    the passphrase is right: such a refusal (it costs one short scrypt) is tried again,
    `WORK_TRIES` times in all, and then said as what it is, never as a wrong passphrase.
    """
    refusal = ""
    for _ in range(WORK_TRIES):
        try:
            return age_passphrase.decrypt(sealed, passphrase)
        except pyrage.DecryptError as error:
            refusal = str(error)
            if not refusal.startswith(EXCESSIVE_WORK):
                raise
    detail = " ".join(refusal.replace("\u2068", "").replace("\u2069", "").split())
    raise Refused(
        f"cannot decrypt {name}: its passphrase's work factor is more than this machine "
        f"accepts now ({detail}); nothing was changed; try again when the machine is less busy"
    )


def _write_new(path: Path, data: bytes) -> None:
    """Write `data` to the new file `path` (mode 0600; never over an existing file); a file
    that could not be written whole is removed."""
    handle = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
    except BaseException:
        with contextlib.suppress(OSError):
            path.unlink()
        raise


# -- with the database ------------------------------------------------------------------------


def run(args: argparse.Namespace, prepared: Prepared, settings: Settings, url: str) -> int:
    """`sessiond session export | import` once `prepare` passed."""
    from infra.bootstrap import Container  # noqa: PLC0415 - heavy: only for these commands
    from infra.postgres.webhooks import WebhookStore  # noqa: PLC0415
    from infra.webhooks.client import registration_refusal  # noqa: PLC0415
    from infra.whatsapp.transfer import device_store  # noqa: PLC0415

    container = Container(settings, url, frozenset())
    try:
        datastore = container.app.factory.datastore  # type: ignore[attr-defined]
        store = WebhookStore(datastore)
        moves = SessionMoves(
            container.app,
            endpoints_of=lambda sid: [row["webhook_id"] for row in store.endpoints_of(sid)],
            refuse_webhook_url=lambda hook: registration_refusal(
                hook, allow_private=settings.webhooks_allow_private
            ),
        )
        devices = device_store(settings.gateway, container.direct_url)
        if args.action == "export":
            return _export(args, prepared, container, moves, devices)
        assert prepared.document is not None
        imported = moves.import_session(prepared.document, devices, ADMIN_ACTOR)
    except (Refused, MoveRefused, DomainError) as error:
        return refused(error, 1)
    except SessionNotFound:
        return refused(f"no session {args.session_id}", 1)
    finally:
        container.close()
    document = prepared.document
    if args.json:
        print(
            json.dumps(
                {
                    "sessionId": imported.session_id,
                    "jid": imported.jid,
                    "exportId": document.export_id,
                    "sourceSessionId": document.source_session_id,
                    "webhooks": imported.webhook_ids,
                    "apiKey": {"keyId": imported.first_key.key_id, "key": imported.first_key.key},
                }
            )
        )
    else:
        print(
            f"sessiond: imported {document.source_session_id} (export {document.export_id}) "
            f"as {imported.session_id}; it resumes device {imported.jid}, no scan needed\n"
            f"  its API key, shown only now: {imported.first_key.key}"
        )
    return 0


def _export(
    args: argparse.Namespace,
    prepared: Prepared,
    container: Container,
    moves: SessionMoves,
    devices: DeviceStore,
) -> int:
    session = moves.exportable(args.session_id)
    if session.exported_as is None:
        if session.jid and not devices.holds(session.jid):
            raise Refused(
                f"the device {session.jid} of {args.session_id} is not in this deployment's "
                f"device store (SESSIOND_GATEWAY={devices.gateway})"
            )
        _wait_for_webhook_view(container)
    recorded = moves.record_export(args.session_id, ADMIN_ACTOR)
    if recorded.again:
        print(
            f"sessiond: {args.session_id} was exported at {recorded.exported_at.isoformat()} "
            f"(export {recorded.export_id}); writing that export again",
            file=sys.stderr,
        )
    holder = _wait_until_stopped(container, args.session_id, args.wait)
    if holder is not None:
        raise Refused(
            f"{args.session_id} is exported (recorded) but worker {holder} still runs it after "
            f"{args.wait:g}s (is a projector running?); run this command again to write the file"
        )
    loaded = container.app.load(args.session_id)
    assert loaded.jid is not None
    device = devices.read(loaded.jid, loaded.push_name or "")
    document = moves.document(args.session_id, recorded, device)
    plain = encode_export(document)
    if prepared.recipients:
        sealed = pyrage.encrypt(plain, prepared.recipients)
    else:
        assert prepared.passphrase is not None
        sealed = age_passphrase.encrypt(plain, prepared.passphrase)
    try:
        _write_new(Path(args.output), HEADER + sealed)
    except OSError as error:
        raise Refused(
            f"cannot write {args.output}: {error.strerror or error} (the session is exported: "
            "run this command again with another file)"
        ) from None
    print(
        f"sessiond: exported {args.session_id} (device {device.jid}, export "
        f"{recorded.export_id}) to {args.output}; it is stopped here for good: import the "
        "file with `sessiond session import` on the other deployment",
        file=sys.stderr,
    )
    return 0


def _wait_for_webhook_view(container: Container) -> None:
    """Wait until the webhook view holds everything recorded so far (a session's endpoints
    are read from it), at most `VIEW_WAIT`; `Refused` if it does not."""
    from projections.webhooks import WebhookProjection  # noqa: PLC0415

    head = container.app.recorder.max_notification_id() or 0
    view = container.views.get(WebhookProjection.name)
    deadline = time.monotonic() + VIEW_WAIT
    while (view.max_tracking_id(container.app.name) or 0) < head:
        if time.monotonic() > deadline:
            raise Refused(
                "the webhook view lags behind the log (is a projector running? `sessiond "
                "serve` or `sessiond projector`): nothing was exported"
            )
        time.sleep(0.1)


def _wait_until_stopped(container: Container, public_id: str, wait: float) -> str | None:
    """Wait until no live worker holds the session (its client is stopped: a worker stops a
    client before it gives its lease up); the worker still holding it after `wait` seconds."""
    from infra.postgres.gateway import LIVE_WORKERS  # noqa: PLC0415

    datastore = container.app.factory.datastore  # type: ignore[attr-defined]
    uuid = session_uuid(public_id)
    deadline = time.monotonic() + max(0.0, wait)
    while True:
        with datastore.cursor() as curs:
            curs.execute(
                f"WITH live AS ({LIVE_WORKERS}) SELECT owner FROM sessiond_leases "  # noqa: S608
                "WHERE session_id = %s AND expires_at > now() "
                "AND owner IN (SELECT owner FROM live)",
                (uuid,),
            )
            row = curs.fetchone()
        if row is None:
            return None
        if time.monotonic() > deadline:
            return str(row["owner"])
        time.sleep(0.1)


def keygen(args: argparse.Namespace) -> int:
    """Write a new age identity to a new file (0600) and print its recipient."""
    path = Path(args.output)
    if path.exists():
        return refused(f"{args.output} exists: choose another file", 1)
    identity = x25519.Identity.generate()
    recipient = identity.to_public()
    text = f"# public key: {recipient}\n{identity}\n"  # as age-keygen writes it
    try:
        _write_new(path, text.encode())
    except OSError as error:
        return refused(f"cannot write {args.output}: {error}", 1)
    print(recipient)
    return 0
