"""The Jinja2 environment of the dashboard: pages through Litestar's `TemplateConfig`, and the
same templates rendered as fragments for the live streams."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, select_autoescape
from litestar.plugins.jinja import JinjaTemplateEngine
from litestar.template import TemplateConfig

from api.dashboard.present import FILTERS, duration, event_name, percent, when

HERE = Path(__file__).resolve().parent
TEMPLATES = HERE / "templates"
STATIC = HERE / "static"


def _static_version() -> str:
    """Changes when a static file changes: their URLs carry it, so they can be cached long."""
    digest = hashlib.sha256()
    for path in sorted(STATIC.iterdir()):
        digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()[:12]


def _environment() -> Environment:
    env = Environment(
        loader=FileSystemLoader(TEMPLATES),
        autoescape=select_autoescape(default=True),
        trim_blocks=True,
        lstrip_blocks=True,
        auto_reload=False,
    )
    env.filters.update(when=when, duration=duration, percent=percent, event_name=event_name)
    env.globals.update(static_version=_static_version(), FILTERS=FILTERS)
    return env


ENVIRONMENT = _environment()


def template_config() -> TemplateConfig[JinjaTemplateEngine]:
    return TemplateConfig(instance=JinjaTemplateEngine.from_environment(ENVIRONMENT))


def fragment(name: str, **context: Any) -> str:
    """A template rendered outside a response (the live streams send fragments)."""
    return ENVIRONMENT.get_template(name).render(**context)
