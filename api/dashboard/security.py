"""Who may use the dashboard: sign-in with the admin key, an encrypted cookie session, and a
CSRF token per session checked on every form that changes something."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from typing import Any
from urllib.parse import quote

from litestar import Request
from litestar.connection import ASGIConnection
from litestar.handlers.base import BaseRouteHandler
from litestar.middleware.session.client_side import ClientSideSessionBackend, CookieBackendConfig

from api.context import ApiContext
from application.keys import hash_key

DASHBOARD = "/dashboard"
SIGN_IN = DASHBOARD + "/sign-in"
COOKIE = "sessiond_dashboard"
#: A sign-in lasts this long, however active the operator is (the cookie itself is renewed).
SIGNED_IN_FOR = 12 * 3600
CSRF_FIELD = "csrf_token"
#: Route option: the route is open without signing in (the sign-in page itself).
PUBLIC = "dashboard_public"
#: Route option of the live streams: the cookie is read, never written (see `session_of`).
SKIP_SESSION = "skip_session"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
#: Every page: nothing but sessiond's own scripts, styles and images; never in a frame.
PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self'; style-src 'self'; script-src 'self'; "
        "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; "
        "frame-ancestors 'none'; form-action 'self'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


class SignInRequired(Exception):
    """The page needs a signed-in operator; `next` is where to come back to."""

    def __init__(self, next_path: str) -> None:
        super().__init__(next_path)
        self.next = next_path


class CsrfRefused(Exception):
    """A form was posted without this session's CSRF token (or with another one)."""


def cookie_secret(admin_key_hash: str, configured: str | None) -> bytes:
    """The 32-byte key that encrypts and authenticates the cookie (AES-GCM).

    Derived with HMAC from the admin key's hash, so every process and every restart agrees on
    it, and changing the admin key signs everyone out; keyed by SESSIOND_DASHBOARD_SECRET when
    set (then a reader of the database, who can see the hash, cannot forge a cookie).
    """
    key = (configured or "sessiond-dashboard-cookie").encode()
    return hmac.new(key, admin_key_hash.encode(), hashlib.sha256).digest()


def cookie_config(ctx: ApiContext) -> CookieBackendConfig:
    return CookieBackendConfig(
        secret=cookie_secret(ctx.admin_key_hash, ctx.dashboard_secret),
        key=COOKIE,
        max_age=SIGNED_IN_FOR,
        path=DASHBOARD,
        httponly=True,
        samesite="strict",
        secure=ctx.dashboard_secure_cookie,
        exclude_opt_key=SKIP_SESSION,
        # The middleware sits on the app (a router's copy could not hold the cipher): it
        # leaves every path outside the dashboard alone.
        exclude=f"^/(?!{DASHBOARD[1:]}(/|$)|$)",
    )


class Sessions:
    """Reads the cookie session, also on routes that skip the session middleware."""

    def __init__(self, config: CookieBackendConfig) -> None:
        self.config = config
        self._backend = ClientSideSessionBackend(config)

    async def session_of(self, connection: ASGIConnection[Any, Any, Any, Any]) -> dict[str, Any]:
        # A live stream answers long after its request: if it wrote the cookie it could bring
        # back a session that a sign-out in the meantime cleared. So it only reads it.
        if connection.route_handler.opt.get(SKIP_SESSION):
            return await self._backend.load_from_connection(connection)
        session = connection.scope.get("session")
        return session if isinstance(session, dict) else {}


def is_signed_in(session: dict[str, Any]) -> bool:
    since = session.get("since")
    return (
        session.get("admin") is True
        and isinstance(since, int | float)
        and 0 <= time.time() - since < SIGNED_IN_FOR
    )


async def sign_in_left(connection: ASGIConnection[Any, Any, Any, Any]) -> float:
    """Seconds until the operator's sign-in expires (0 when not signed in)."""
    sessions: Sessions = connection.app.state[SESSIONS_STATE]
    session = await sessions.session_of(connection)
    if not is_signed_in(session):
        return 0.0
    return max(0.0, float(session["since"]) + SIGNED_IN_FOR - time.time())


def admin_key_matches(admin_key_hash: str, key: str) -> bool:
    """Compare in constant time (through the hashes: the key's length is not revealed)."""
    return hmac.compare_digest(hash_key(key), admin_key_hash)


def sign_in(request: Request[Any, Any, Any]) -> None:
    # A new token at sign-in: one seen before it (on the sign-in page) is worth nothing after.
    request.set_session({"admin": True, "since": int(time.time()), "csrf": new_token()})


def new_token() -> str:
    return secrets.token_urlsafe(32)


def csrf_token(request: Request[Any, Any, Any]) -> str:
    """This session's CSRF token, made on the first page it sees."""
    token = request.session.get("csrf")
    if not isinstance(token, str):
        token = new_token()
        request.session["csrf"] = token
    return token


def safe_next(path: str | None) -> str:
    """Where to go after signing in: a dashboard path only (no open redirect)."""
    if path and path.startswith(DASHBOARD) and not path.startswith("//") and "\\" not in path:
        return path
    return DASHBOARD + "/"


def sign_in_url(next_path: str) -> str:
    return f"{SIGN_IN}?next={quote(next_path, safe='/')}"


#: Where the app's state keeps the dashboard's `Sessions`.
SESSIONS_STATE = "dashboard_sessions"


async def require_sign_in(
    connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler
) -> None:
    """Every dashboard page but the sign-in needs a signed-in operator."""
    if handler.opt.get(PUBLIC):
        return
    sessions: Sessions = connection.app.state[SESSIONS_STATE]
    if not is_signed_in(await sessions.session_of(connection)):
        query = connection.scope.get("query_string", b"").decode("latin-1")
        raise SignInRequired(connection.url.path + (f"?{query}" if query else ""))


async def check_csrf(request: Request[Any, Any, Any]) -> None:
    """Before every dashboard request: a form that changes something must carry the token."""
    if request.method in SAFE_METHODS:
        return
    expected = request.session.get("csrf")
    form = await request.form()
    sent = form.get(CSRF_FIELD)
    if (
        not isinstance(expected, str)
        or not isinstance(sent, str)
        or not hmac.compare_digest(sent.encode(), expected.encode())
    ):
        raise CsrfRefused
