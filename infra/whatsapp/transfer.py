"""Device stores as `application.moving` reads and writes them, for an export or an import.

- **whatsmeow's** (the neonize gateway): a device is its row of ``whatsmeow_device`` and the
  rows of every table of the store's schema that belong to it (those with an ``our_jid`` or a
  ``jid`` column: identity keys, Signal sessions, pre-keys, sender keys, app-state keys and
  versions, contacts, chat settings, message secrets, privacy tokens, buffers). Tables found
  in the schema, not listed here, so a table a whatsmeow upgrade adds moves too; each row is
  its ``to_jsonb`` (bytes as ``\\x…`` hex) and is written back with ``jsonb_populate_record``,
  every column as it was. Store-wide tables (its version, the LID map cache) do not move.
  Both stores must be at the same whatsmeow schema version.
- **the simulator's**: the device's JID in ``sessiond_simulator_devices``.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from application.moving import DeviceAlreadyStored, DeviceCredentials, DeviceStore, MoveRefused
from infra.whatsapp.devicestore import DEVICE_TABLE, STORE_SCHEMA

#: The columns that tie a row to its device, in the order they are looked for.
OWNER_COLUMNS = ("our_jid", "jid")


class WhatsmeowDevices(DeviceStore):
    """whatsmeow's store in the service's database (schema ``whatsmeow``)."""

    gateway = "neonize"

    def __init__(self, database_url: str, schema: str = STORE_SCHEMA) -> None:
        self.database_url = database_url
        self.schema = schema

    def _connect(self) -> psycopg.Connection[dict[str, Any]]:
        return psycopg.connect(
            self.database_url, row_factory=dict_row, application_name="sessiond-session-move"
        )

    def _table(self, name: str) -> sql.Identifier:
        return sql.Identifier(self.schema, name)

    def _version(self, conn: psycopg.Connection[dict[str, Any]]) -> list[int] | None:
        found = conn.execute(
            "SELECT to_regclass(%s) IS NOT NULL AS present",
            (f"{self.schema}.whatsmeow_version",),
        ).fetchone()
        if not found or not found["present"]:
            return None
        row = conn.execute(
            sql.SQL("SELECT version, compat FROM {}").format(self._table("whatsmeow_version"))
        ).fetchone()
        return None if row is None else [int(row["version"]), int(row["compat"])]

    def _owned_tables(self, conn: psycopg.Connection[dict[str, Any]]) -> dict[str, str]:
        """Every table of the store that holds rows of a device, with its owner column;
        parents first (a row is written after the rows it refers to)."""
        columns: dict[str, set[str]] = defaultdict(set)
        for row in conn.execute(
            "SELECT table_name, column_name FROM information_schema.columns "
            "WHERE table_schema = %s",
            (self.schema,),
        ):
            columns[row["table_name"]].add(row["column_name"])
        owned = {
            table: next(c for c in OWNER_COLUMNS if c in names)
            for table, names in columns.items()
            if any(c in names for c in OWNER_COLUMNS)
        }
        parents: dict[str, set[str]] = defaultdict(set)
        for row in conn.execute(
            "SELECT c.relname AS child, p.relname AS parent FROM pg_constraint k "
            "JOIN pg_class c ON c.oid = k.conrelid JOIN pg_class p ON p.oid = k.confrelid "
            "WHERE k.contype = 'f' AND k.connamespace = %s::regnamespace",
            (self.schema,),
        ):
            if row["child"] != row["parent"]:
                parents[row["child"]].add(row["parent"])
        ordered: list[str] = []
        pending = sorted(owned)
        while pending:
            ready = [t for t in pending if not (parents[t] & set(pending))]
            if not ready:  # a cycle: cannot happen in whatsmeow's schema; keep going anyway
                ready = pending[:1]
            ordered += ready
            pending = [t for t in pending if t not in ready]
        return {table: owned[table] for table in ordered}

    def holds(self, jid: str) -> bool:
        with self._connect() as conn:
            if self._version(conn) is None:
                return False
            found = conn.execute(
                sql.SQL("SELECT 1 FROM {} WHERE jid = %s").format(self._table(DEVICE_TABLE)),
                (jid,),
            ).fetchone()
            return found is not None

    def read(self, jid: str, push_name: str) -> DeviceCredentials:
        with self._connect() as conn:
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            version = self._version(conn)
            tables: dict[str, list[dict[str, Any]]] = {}
            if version is not None:
                for table, column in self._owned_tables(conn).items():
                    rows = conn.execute(
                        sql.SQL("SELECT to_jsonb(t) AS row FROM {} t WHERE {} = %s").format(
                            self._table(table), sql.Identifier(column)
                        ),
                        (jid,),
                    ).fetchall()
                    if rows:
                        tables[table] = [r["row"] for r in rows]
        if not tables.get(DEVICE_TABLE):
            raise MoveRefused(f"the device {jid} is not in this deployment's device store")
        stored_name = tables[DEVICE_TABLE][0].get("push_name") or ""
        return DeviceCredentials(
            gateway=self.gateway,
            jid=jid,
            push_name=push_name or str(stored_name),
            store_version=version,
            tables=tables,
        )

    def write(self, device: DeviceCredentials) -> None:
        if not device.tables.get(DEVICE_TABLE):
            raise MoveRefused("the export holds no whatsmeow device row")
        self._prepare()
        with self._connect() as conn, conn.transaction():
            version = self._version(conn)
            if version != device.store_version:
                raise MoveRefused(
                    f"the export's device store is whatsmeow schema {device.store_version}; "
                    f"this deployment's is {version}: move between deployments of one "
                    "sessiond version"
                )
            owned = self._owned_tables(conn)
            unknown = sorted(set(device.tables) - set(owned))
            if unknown:
                raise MoveRefused(f"this device store has no table {', '.join(unknown)}")
            for table, column in owned.items():
                for row in device.tables.get(table, []):
                    if row.get(column) != device.jid:
                        raise MoveRefused(f"a row of {table} belongs to another device")
                    statement = sql.SQL(
                        "INSERT INTO {table} SELECT * FROM jsonb_populate_record(NULL::{table}, %s)"
                    ).format(table=self._table(table))
                    try:
                        conn.execute(statement, (Jsonb(row),))
                    except psycopg.errors.UniqueViolation:
                        if table == DEVICE_TABLE:
                            raise DeviceAlreadyStored(
                                f"the device {device.jid} is already in this deployment's "
                                "device store"
                            ) from None
                        raise MoveRefused(f"the export holds a row of {table} twice") from None

    def _prepare(self) -> None:
        """Create whatsmeow's schema if no worker of this deployment has yet (Go does)."""
        with self._connect() as conn:
            if self._version(conn) is not None:
                return
        from infra.whatsapp.devicestore import prepare_store  # noqa: PLC0415 - loads Go

        prepare_store(self.database_url)

    def remove(self, jid: str) -> None:
        with self._connect() as conn:
            if self._version(conn) is not None:
                conn.execute(  # the other tables' rows cascade
                    sql.SQL("DELETE FROM {} WHERE jid = %s").format(self._table(DEVICE_TABLE)),
                    (jid,),
                )


