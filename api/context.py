"""What the API needs, handed over by the composition root (the API never builds adapters)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from api.ratelimit import SessionRateLimiter
from application.ports import PhoneSimulator
from application.sessions import SessionsApplication
from projections.readmodels import ReadModels


@dataclass
class ApiContext:
    app: SessionsApplication
    read_models: ReadModels
    limiter: SessionRateLimiter
    admin_key_hash: str
    default_requests_per_minute: int
    write_wait_timeout: float
    max_body_bytes: int
    simulator: PhoneSimulator | None
    readiness: Callable[[], Awaitable[dict[str, str]]]
