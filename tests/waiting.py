"""Waiting for something that happens on another thread or process, in tests."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Literal, TypeVar

T = TypeVar("T")


def eventually(
    check: Callable[[], T | Literal[False] | None],
    what: str = "",
    timeout: float = 30.0,
    interval: float = 0.05,
) -> T:
    """`check()`'s first truthy answer, asked every `interval` seconds; an AssertionError
    naming `what` and the last answer if none came within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what} (last: {found!r})")
        time.sleep(interval)
