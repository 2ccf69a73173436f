"""Signing in with the admin key, and signing out."""

from __future__ import annotations

from typing import Annotated

from litestar import get, post
from litestar.params import QueryParameter
from litestar.response import Redirect, Template

from api.auth import note_failed_authentication
from api.context import Service
from api.dashboard.security import (
    PUBLIC,
    SIGN_IN,
    admin_key_matches,
    is_signed_in,
    safe_next,
    sign_in,
)
from api.dashboard.web import DashboardController, DashRequest, page, see_other


class SignInController(DashboardController):
    @get("/sign-in", opt={PUBLIC: True})
    async def sign_in_page(
        self,
        request: DashRequest,
        next_path: Annotated[str | None, QueryParameter(name="next")] = None,
        signed_out: Annotated[bool, QueryParameter()] = False,
    ) -> Template | Redirect:
        """The sign-in form (a signed-in operator goes straight on)."""
        if is_signed_in(request.session):
            return see_other(safe_next(next_path))
        notice = "You are signed out." if signed_out else None
        return page(request, "sign_in.html", next=safe_next(next_path), error=None, notice=notice)

    @post("/sign-in", opt={PUBLIC: True})
    async def sign_in(
        self, request: DashRequest, *, admin_key_hash: Service[str]
    ) -> Template | Redirect:
        """Check the admin key (in constant time); never echo it back."""
        form = await request.form()
        key = str(form.get("admin_key") or "").strip()
        target = safe_next(str(form.get("next") or ""))
        if not key:
            return page(
                request,
                "sign_in.html",
                status=422,
                next=target,
                error="Enter the admin key.",
                notice=None,
            )
        if not admin_key_matches(admin_key_hash, key):
            note_failed_authentication(request)  # guessing the admin key here is throttled too
            return page(
                request,
                "sign_in.html",
                status=401,
                next=target,
                error="That is not the admin key. Check it and try again.",
                notice=None,
            )
        sign_in(request)
        return see_other(target)

    @post("/sign-out")
    async def sign_out(self, request: DashRequest) -> Redirect:
        """Forget the sign-in (the cookie is cleared)."""
        request.clear_session()
        return see_other(SIGN_IN + "?signed_out=true")
