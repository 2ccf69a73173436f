"""The API's documentation page (Swagger UI at ``/schema/swagger``), with every script, style
and icon served by sessiond itself from the `swagger-ui-bundle` package: no CDN, so it works
on a closed network and loads nothing from elsewhere."""

from __future__ import annotations

from pathlib import Path

from litestar import Router
from litestar.openapi.plugins import SwaggerRenderPlugin
from litestar.static_files import create_static_files_router
from swagger_ui_bundle import swagger_ui_path

ASSETS = "/schema/assets"


def swagger_plugin() -> SwaggerRenderPlugin:
    return SwaggerRenderPlugin(
        js_url=f"{ASSETS}/swagger-ui-bundle.js",
        css_url=f"{ASSETS}/swagger-ui.css",
        standalone_preset_js_url=f"{ASSETS}/swagger-ui-standalone-preset.js",
        favicon=f"<link rel='icon' type='image/png' href='{ASSETS}/favicon-32x32.png'>",
    )


def swagger_assets() -> Router:
    """The Swagger UI files, public like the page and the document."""
    return create_static_files_router(
        path=ASSETS,
        directories=[Path(str(swagger_ui_path))],
        include_in_schema=False,
        name="swagger-assets",
        security=[],
    )
