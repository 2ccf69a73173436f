"""The Swagger UI page loads everything from sessiond itself: no CDN, nothing from elsewhere."""

from __future__ import annotations

import re

from tests.integration.conftest import Api


async def test_the_swagger_page_and_its_assets_are_served_here(api: Api) -> None:
    page = await api.client.get("/schema/swagger")
    assert page.status_code == 200
    assert "text/html" in page.headers["content-type"]
    links = re.findall(r"""(?:src|href)\s*=\s*['"]([^'"]+)['"]""", page.text)
    assert links, page.text
    assert not [link for link in links if re.match(r"(?i)^(?:[a-z]+:)?//", link)], links
    for link in links:  # every script, style and icon is here, and public like the page
        asset = await api.client.get(link)
        assert asset.status_code == 200, link
        assert asset.content
    document = await api.client.get("/schema/openapi.json")
    assert document.status_code == 200
    assert not any(path.startswith("/schema/assets") for path in document.json()["paths"])


async def test_every_operation_has_an_explicit_operation_id_and_a_tag(api: Api) -> None:
    """Generated clients name their functions after `operationId`: each is written by hand
    (camelCase, unique), never derived from the path, and each operation has a tag."""
    document = (await api.client.get("/schema/openapi.json")).json()
    seen: dict[str, str] = {}
    for path, item in document["paths"].items():
        for method, operation in item.items():
            if method not in {"get", "post", "put", "patch", "delete"}:
                continue
            where = f"{method.upper()} {path}"
            operation_id = operation.get("operationId", "")
            assert re.fullmatch(r"[a-z]+(?:[A-Z][a-z]+)*", operation_id), where
            assert operation_id not in seen, (where, seen.get(operation_id))
            seen[operation_id] = where
            assert operation.get("tags"), where
    assert seen["getSessionStatus"] == "GET /sessions/{session_id}/status"
    assert seen["createSession"] == "POST /sessions"
