"""API keys: generation, checksum and hashing.

A key reads ``<kind>_<32 base62 characters><6 base62 checksum characters>``; the checksum is the
CRC-32 of the random part, so a mistyped key is rejected without any lookup. Only the SHA-256
hash of a key is ever stored.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import zlib
from dataclasses import dataclass

_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_RANDOM_LEN = 32
_CHECKSUM_LEN = 6
SESSION_KEY_KIND = "sdk"
ADMIN_KEY_KIND = "sda"
PREFIX_LEN = 12
_BODY = re.compile(f"[0-9A-Za-z]{{{_RANDOM_LEN + _CHECKSUM_LEN}}}")


@dataclass(frozen=True)
class NewKey:
    """A freshly generated key: the plaintext is shown once, then only the hash is kept."""

    key_id: str
    key: str
    prefix: str
    key_hash: str


def _base62(number: int, width: int) -> str:
    digits = []
    for _ in range(width):
        number, rest = divmod(number, 62)
        digits.append(_ALPHABET[rest])
    return "".join(reversed(digits))


def _checksum(random_part: str) -> str:
    return _base62(zlib.crc32(random_part.encode()), _CHECKSUM_LEN)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def generate_key(kind: str) -> NewKey:
    random_part = "".join(secrets.choice(_ALPHABET) for _ in range(_RANDOM_LEN))
    key = f"{kind}_{random_part}{_checksum(random_part)}"
    return NewKey(
        key_id="key_" + secrets.token_hex(8),
        key=key,
        prefix=key[:PREFIX_LEN],
        key_hash=hash_key(key),
    )


def key_kind(key: str) -> str | None:
    """The kind of a well-formed key whose checksum matches, else None (no lookup needed)."""
    kind, sep, body = key.partition("_")
    if not sep or kind not in (SESSION_KEY_KIND, ADMIN_KEY_KIND):
        return None
    if not _BODY.fullmatch(body):
        return None
    random_part, checksum = body[:_RANDOM_LEN], body[_RANDOM_LEN:]
    if not hmac.compare_digest(_checksum(random_part), checksum):
        return None
    return kind
