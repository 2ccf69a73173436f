"""An in-process sessiond (every role) on a fresh database, driven through its HTTP API."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from litestar.testing import AsyncTestClient

from infra.bootstrap import Container
from infra.postgres.recorder import PollingApplicationRecorder
from infra.settings import eventsourcing_env
from tests.conftest import ADMIN_KEY, test_settings

ADMIN = {"x-api-key": ADMIN_KEY}


class Api:
    """A test client with helpers that read as the operator's steps."""

    def __init__(self, client: AsyncTestClient[Any], container: Container) -> None:
        self.client = client
        self.container = container

    async def create_session(self, name: str = "Support", **body: Any) -> dict[str, Any]:
        response = await self.client.post("/sessions", json={"name": name, **body}, headers=ADMIN)
        assert response.status_code == 201, response.text
        created: dict[str, Any] = response.json()
        return created

    @staticmethod
    def key(created: dict[str, Any]) -> dict[str, str]:
        return {"x-api-key": created["apiKey"]["key"]}


@pytest.fixture
def env(database_url: str) -> dict[str, str]:
    """The eventsourcing environment of an application on the test database (its recorder
    polling every 0.2 s), for tests that drive projections without the API."""
    PollingApplicationRecorder.poll_interval = 0.2
    return eventsourcing_env(database_url)


@pytest.fixture
def settings_overrides() -> dict[str, str]:
    """Override in a test module to change the in-process server's settings."""
    return {}


@pytest.fixture
async def api(
    database_url: str, tmp_path: Path, settings_overrides: dict[str, str]
) -> AsyncIterator[Api]:
    settings = test_settings(
        tmp_path, database_url, SESSIOND_DEFAULT_RATE_LIMIT="1000", **settings_overrides
    )
    container = Container(settings, database_url, frozenset({"api", "projector", "worker"}))
    app = container.create_api()
    async with AsyncTestClient(app=app) as client:
        yield Api(client, container)
