"""Where sessions run: each live gateway worker's fair share, and how many sessions a worker
over its share hands to the others (pure decisions; the worker applies them)."""

from __future__ import annotations

from collections.abc import Collection, Mapping


def share(worker: str, workers: Collection[str], wanted: int) -> int:
    """How many of the `wanted` sessions `worker` should hold among the live `workers`
    (itself counted even if not yet seen live): an even split, the remainder going one each
    to the first workers by id, so shares differ by one at most and sum to `wanted`."""
    everyone = sorted({*workers, worker})
    base, extra = divmod(max(0, wanted), len(everyone))
    return base + (1 if everyone.index(worker) < extra else 0)


def to_hand_over(worker: str, held: int, counts: Mapping[str, int], wanted: int, batch: int) -> int:
    """How many sessions `worker` (holding `held`) hands over this tick: what it holds above
    its share, no more than the other live workers (`counts`: what each holds) lack of
    theirs — a session nobody can take stays where it is — and at most `batch`."""
    workers = {*counts, worker}
    surplus = held - share(worker, workers, wanted)
    if surplus <= 0:
        return 0
    room = sum(
        max(0, share(other, workers, wanted) - counts.get(other, 0))
        for other in workers
        if other != worker
    )
    return max(0, min(surplus, room, batch))
