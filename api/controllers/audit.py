"""The tamper-evident history: the audit key's public half, and the check of the log's tail
since its last signed checkpoint."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Callable

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from litestar import Controller, get
from litestar.di import NamedDependency, Provide

from api.auth import API_KEY_SECURITY, Principal, provide_admin
from api.context import Service
from api.controllers.common import problems
from api.problems import ProblemError
from api.schemas import AuditCheckpointOut, AuditPublicKeyOut, AuditVerifyOut
from application.audit import Break, Verified


def verify_out(result: Break | Verified) -> AuditVerifyOut:
    if isinstance(result, Break):
        return AuditVerifyOut(verified=False, broken_at=result.position, problem=result.problem)
    last = result.last_checkpoint
    return AuditVerifyOut(
        verified=True,
        events=result.events,
        position=result.position,
        verified_from=result.start,
        last_checkpoint=None
        if last is None
        else AuditCheckpointOut(
            position=last.position,
            events=last.events,
            hash=last.hash.hex(),
            signed_at=last.signed_at,
        ),
    )


class AuditController(Controller):
    path = "/audit"
    tags = ["audit"]  # noqa: RUF012 - Litestar reads it as a class attribute

    @get("/public-key", security=[], operation_id="getAuditPublicKey")
    async def public_key(self, audit_public_key: Service[bytes | None]) -> AuditPublicKeyOut:
        """The public half of the Ed25519 key that signs the audit checkpoints (no key
        needed): an auditor checks an export's checkpoints with it."""
        raw = audit_public_key
        if raw is None:
            raise ProblemError(404, "not-found", "this server keeps no audit key")
        pem = Ed25519PublicKey.from_public_bytes(raw).public_bytes(
            Encoding.PEM, PublicFormat.SubjectPublicKeyInfo
        )
        return AuditPublicKeyOut(
            algorithm="Ed25519",
            public_key=base64.b64encode(raw).decode(),
            public_key_pem=pem.decode(),
        )

    @get(
        "/verify",
        security=API_KEY_SECURITY,
        dependencies={"admin": Provide(provide_admin)},
        responses=problems(401, 403, 429),
        operation_id="verifyAuditChain",
    )
    async def verify(
        self,
        admin: NamedDependency[Principal],
        audit_verify: Service[Callable[[], Break | Verified] | None],
    ) -> AuditVerifyOut:
        """Check the log since its last signed checkpoint (admin): the checkpoint's signature
        and hash, then every event after it against its hash and the head recorded at the
        last commit. `verified` false gives the first broken position and what is wrong
        there (`sessiond audit verify` checks the whole log)."""
        verify = audit_verify
        if verify is None:
            raise ProblemError(404, "not-found", "this server keeps no audit chain")
        return verify_out(await asyncio.to_thread(verify))
