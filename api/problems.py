"""Every error becomes an RFC 9457 ``application/problem+json`` answer, mapped in one place."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from litestar import Request, Response
from litestar.exceptions import HTTPException, ValidationException

from application.errors import ConcurrentChange, SessionNotFound, SimulatorError
from domain.errors import (
    DomainError,
    InvalidTransition,
    InvalidValue,
    SessionIsDeleted,
    UnknownApiKey,
)

log = logging.getLogger(__name__)
PROBLEM_JSON = "application/problem+json"
_TITLES = {
    400: "Bad request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not found",
    405: "Method not allowed",
    409: "Conflict",
    413: "Request body too large",
    415: "Unsupported media type",
    422: "Unprocessable content",
    429: "Too many requests",
    500: "Internal server error",
    503: "Service unavailable",
}


@dataclass
class ProblemError(Exception):
    """An error answered as problem+json; `code` makes the stable `type` URI."""

    status: int
    code: str
    detail: str
    headers: dict[str, str] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)


def problem_type(code: str) -> str:
    return f"urn:sessiond:problem:{code}"


def problem_response(error: ProblemError, request: Request[Any, Any, Any]) -> Response[Any]:
    body: dict[str, Any] = {
        "type": problem_type(error.code),
        "title": _TITLES.get(error.status, "Error"),
        "status": error.status,
        "detail": error.detail,
        "instance": request.url.path,
        **error.extra,
    }
    return Response(body, status_code=error.status, media_type=PROBLEM_JSON, headers=error.headers)


def _domain_problem(error: DomainError) -> ProblemError:
    if isinstance(error, SessionIsDeleted):
        return ProblemError(404, "session-not-found", "no such session (it has been deleted)")
    if isinstance(error, UnknownApiKey):
        return ProblemError(404, error.code, str(error))
    if isinstance(error, InvalidTransition):
        return ProblemError(409, error.code, str(error))
    if isinstance(error, InvalidValue):
        return ProblemError(422, error.code, str(error))
    return ProblemError(409, error.code, str(error))


def _http_problem(error: HTTPException) -> ProblemError:
    status = error.status_code
    if isinstance(error, ValidationException):
        detail = _validation_detail(error)
        is_syntax = "malformed" in detail.lower() or "json is malformed" in detail.lower()
        return ProblemError(400 if is_syntax else 422, "invalid-request", detail)
    code = {
        401: "unauthorized",
        404: "not-found",
        405: "method-not-allowed",
        413: "body-too-large",
        415: "unsupported-media-type",
    }.get(status, "http-error")
    headers = {k: str(v) for k, v in (error.headers or {}).items()}
    return ProblemError(status, code, str(error.detail), headers)


def _validation_detail(error: ValidationException) -> str:
    extra = error.extra
    if isinstance(extra, list) and extra:
        parts = []
        for item in extra:
            if isinstance(item, dict):
                where = item.get("key") or item.get("source") or "body"
                parts.append(f"{where}: {item.get('message', '')}".strip())
        if parts:
            return "; ".join(parts)
    return str(error.detail)


def handle_exception(request: Request[Any, Any, Any], error: Exception) -> Response[Any]:
    """The one exception handler of the app."""
    if isinstance(error, ProblemError):
        problem = error
    elif isinstance(error, DomainError):
        problem = _domain_problem(error)
    elif isinstance(error, SessionNotFound):
        problem = ProblemError(404, "session-not-found", "no such session")
    elif isinstance(error, (ConcurrentChange, SimulatorError)):
        problem = ProblemError(409, error.code, str(error))
    elif isinstance(error, HTTPException):
        problem = _http_problem(error)
    else:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        problem = ProblemError(500, "internal-error", "an unexpected error happened; it was logged")
    return problem_response(problem, request)
