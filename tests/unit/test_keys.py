"""API keys: their shape, their checksum, and that only their hash is kept."""

from __future__ import annotations

import hashlib
import re

import pytest

from application.keys import (
    ADMIN_KEY_KIND,
    PREFIX_LEN,
    SESSION_KEY_KIND,
    generate_key,
    hash_key,
    key_kind,
)
from domain.values import ADMIN_ACTOR
from tests.unit.helpers import popo_app

ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
BODY_LEN = 38  # 32 random characters and a 6-character checksum
KINDS = [SESSION_KEY_KIND, ADMIN_KEY_KIND]


def split(key: str) -> tuple[str, str]:
    kind, _, body = key.partition("_")
    return kind, body


@pytest.mark.parametrize("kind", KINDS)
def test_a_generated_key_has_its_kind_prefix_and_passes_key_kind(kind: str) -> None:
    for _ in range(50):
        new = generate_key(kind)
        assert new.key.startswith(f"{kind}_")
        assert re.fullmatch(rf"{kind}_[0-9A-Za-z]{{{BODY_LEN}}}", new.key)
        assert key_kind(new.key) == kind


def test_the_kinds_are_sdk_for_sessions_and_sda_for_the_admin() -> None:
    assert (SESSION_KEY_KIND, ADMIN_KEY_KIND) == ("sdk", "sda")


@pytest.mark.parametrize("kind", KINDS)
def test_a_prefix_is_the_first_twelve_characters_of_the_key(kind: str) -> None:
    assert PREFIX_LEN == 12
    new = generate_key(kind)
    assert len(new.prefix) == 12
    assert new.key.startswith(new.prefix)
    assert new.prefix.startswith(f"{kind}_")


def test_a_key_is_exposed_only_as_its_sha256_hash() -> None:
    new = generate_key(SESSION_KEY_KIND)
    assert new.key_hash == hashlib.sha256(new.key.encode()).hexdigest()
    assert hash_key(new.key) == new.key_hash
    assert new.key not in new.key_hash
    # Check the identifier and prefix give nothing more than the 8 characters shown anyway.
    assert re.fullmatch(r"key_[0-9a-f]{16}", new.key_id)
    assert new.key[PREFIX_LEN:] not in new.prefix


def test_generated_keys_and_ids_are_unique() -> None:
    keys = [generate_key(SESSION_KEY_KIND) for _ in range(200)]
    assert len({k.key for k in keys}) == 200
    assert len({k.key_id for k in keys}) == 200


def test_a_single_mistyped_character_anywhere_in_the_body_is_rejected() -> None:
    for _ in range(10):
        key = generate_key(SESSION_KEY_KIND).key
        kind, body = split(key)
        for position in range(BODY_LEN):
            for wrong in ALPHABET:
                if wrong == body[position]:
                    continue
                typo = f"{kind}_{body[:position]}{wrong}{body[position + 1 :]}"
                assert key_kind(typo) is None, f"{typo} (position {position}) was accepted"


def test_two_swapped_neighbouring_characters_are_rejected() -> None:
    key = generate_key(SESSION_KEY_KIND).key
    kind, body = split(key)
    for position in range(BODY_LEN - 1):
        a, b = body[position], body[position + 1]
        if a == b:
            continue
        swapped = f"{kind}_{body[:position]}{b}{a}{body[position + 2 :]}"
        assert key_kind(swapped) is None


@pytest.mark.parametrize("kind", ["sdx", "SDK", "sd", "sdkk", "", "key"])
def test_a_key_of_another_kind_is_rejected(kind: str) -> None:
    _, body = split(generate_key(SESSION_KEY_KIND).key)
    assert key_kind(f"{kind}_{body}") is None


def test_a_key_without_a_separator_is_rejected() -> None:
    kind, body = split(generate_key(SESSION_KEY_KIND).key)
    assert key_kind(kind + body) is None
    assert key_kind("") is None
    assert key_kind("sdk") is None
    assert key_kind("sdk_") is None


def test_a_key_of_the_wrong_length_is_rejected() -> None:
    key = generate_key(SESSION_KEY_KIND).key
    assert key_kind(key[:-1]) is None
    assert key_kind(key + "0") is None
    assert key_kind("0" + key) is None
    kind, body = split(key)
    assert key_kind(f"{kind}_{body[1:]}") is None


@pytest.mark.parametrize("bad", ["-", "_", "+", "/", "=", " ", "\n", "é", "٣", "\x00"])
def test_a_character_outside_the_alphabet_is_rejected(bad: str) -> None:
    kind, body = split(generate_key(SESSION_KEY_KIND).key)
    for position in (0, 17, BODY_LEN - 1):
        assert key_kind(f"{kind}_{body[:position]}{bad}{body[position + 1 :]}") is None


def test_surrounding_whitespace_is_not_trimmed() -> None:
    key = generate_key(SESSION_KEY_KIND).key
    assert key_kind(f" {key}") is None
    assert key_kind(f"{key}\n") is None


def test_the_plaintext_of_a_key_is_recorded_nowhere_in_the_event_store() -> None:
    app = popo_app()
    created = app.create_session("Support", {}, None, ADMIN_ACTOR)
    second = app.issue_key(created.session_id, "ci", ADMIN_ACTOR)

    # Check each key is handed back once, in full, and passes its own checksum.
    for issued in (created.first_key, second):
        assert key_kind(issued.key) == SESSION_KEY_KIND
        assert issued.prefix == issued.key[:PREFIX_LEN]

    # Check neither the plaintext nor its secret part appears in any stored event.
    stored = app.recorder.select_notifications(start=1, limit=100)
    assert stored
    for issued in (created.first_key, second):
        secret = issued.key[PREFIX_LEN:].encode()
        assert not any(secret in n.state for n in stored)

    # Check the aggregate holds the hash of each key.
    session = app.get_session(created.session_id)
    assert {k.key_hash for k in session.keys.values()} == {
        hash_key(created.first_key.key),
        hash_key(second.key),
    }
