"""Generations of the views: which copy of each view serves, and the names of its tables.

A view can be rebuilt from the log into a new generation while the active one keeps serving,
then switched to (`infra/runtime/rebuild.py`). ``sessiond_view_generations`` records the active
generation of each projection; a projection without a row is at generation 0, whose tables
keep the names they always had, so databases made before generations existed keep working.
Generation N > 0 suffixes every table of the view with ``_g{N}``: the tracking table is
``{name}_g{N}_tracking``, i.e. the generation is carried by the projection name the runner and
the view are built with (`generation_name`), and views derive their own table names from it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from functools import cache
from typing import Any, TypeVar
from uuid import UUID

import psycopg
from eventsourcing.persistence import Tracking
from eventsourcing.postgres import PostgresDatastore
from eventsourcing.projection import Projection

from projections.messages import MessagePage, MessageRow, MessagesView
from projections.uptime import Transition, UptimeView

T = TypeVar("T")
V = TypeVar("V")

#: A switch is announced here (payload: the projection's name) and on the views' channel.
GENERATIONS_CHANNEL = "sessiond_generations"
SELECT_GENERATIONS = "SELECT name, generation FROM sessiond_view_generations"
_SUFFIX = re.compile(r"_g([0-9]+)_tracking$")


def generation_name(name: str, generation: int) -> str:
    """The projection name of that generation: its tracking table is ``{…}_tracking``."""
    return name if generation == 0 else f"{name}_g{generation}"


def table_suffix(tracking_table_name: str) -> str:
    """``_g{N}`` for a view of generation N > 0 (read from its tracking table), else ``""``."""
    found = _SUFFIX.search(tracking_table_name)
    return "" if found is None else f"_g{found.group(1)}"


def tracking_table(name: str, generation: int) -> str:
    return generation_name(name, generation) + "_tracking"


@cache
def projection_for(projection_class: type[Projection[Any]], generation: int) -> type[Any]:
    """The projection class whose runner reads and writes the tables of `generation`."""
    if generation == 0:
        return projection_class
    return type(
        projection_class.__name__,
        (projection_class,),
        {"name": generation_name(projection_class.name, generation)},
    )


def active_generation(conn: psycopg.Connection[Any], name: str) -> int:
    """The active generation of projection `name`, read on `conn` (0 before any rebuild)."""
    try:
        row = conn.execute(
            "SELECT generation FROM sessiond_view_generations WHERE name = %s", (name,)
        ).fetchone()
    except psycopg.errors.UndefinedTable:  # a database no rebuild-aware process set up yet
        if not conn.autocommit:
            conn.rollback()
        return 0
    return 0 if row is None else int(row[0])


class ActiveViews:
    """The view object of each projection's active generation, on one connection pool.

    `resolve` reads the registry and replaces the view objects of projections whose
    generation changed; readers call `get` each time (never keep a view across a switch).
    """

    def __init__(self, datastore: PostgresDatastore, classes: Mapping[str, type[Any]]) -> None:
        self.datastore = datastore
        self.classes = dict(classes)
        self._views: dict[str, Any] = {}
        self._generations: dict[str, int] = {}
        self._names = {kind: name for name, kind in self.classes.items()}

    def names(self) -> list[str]:
        return list(self.classes)

    def get(self, name: str) -> Any:
        return self._views[name]

    def of(self, kind: type[V]) -> V:
        """The view object of the active generation of the projection whose views are of
        class `kind`."""
        view: V = self._views[self._names[kind]]
        return view

    def generation(self, name: str) -> int:
        return self._generations[name]

    def build(self, name: str, generation: int) -> Any:
        """A view object of projection `name` at `generation` (no table is created)."""
        return self.classes[name](
            datastore=self.datastore, tracking_table_name=tracking_table(name, generation)
        )

    def resolve(self, curs: Any = None) -> set[str]:
        """Follow the registry (on `curs` when given, to read it in the caller's snapshot);
        return the names whose generation changed."""
        if curs is None:
            with self.datastore.cursor() as own:
                own.execute(SELECT_GENERATIONS)
                rows = own.fetchall()
        else:
            curs.execute(SELECT_GENERATIONS)
            rows = curs.fetchall()
        return self.follow(rows)

    def follow(self, rows: Sequence[Mapping[str, Any]]) -> set[str]:
        """`resolve` with the registry's rows already read (``SELECT_GENERATIONS``)."""
        wanted = dict.fromkeys(self.classes, 0)
        wanted.update({r["name"]: int(r["generation"]) for r in rows if r["name"] in wanted})
        changed = set()
        for name, generation in wanted.items():
            if self._generations.get(name) == generation:
                continue
            self._views[name] = self.build(name, generation)
            self._generations[name] = generation
            changed.add(name)
        return changed


class ActiveUptimeView(UptimeView):
    """The uptime view of the active generation, whichever it is when called."""

    def __init__(self, views: ActiveViews, name: str) -> None:
        self.views = views
        self.name = name

    def add_transition(self, session_id: UUID, transition: Transition, tracking: Tracking) -> None:
        self.views.get(self.name).add_transition(session_id, transition, tracking)

    def transitions(self, session_id: UUID, start: datetime, end: datetime) -> list[Transition]:
        found: list[Transition] = self.views.get(self.name).transitions(session_id, start, end)
        return found

    def insert_tracking(self, tracking: Tracking) -> None:
        self.views.get(self.name).insert_tracking(tracking)

    def max_tracking_id(self, application_name: str) -> int | None:
        found: int | None = self.views.get(self.name).max_tracking_id(application_name)
        return found


class ActiveMessagesView(MessagesView):
    """The messages view of the active generation, whichever it is when called. A process
    that does not follow switches (a worker) finds the new generation when the old tables
    are gone."""

    def __init__(self, views: ActiveViews, name: str) -> None:
        self.views = views
        self.name = name

    def _view(self) -> MessagesView:
        view: MessagesView = self.views.get(self.name)
        return view

    def _read(self, read: Callable[[MessagesView], T]) -> T:
        try:
            return read(self._view())
        except psycopg.errors.UndefinedTable:
            self.views.resolve()  # switched and dropped since: read the new generation
            return read(self._view())

    def add_message(self, row: MessageRow, tracking: Tracking) -> None:
        self._view().add_message(row, tracking)

    def update_message(self, message_id: str, changes: dict[str, Any], tracking: Tracking) -> None:
        self._view().update_message(message_id, changes, tracking)

    def insert_tracking(self, tracking: Tracking) -> None:
        self._view().insert_tracking(tracking)

    def max_tracking_id(self, application_name: str) -> int | None:
        return self._read(lambda view: view.max_tracking_id(application_name))

    def get_message(self, message_id: str) -> MessageRow | None:
        return self._read(lambda view: view.get_message(message_id))

    def list_messages(self, page: MessagePage) -> list[MessageRow]:
        return self._read(lambda view: view.list_messages(page))

    def find_by_idempotency_key(self, session_id: str, key: str) -> MessageRow | None:
        return self._read(lambda view: view.find_by_idempotency_key(session_id, key))

    def sent_message(self, session_id: UUID, whatsapp_id: str) -> tuple[str, str] | None:
        return self._read(lambda view: view.sent_message(session_id, whatsapp_id))

    def received_message(self, session_id: UUID, whatsapp_id: str) -> bool:
        return self._read(lambda view: view.received_message(session_id, whatsapp_id))
