"""A worker freezes its long-lived objects out of the collector's full collections, and
collects what died frozen the next time round (`infra.runtime.worker.refreeze_gc`)."""

from __future__ import annotations

import gc
import weakref

from infra.runtime.worker import refreeze_gc


class Node:
    def __init__(self) -> None:
        self.me = self  # a cycle: only the collector frees it


def test_a_cycle_that_dies_frozen_is_collected_at_the_next_refreeze() -> None:
    try:
        node = Node()
        alive = weakref.ref(node)
        refreeze_gc()
        assert gc.get_freeze_count() > 0
        del node
        gc.collect()
        assert alive() is not None  # frozen: full collections no longer walk it
        refreeze_gc()
        assert alive() is None
    finally:
        gc.unfreeze()
