"""How a `sessiond` command refuses: one line on stderr, and its exit code."""

from __future__ import annotations

import sys


def refused(message: object, code: int) -> int:
    """Say why on stderr (``sessiond: …``, one line) and answer the exit code: 1 when the
    command could not do what was asked, 2 when it was asked wrongly (settings, usage)."""
    print(f"sessiond: {message}", file=sys.stderr)
    return code
