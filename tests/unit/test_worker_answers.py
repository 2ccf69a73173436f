"""A worker answers the requests it ran together (one statement for those done meanwhile), but
never holds a finished request's answer back for a slow one, and answers a failure as one."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace
from typing import Any

from application.errors import GatewayFailed
from infra.postgres.gateway import Answer
from infra.runtime.worker import GatewayWorker


class Store:
    def __init__(self, failures: int = 0) -> None:
        self.batches: list[list[Answer]] = []
        self.answered = threading.Event()
        self.failures = failures  # how many writes fail first, as a database gone would

    def answer_requests(self, answers: list[Answer]) -> None:
        if self.failures:
            self.failures -= 1
            raise OSError("the database is away")
        self.batches.append(list(answers))
        self.answered.set()


def stub_worker(pool: ThreadPoolExecutor, run: Any, store: Store) -> SimpleNamespace:
    """What `_answer_all` uses of a worker."""
    worker = SimpleNamespace(_pool=pool, _run_request=run, store=store)
    worker._stopping = threading.Event()
    worker._write_answers = lambda answers: GatewayWorker._write_answers(worker, answers)  # type: ignore[arg-type]
    return worker


def first_waits(release: threading.Event) -> Any:
    """A request runner: request 1 runs until `release`, every other one at once."""

    def run(request: dict[str, Any]) -> Answer:
        if request["id"] == 1:
            assert release.wait(10)
        return Answer(request["id"], {"position": request["id"]})

    return run


def answering(worker: SimpleNamespace, ids: list[int]) -> threading.Thread:
    """`_answer_all` of those requests, started on a thread of its own (a daemon: a
    regression must fail the test, not hang the run at exit)."""
    thread = threading.Thread(
        target=GatewayWorker._answer_all, args=(worker, [{"id": i} for i in ids]), daemon=True
    )
    thread.start()
    return thread


def test_a_slow_request_holds_up_no_other_answer_and_many_share_a_statement() -> None:
    release = threading.Event()
    store = Store()
    with ThreadPoolExecutor(4) as pool:
        thread = answering(stub_worker(pool, first_waits(release), store), list(range(1, 31)))
        assert store.answered.wait(10)
        # Everything but the slow request is answered while it still runs...
        deadline = threading.Event()
        while sum(len(b) for b in store.batches) < 29 and not deadline.wait(0.01):
            pass
        assert sorted(a.request_id for b in store.batches for a in b) == list(range(2, 31))
        assert len(store.batches) < 29  # ...in fewer statements than answers
        release.set()
        thread.join(10)
    assert store.batches[-1] == [Answer(1, {"position": 1})]


def test_a_request_that_fails_is_answered_with_its_error() -> None:
    def execute(session_id: Any, action: str, args: dict[str, Any]) -> dict[str, Any]:
        raise RuntimeError("the client went away")

    worker = SimpleNamespace(_execute=execute)
    answer = GatewayWorker._run_request(
        worker,  # type: ignore[arg-type]
        {"id": 7, "session_id": None, "action": "drop", "args": {}},
    )
    assert answer == Answer(7, None, (GatewayFailed.code, "the client went away"))


def test_requests_cancelled_by_a_closing_worker_do_not_hold_up_the_answering() -> None:
    release = threading.Event()
    store = Store()
    pool = ThreadPoolExecutor(1)
    thread = answering(stub_worker(pool, first_waits(release), store), [1, 2, 3])
    pool.shutdown(wait=False, cancel_futures=True)  # as `close` does: 2 and 3 never run
    release.set()
    thread.join(10)
    assert not thread.is_alive()
    # 2 and 3 stay claimed, for the session's next holder.
    assert store.batches == [[Answer(1, {"position": 1})]]


def test_a_failed_write_of_answers_is_tried_again() -> None:
    store = Store(failures=1)
    with ThreadPoolExecutor(2) as pool:
        worker = stub_worker(pool, lambda r: Answer(r["id"], {}), store)
        GatewayWorker._answer_all(worker, [{"id": 1}])  # type: ignore[arg-type]
    assert store.batches == [[Answer(1, {})]]


def test_answers_the_database_keeps_refusing_are_given_up_and_later_ones_written() -> None:
    store = Store(failures=3)
    with ThreadPoolExecutor(1) as pool:
        worker = stub_worker(pool, lambda r: Answer(r["id"], {}), store)
        GatewayWorker._answer_all(worker, [{"id": 1}])  # type: ignore[arg-type]
        GatewayWorker._answer_all(worker, [{"id": 2}])  # type: ignore[arg-type]
    assert store.batches == [[Answer(2, {})]]
