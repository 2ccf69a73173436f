"""A fake WhatsApp device as whatsmeow stores one: keys of the right sizes, none of them real."""

from __future__ import annotations

import psycopg

from infra.whatsapp.devicestore import STORE_SCHEMA

FAKE_JID = "15551234567:12@s.whatsapp.net"

#: A device row as whatsmeow writes one (keys of the right sizes, none of them real).
INSERT_DEVICE = """
INSERT INTO {table} (jid, registration_id, noise_key, identity_key, signed_pre_key,
    signed_pre_key_id, signed_pre_key_sig, adv_key, adv_details, adv_account_sig,
    adv_account_sig_key, adv_device_sig, push_name)
VALUES ({p}, 1, {p}, {p}, {p}, 1, {p}, {p}, {p}, {p}, {p}, {p}, 'Fake phone')
"""
DEVICE_KEYS = (
    b"\1" * 32,
    b"\2" * 32,
    b"\3" * 32,
    b"\4" * 64,
    b"\5" * 32,
    b"",
    b"\6" * 64,
    b"\7" * 32,
    b"\x08" * 64,
)


def insert_fake_device(database_url: str, jid: str = FAKE_JID) -> None:
    statement = INSERT_DEVICE.format(table=f"{STORE_SCHEMA}.whatsmeow_device", p="%s")
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(statement, (jid, *DEVICE_KEYS))
        conn.execute(
            f"INSERT INTO {STORE_SCHEMA}.whatsmeow_identity_keys VALUES (%s, 'peer', %s)",
            (jid, b"\t" * 32),
        )
