"""A page's set writes (`infra.postgres.views.SetWrite`) run as a few statements over columns,
not one statement per row: each key's writes must still run in their order, one statement must
never meet a key twice (``ON CONFLICT DO UPDATE`` would fail), a write that replaces its row
keeps only the last, and any other statement is a barrier that everything before it precedes.
Checked here on a cursor that records what it is asked; the PostgreSQL side is checked by
tests/integration/test_batched_projections.py (a backlog applied in pages gives the views each
event alone would)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, cast

from psycopg import Cursor
from psycopg.rows import DictRow

from infra.postgres.views import SetWrite, _write_in_order


class RecordingCursor:
    """What `_write_in_order` sent, in order: (statement, columns or rows)."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, Any]] = []
        self.connection = self

    @contextmanager
    def pipeline(self) -> Iterator[None]:
        yield

    def execute(self, statement: str, params: Any) -> None:
        self.sent.append((statement, params))

    def executemany(self, statement: str, params: list[Any]) -> None:
        self.sent.append((statement, params))


def pair_write(name: str, *, replaces: bool = False) -> SetWrite:
    """A write of rows (key, value): its statement is its name."""
    return SetWrite([name], key=lambda row: row[0], replaces=replaces)


def run(writes: list[tuple[Any, Any]]) -> list[tuple[str, Any]]:
    cursor = RecordingCursor()
    _write_in_order(cast("Cursor[DictRow]", cursor), writes)
    return cursor.sent


def test_each_keys_writes_keep_their_order_and_each_statement_meets_a_key_once() -> None:
    upsert, clear = pair_write("upsert"), pair_write("clear")
    sent = run(
        [
            (upsert, ("a", 1)),
            (clear, ("a", 2)),
            (upsert, ("b", 3)),
            (upsert, ("a", 4)),
            (clear, ("b", 5)),
        ]
    )
    # Layer 0: the first write of each key; layer 1: the second; layer 2: a's third.
    assert sent == [
        ("upsert", [["a", "b"], [1, 3]]),
        ("clear", [["a", "b"], [2, 5]]),
        ("upsert", [["a"], [4]]),
    ]
    for _, columns in sent:
        assert len(set(columns[0])) == len(columns[0])  # no key twice in one statement


def test_a_write_that_replaces_its_row_keeps_only_the_last_of_a_run() -> None:
    save = pair_write("save", replaces=True)
    sent = run([(save, ("a", 1)), (save, ("b", 2)), (save, ("a", 3)), (save, ("a", 4))])
    assert sent == [("save", [["a", "b"], [4, 2]])]


def test_a_replacing_write_after_another_write_of_its_key_is_not_moved_before_it() -> None:
    save, note = pair_write("save", replaces=True), pair_write("note")
    sent = run([(save, ("a", 1)), (note, ("a", 2)), (save, ("a", 3))])
    assert sent == [("save", [["a"], [1]]), ("note", [["a"], [2]]), ("save", [["a"], [3]])]


def test_a_write_of_several_rows_sends_each_and_another_statement_is_a_barrier() -> None:
    clear = SetWrite(["clear"], rows=lambda w: [(w[0], kind) for kind in w[1]], key=lambda w: w[0])
    upsert = pair_write("upsert")
    sent = run(
        [
            (upsert, ("a", 1)),
            (clear, ("a", ["retry", "start"])),
            ("UPDATE other", {"x": 1}),
            ("UPDATE other", {"x": 2}),
            (upsert, ("a", 5)),
        ]
    )
    assert sent == [
        ("upsert", [["a"], [1]]),
        ("clear", [["a", "a"], ["retry", "start"]]),
        ("UPDATE other", [{"x": 1}, {"x": 2}]),  # one executemany, after what came before
        ("upsert", [["a"], [5]]),  # after the barrier, though its key's layer was free
    ]


def test_a_write_with_no_rows_sends_nothing() -> None:
    clear = SetWrite(["clear"], rows=lambda w: [(w[0], k) for k in w[1]], key=lambda w: w[0])
    assert run([(clear, ("a", []))]) == []
