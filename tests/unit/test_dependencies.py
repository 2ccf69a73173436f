"""Controllers and the dashboard's pages receive their services from the app's dependency
providers, never by reading the context object the composition root hands to `create_app`."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

API = Path(__file__).parents[2] / "api"
CONTROLLERS = sorted((API / "controllers").glob("*.py"))
#: The dashboard's modules with pages (`routes.py` builds the dashboard from the context).
DASHBOARD_PAGES = sorted(
    path for path in (API / "dashboard").glob("*.py") if "(DashboardController)" in path.read_text()
)


@pytest.mark.parametrize("module", CONTROLLERS, ids=lambda path: path.name)
def test_no_controller_reads_the_context_object_from_the_app_state(module: Path) -> None:
    tree = ast.parse(module.read_text())
    handlers = [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.AsyncFunctionDef | ast.FunctionDef)
        and any(_is_route(decorator) for decorator in node.decorator_list)
    ]
    for handler in handlers:
        _check_no_context(module, handler)


@pytest.mark.parametrize("module", DASHBOARD_PAGES, ids=lambda path: path.name)
def test_no_dashboard_page_reads_the_context_object(module: Path) -> None:
    # The whole module, not only its handlers: their helpers (`_posted`, `_command`…) too.
    _check_no_context(module, ast.parse(module.read_text()))


def _check_no_context(module: Path, tree: ast.AST) -> None:
    for node in ast.walk(tree):
        # Check: no `….state.ctx`, `….state["ctx"]`, `ctx_of(…)`, nor an ApiContext.
        if isinstance(node, ast.Attribute):
            assert node.attr != "ctx", f"{module.name}:{node.lineno} reads the context"
        if isinstance(node, ast.Name):
            assert node.id not in {"ApiContext", "ctx_of"}, (
                f"{module.name}:{node.lineno} uses {node.id}"
            )
        if isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant):
            assert node.slice.value != "ctx", f"{module.name}:{node.lineno} reads the context"


def _is_route(decorator: ast.expr) -> bool:
    target = decorator.func if isinstance(decorator, ast.Call) else decorator
    return isinstance(target, ast.Name) and target.id in {"get", "post", "put", "patch", "delete"}


def test_every_controller_module_has_routes_that_the_check_above_sees() -> None:
    # Check the check: it finds route handlers in the controller modules (a rename of the
    # decorators would otherwise make it pass on nothing).
    found = 0
    for module in CONTROLLERS:
        tree = ast.parse(module.read_text())
        found += sum(
            1
            for node in ast.walk(tree)
            if isinstance(node, ast.AsyncFunctionDef)
            and any(_is_route(d) for d in node.decorator_list)
        )
    assert found >= 40


def test_the_check_of_the_dashboard_sees_its_pages() -> None:
    names = {path.name for path in DASHBOARD_PAGES}
    assert {"listing.py", "session.py", "signin.py", "events.py"} <= names