class SimulatorDevices(DeviceStore):
    """The simulator's devices (``sessiond_simulator_devices``): a JID is the whole device."""

    gateway = "simulator"

    def __init__(self, database_url: str) -> None:
        self.database_url = database_url

    def holds(self, jid: str) -> bool:
        with psycopg.connect(self.database_url) as conn:
            found = conn.execute(
                "SELECT 1 FROM sessiond_simulator_devices WHERE jid = %s", (jid,)
            ).fetchone()
            return found is not None

    def read(self, jid: str, push_name: str) -> DeviceCredentials:
        if not self.holds(jid):
            raise MoveRefused(f"the device {jid} is not in this deployment's device store")
        return DeviceCredentials(self.gateway, jid, push_name, None, {})

    def write(self, device: DeviceCredentials) -> None:
        with psycopg.connect(self.database_url) as conn:
            inserted = conn.execute(
                "INSERT INTO sessiond_simulator_devices VALUES (%s) ON CONFLICT DO NOTHING",
                (device.jid,),
            ).rowcount
        if not inserted:
            raise DeviceAlreadyStored(
                f"the device {device.jid} is already in this deployment's device store"
            )

    def remove(self, jid: str) -> None:
        with psycopg.connect(self.database_url) as conn:
            conn.execute("DELETE FROM sessiond_simulator_devices WHERE jid = %s", (jid,))


def device_store(gateway: str, database_url: str) -> DeviceStore:
    """The device store of a deployment running `gateway` on the database at `database_url`."""
    if gateway == "neonize":
        return WhatsmeowDevices(database_url)
    return SimulatorDevices(database_url)
