"""whatsmeow's device store as a session move reads and writes it (`infra.whatsapp.transfer`),
between two databases whose stores whatsmeow (Go, offline) created: a device is copied whole
and exactly, and a write that cannot be done whole writes nothing."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import msgspec
import psycopg
import pytest

from application.moving import DeviceAlreadyStored, MoveRefused
from infra.whatsapp.devicestore import prepare_store
from infra.whatsapp.transfer import SimulatorDevices, WhatsmeowDevices
from tests.conftest import drop_database, empty_database
from tests.fakes.devices import FAKE_JID, insert_fake_device

pytestmark = pytest.mark.postgres
OTHER_JID = "15557654321:4@s.whatsapp.net"


@pytest.fixture
def other_database_url(pg_base_url: str) -> Iterator[str]:
    url = empty_database(pg_base_url)
    yield url
    drop_database(pg_base_url, url)


def rows(url: str) -> dict[str, Any]:
    with psycopg.connect(url) as conn:
        return {
            table: sorted(map(repr, conn.execute(f"SELECT * FROM whatsmeow.{table}").fetchall()))
            for table in ("whatsmeow_device", "whatsmeow_identity_keys", "whatsmeow_pre_keys")
        }


def test_a_device_is_copied_whole_and_a_write_that_cannot_be_whole_writes_nothing(
    database_url: str, other_database_url: str
) -> None:
    prepare_store(database_url)
    insert_fake_device(database_url)
    insert_fake_device(database_url, OTHER_JID)  # another device of the same store
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO whatsmeow.whatsmeow_pre_keys VALUES "
            "(%s, 5, decode(repeat('05', 32), 'hex'), true)",
            (FAKE_JID,),
        )
    source = WhatsmeowDevices(database_url)
    device = source.read(FAKE_JID, "")
    assert device.push_name == "Fake phone" and device.store_version is not None
    assert set(device.tables) == {
        "whatsmeow_device",
        "whatsmeow_identity_keys",
        "whatsmeow_pre_keys",
    }  # the other device's rows are not in it
    device = msgspec.json.decode(msgspec.json.encode(device), type=type(device))  # as in a file
    with pytest.raises(MoveRefused, match="not in this deployment's device store"):
        source.read("15550000000:1@s.whatsapp.net", "")

    # A destination whose store does not exist yet: it is created (by Go), then written.
    target = WhatsmeowDevices(other_database_url)
    assert not target.holds(FAKE_JID)
    target.write(device)
    assert target.holds(FAKE_JID)
    copied, original = rows(other_database_url), rows(database_url)
    assert copied["whatsmeow_pre_keys"] == original["whatsmeow_pre_keys"]
    assert set(copied["whatsmeow_device"]) < set(original["whatsmeow_device"])
    assert len(copied["whatsmeow_device"]) == 1
    with pytest.raises(DeviceAlreadyStored):
        target.write(device)

    # Whatever cannot be written whole writes nothing: a row of another device slipped in,
    # another whatsmeow schema version, a table this store does not have.
    target.remove(FAKE_JID)
    before = rows(other_database_url)
    assert before == {t: [] for t in before}
    foreign = {**device.tables}
    foreign["whatsmeow_pre_keys"] = [
        *device.tables["whatsmeow_pre_keys"],
        {**device.tables["whatsmeow_pre_keys"][0], "jid": OTHER_JID},
    ]
    for bad, message in (
        (msgspec.structs.replace(device, tables=foreign), "another device"),
        (msgspec.structs.replace(device, store_version=[1, 1]), "schema"),
        (
            msgspec.structs.replace(device, tables={**device.tables, "whatsmeow_new": []}),
            "no table whatsmeow_new",
        ),
    ):
        with pytest.raises(MoveRefused, match=message):
            target.write(bad)
        assert rows(other_database_url) == before


def test_the_simulators_device_is_its_jid(database_url: str) -> None:
    devices = SimulatorDevices(database_url)
    with pytest.raises(MoveRefused):
        devices.read(FAKE_JID, "Phone")
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("INSERT INTO sessiond_simulator_devices VALUES (%s)", (FAKE_JID,))
    device = devices.read(FAKE_JID, "Phone")
    with pytest.raises(DeviceAlreadyStored):
        devices.write(device)
    devices.remove(FAKE_JID)
    assert not devices.holds(FAKE_JID)
    devices.write(device)
    assert devices.holds(FAKE_JID)
