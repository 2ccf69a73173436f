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
