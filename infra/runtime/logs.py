"""Logging set-up for every sessiond process: text lines (the default), or one JSON object per
line for a log pipeline (``SESSIOND_LOG_FORMAT=json``).

A JSON line holds ``time`` (ISO 8601, UTC), ``level``, ``role`` (the process's roles, e.g.
``serve`` or ``api,worker``), ``logger``, ``message`` and, where the line is about one,
``sessionId`` (``sess_…``), ``event`` (a recorded event's name) and ``reason``; an exception
adds ``exc_info``. In both formats, what could be a secret is masked before a line is written:
API keys (``sdk_…``, ``sda_…``) and the passwords of URLs (``socks5://user:***@host``).
Message texts are never logged (no log call is given one).
"""

from __future__ import annotations

import logging
import re
from typing import IO, Any
from uuid import UUID

from pythonjsonlogger.json import JsonFormatter

from domain.values import public_session_id

TEXT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
FORMATS = ("text", "json")
#: An API key as issued (`domain.keys`): its prefix, an underscore and the secret part.
_KEY = re.compile(r"\bsd[ak]_[A-Za-z0-9_-]{8,}")
#: The password of a URL's user information: ``scheme://user:password@``.
_URL_PASSWORD = re.compile(r"(://[^:/@\s]*):[^@/\s]+@")


def redact(text: str) -> str:
    """`text` with API keys and URL passwords masked."""
    if "sd" in text:
        text = _KEY.sub(lambda found: found.group(0)[:4] + "***", text)
    if "://" in text:
        text = _URL_PASSWORD.sub(r"\1:***@", text)
    return text


class SessionFields(logging.Filter):
    """Give every record its fields: the process's `role`, the `sessionId` of a line about one
    session (its `sessionId` extra, or the session's UUID among the arguments: sessions are
    the only aggregates, so a UUID logged is a session's id), and its message with secrets
    masked."""

    def __init__(self, role: str) -> None:
        super().__init__()
        self.role = role

    def filter(self, record: logging.LogRecord) -> bool:
        record.role = self.role
        if not hasattr(record, "sessionId"):
            args = record.args if isinstance(record.args, tuple) else ()
            for arg in args:
                if isinstance(arg, UUID):
                    record.sessionId = public_session_id(arg)
                    break
        message = record.getMessage()
        masked = redact(message)
        if masked != message:
            record.msg, record.args = masked, None
        return True


class _Json(JsonFormatter):
    def formatException(self, ei: Any) -> str:  # noqa: N802 - the base class's name
        text = super().formatException(ei)
        return redact(text if isinstance(text, str) else "\n".join(text))


class _Text(logging.Formatter):
    def formatException(self, ei: Any) -> str:  # noqa: N802 - the base class's name
        return redact(super().formatException(ei))


def configure_logging(
    level: str, fmt: str = "text", role: str = "", stream: IO[str] | None = None
) -> None:
    """Log at `level` to `stream` (standard error), in `fmt` (one of `FORMATS`), as the
    process `role`."""
    handler = logging.StreamHandler(stream)
    handler.addFilter(SessionFields(role))
    if fmt == "json":
        handler.setFormatter(
            _Json(
                "{levelname}{role}{name}{message}",  # extras (sessionId, event...) follow
                style="{",
                rename_fields={"levelname": "level", "name": "logger"},
                timestamp="time",
                json_ensure_ascii=False,
            )
        )
    else:
        handler.setFormatter(_Text(TEXT))
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)


def server_log_config(fmt: str) -> dict[str, Any] | None:
    """The HTTP server's (granian's) logging configuration: in JSON, its lines go through the
    root logger set up by `configure_logging`, so that every line is one JSON object."""
    if fmt != "json":
        return None
    through_root = {"handlers": [], "propagate": True}
    return {"loggers": {"_granian": dict(through_root), "granian.access": dict(through_root)}}
