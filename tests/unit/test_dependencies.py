"""Controllers receive their services from the app's dependency providers, never by reading
the context object the composition root hands to `create_app`."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

CONTROLLERS = sorted((Path(__file__).parents[2] / "api" / "controllers").glob("*.py"))


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
        for node in ast.walk(handler):
            # Check: no `….state.ctx`, `….state["ctx"]`, nor an ApiContext in a handler.
            if isinstance(node, ast.Attribute):
                assert node.attr != "ctx", f"{module.name}:{node.lineno} reads the context"
            if isinstance(node, ast.Name):
                assert node.id != "ApiContext", f"{module.name}:{node.lineno} uses ApiContext"
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
