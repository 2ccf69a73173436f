"""The dashboard driven over HTTP in-process, the way a browser without JavaScript drives it."""

from __future__ import annotations

import re
from typing import Any

import httpx

from tests.conftest import ADMIN_KEY
from tests.integration.conftest import ADMIN, Api

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


async def signed_in(api: Api) -> Dashboard:
    """The dashboard, signed in with the admin key."""
    dash = Dashboard(api.client)
    await dash.sign_in()
    return dash


async def with_session(api: Api, name: str = "Support") -> tuple[Dashboard, str]:
    """The dashboard, signed in, and the id of a session created on it."""
    dash = await signed_in(api)
    return dash, await dash.create_session(name)


async def listed(api: Api, path: str) -> list[dict[str, object]]:
    """The items of a JSON list of the API, read with the admin key."""
    response = await api.client.get(path, headers=ADMIN)
    assert response.status_code == 200, response.text
    items: list[dict[str, object]] = response.json()["items"]
    return items
