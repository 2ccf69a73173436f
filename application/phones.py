"""Phone numbers and chat addresses as WhatsApp wants them, checked with phonenumbers (the
well-kept library made for the job)."""

from __future__ import annotations

import phonenumbers

from domain.errors import InvalidValue
from domain.values import check_recipient


class InvalidPhone(ValueError):
    """Not a phone number WhatsApp could pair with."""


def normalize_phone(raw: str) -> str:
    """The number as WhatsApp wants it (country code and digits, no +); `InvalidPhone` else."""
    text = "".join(c for c in raw.strip() if c not in " ().-")
    if not text.startswith("+"):
        text = "+" + text.removeprefix("00")
    digits = text[1:]
    if not digits.isdigit():
        raise InvalidPhone(
            f"{raw!r} is not a phone number: use + and the country code, then digits only"
        )
    try:
        number = phonenumbers.parse(text, None)
    except phonenumbers.NumberParseException as error:
        raise InvalidPhone(f"{raw!r} is not a phone number: {error}") from None
    if not phonenumbers.is_valid_number(number):
        raise InvalidPhone(
            f"{raw!r} is not a valid phone number for any country; write it in international "
            "form, e.g. +14155550123"
        )
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)[1:]


def normalize_recipient(raw: str) -> str:
    """The chat JID a message goes to: a phone number (as for `normalize_phone`) becomes
    ``<digits>@s.whatsapp.net``; a user or group JID is taken as it is. `InvalidPhone` else."""
    text = raw.strip()
    if "@" in text:
        try:
            return check_recipient(text)
        except InvalidValue as error:
            raise InvalidPhone(str(error)) from None
    return normalize_phone(text) + "@s.whatsapp.net"
