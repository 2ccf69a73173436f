"""Opening a session export encrypted to a passphrase (`sessiond session import`): a refusal
for the scrypt work factor, which rage decides from one timing of this machine (wrong when
the process waited for a CPU meanwhile), is tried again and never said as a wrong
passphrase; a file whose work factor really is too high is refused as such; a wrong
passphrase is refused at once."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pyrage
import pytest
from pyrage import passphrase as age_passphrase

from infra.cli import session as session_cli

PASSPHRASE = "correct horse battery staple"


@pytest.fixture(scope="module")
def sealed() -> bytes:
    return age_passphrase.encrypt(b"the export", PASSPHRASE)


def import_args(tmp_path: Path, sealed: bytes, passphrase: str = PASSPHRASE) -> argparse.Namespace:
    export = tmp_path / "export.age"
    export.write_bytes(session_cli.HEADER + sealed)
    secret = tmp_path / "passphrase"
    secret.write_text(passphrase + "\n")
    return argparse.Namespace(file=str(export), passphrase_file=str(secret), identity=[])


def opened(args: argparse.Namespace) -> bytes:
    """The plain text `_read_export` decrypted (what it decodes next)."""
    captured: list[bytes] = []

    def decode(plain: bytes) -> None:
        captured.append(plain)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(session_cli, "decode_export", decode)
        session_cli._read_export(args)
    return captured[0]


def test_refusals_for_the_work_factor_are_tried_again_and_the_file_opens(
    tmp_path: Path, sealed: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    decrypt = age_passphrase.decrypt
    calls: list[int] = []

    def misjudged(ciphertext: bytes, passphrase: str) -> bytes:
        calls.append(1)
        if len(calls) <= 3:  # as rage says it when its timing was taken while waiting for a CPU
            raise pyrage.DecryptError(
                "Excessive work parameter for passphrase.\nDecryption would take around "
                "\u206864\u2069 seconds."
            )
        return decrypt(ciphertext, passphrase)

    monkeypatch.setattr(age_passphrase, "decrypt", misjudged)
    assert opened(import_args(tmp_path, sealed)) == b"the export"
    assert len(calls) == 4


def test_a_work_factor_too_high_for_this_machine_is_refused_as_such(
    tmp_path: Path, sealed: bytes
) -> None:
    # A file asking for 2^40 scrypt rounds (the stanza's last argument): rage refuses it
    # before any scrypt, every time.
    greedy = re.sub(rb"(\n-> scrypt \S+) \d+\n", rb"\1 40\n", sealed, count=1)
    assert greedy != sealed
    with pytest.raises(session_cli.Refused) as refused:
        opened(import_args(tmp_path, greedy))
    line = str(refused.value)
    assert "work factor is more than this machine accepts now" in line, line
    assert "Decryption would take around" in line and "\n" not in line, line
    assert "wrong passphrase" not in line


def test_a_wrong_passphrase_is_refused_after_one_try(
    tmp_path: Path, sealed: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    decrypt = age_passphrase.decrypt
    refusals: list[str] = []

    def counted(ciphertext: bytes, passphrase: str) -> bytes:
        try:
            return decrypt(ciphertext, passphrase)
        except pyrage.DecryptError as error:
            refusals.append(str(error))
            raise

    monkeypatch.setattr(age_passphrase, "decrypt", counted)
    with pytest.raises(session_cli.Refused) as refused:
        opened(import_args(tmp_path, sealed, "not the passphrase at all"))
    assert "wrong passphrase, or the file was altered" in str(refused.value)
    # rage answered the wrong passphrase once, and it was not tried again. (On a loaded
    # machine rage may first refuse for the work factor, from a timing taken while waiting
    # for a CPU: those refusals are tried again, as the first test shows.)
    *before, last = refusals
    assert not last.startswith(session_cli.EXCESSIVE_WORK), refusals
    assert all(r.startswith(session_cli.EXCESSIVE_WORK) for r in before), refusals
