"""Group commit: concurrent commands share one transaction, each keeping its own outcome.

eventsourcing's PostgreSQL recorder serialises writers with a table lock, so N commands
saved one by one cost N lock round trips; saved together they cost one. Every command still
loads its session, checks its invariants and carries its own optimistic-concurrency check
(the version it saw): if a batch fails on a conflict, each of its commands is saved again on
its own, so only the command that conflicted gets the error.

Under load, the committer lingers up to half a millisecond for as many commands as the last
few batches held (the callers of the batch just saved come straight back): on 8 writers this
doubles the batch size and lifts throughput by half. A lone writer never waits, except for
the four batches after a burst (half a millisecond each at most).
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Any

from eventsourcing.persistence import IntegrityError, Recording

Pending = tuple[Any, list[Any]]  # an aggregate and the events collected from it
RecordFunction = Callable[[list[Pending]], Sequence[Recording[Any]]]


class GroupCommitter:
    """Collects aggregates from many threads and saves them in batches on one thread."""

    def __init__(
        self, record: RecordFunction, *, max_batch: int = 200, linger: float = 0.0005
    ) -> None:
        self._record = record
        self._max_batch = max_batch
        self._linger = linger
        self._recent_sizes: deque[int] = deque([1], maxlen=4)
        self._queue: deque[tuple[Pending, Future[int]]] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self._thread: threading.Thread | None = None

    def save(self, aggregate: Any) -> int:
        """Save one aggregate's pending events; return the position of its last event.

        The events are collected here, so that a batch that fails can be recorded again,
        command by command, with the very same events.
        """
        future: Future[int] = Future()
        pending = (aggregate, list(aggregate.collect_events()))
        with self._cond:
            if self._closed:
                raise RuntimeError("the application is closed")
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="group-commit", daemon=True)
                self._thread.start()
            self._queue.append((pending, future))
            self._cond.notify()
        return future.result()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(10)

    def _take_batch(self) -> list[tuple[Pending, Future[int]]]:
        """Up to `max_batch` queued saves, at most one per aggregate (the rest wait their turn)."""
        with self._cond:
            while not self._queue and not self._closed:
                self._cond.wait()
            # Commands come back as soon as their last batch is saved: give them a moment to
            # join, up to as many as the last few batches held, so batches stay large under load.
            expected = max(self._recent_sizes)
            if len(self._queue) < expected:
                self._cond.wait_for(
                    lambda: len(self._queue) >= expected or self._closed, timeout=self._linger
                )
            batch: list[tuple[Pending, Future[int]]] = []
            later: list[tuple[Pending, Future[int]]] = []
            ids: set[Any] = set()
            while self._queue and len(batch) < self._max_batch:
                item = self._queue.popleft()
                aggregate_id = item[0][0].id
                (later if aggregate_id in ids else batch).append(item)
                ids.add(aggregate_id)
            self._queue.extendleft(reversed(later))
            self._recent_sizes.append(len(batch))
            return batch

    def _run(self) -> None:
        while True:
            batch = self._take_batch()
            if not batch:
                return
            try:
                self._commit(batch)
            except BaseException as error:  # pragma: no cover - _commit settles every future
                for _, future in batch:
                    if not future.done():
                        future.set_exception(error)

    def _commit(self, batch: list[tuple[Pending, Future[int]]]) -> None:
        try:
            recordings = self._record([pending for pending, _ in batch])
        except IntegrityError:
            if len(batch) == 1:
                batch[0][1].set_exception(IntegrityError("the session changed concurrently"))
                return
            for item in batch:  # find out which command conflicted: each on its own
                self._commit([item])
            return
        except Exception as error:
            for _, future in batch:
                future.set_exception(error)
            return
        last: dict[Any, int] = {}
        for recording in recordings:
            last[recording.domain_event.originator_id] = recording.notification.id
        for (aggregate, _), future in batch:
            position = last.get(aggregate.id)
            if position is None:  # pragma: no cover - every pending item has events
                future.set_exception(RuntimeError("nothing was recorded for this command"))
            else:
                future.set_result(position)
