"""The dashboard driven over HTTP in-process, the way a browser without JavaScript drives it."""

from __future__ import annotations

import re
from typing import Any

import httpx

from tests.conftest import ADMIN_KEY

TOKEN = re.compile(r'name="csrf_token" value="([^"]+)"')


def token_in(html: str) -> str:
    found = TOKEN.search(html)
    assert found, "the page has no form with a CSRF token"
    return found.group(1)


class Dashboard:
    def __init__(self, client: Any) -> None:
        self.client = client
        self.token = ""

    async def get(self, path: str, **kwargs: Any) -> httpx.Response:
        response: httpx.Response = await self.client.get(path, follow_redirects=False, **kwargs)
        if "csrf_token" in response.text:
            self.token = token_in(response.text)
        return response

    async def post(
        self, path: str, form: dict[str, str | list[str]] | None = None, *, token: bool = True
    ) -> httpx.Response:
        data = dict(form or {})
        if token:
            data["csrf_token"] = self.token
        response: httpx.Response = await self.client.post(path, data=data, follow_redirects=False)
        if "csrf_token" in response.text:
            self.token = token_in(response.text)
        return response

    async def sign_in(self, key: str = ADMIN_KEY) -> httpx.Response:
        await self.get("/dashboard/sign-in")
        response = await self.post("/dashboard/sign-in", {"admin_key": key, "next": "/dashboard/"})
        if response.status_code == 303:  # as a browser does: the next page has the new token
            await self.get(response.headers["location"])
        return response

    async def create_session(self, name: str = "Support") -> str:
        await self.get("/dashboard/sessions/new")
        response = await self.post("/dashboard/sessions", {"name": name})
        assert response.status_code == 303, response.text
        location = response.headers["location"]
        assert location.endswith("/link")
        return location.split("/")[3]
