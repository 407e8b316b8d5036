"""Phone numbers as the CRM keeps them: E.164 (`+15551234567`), normalised with
`phonenumbers` (Google's libphonenumber) against a default region.

Numbers arrive in many shapes: `5551234` from a trunk that sends the national number,
`+1 555-5678` typed into a form, `011 49 30 123456` dialled internationally, `15551234567`
with the country code but no `+`. The store keeps one normalised form per number so the
caller look-up is an indexed equality (`crm_link.store`), and the CSV import
(`crm_link.importer`) refuses what is not a phone number at all.

Only "possible" numbers count (right length for the country), not "valid" ones: 555
numbers are fictional and a 7-digit local number has no area code, yet both are what
real trunks and the demo send.
"""

from __future__ import annotations

import re

import phonenumbers
from phonenumbers import NumberParseException, PhoneNumberFormat

from config.crm import DEFAULT_REGION, valid_region

__all__ = ["DEFAULT_REGION", "caller_candidates", "normalise", "split_numbers", "valid_region"]


_SEPARATORS = re.compile(r"[;,|]")


def normalise(raw: str, region: str = DEFAULT_REGION) -> str | None:
    """The E.164 form of `raw` read as a number of `region`, or None when it is not a
    possible phone number (too short, too long, letters, empty). Extensions are dropped."""
    text = raw.strip()
    if not text:
        return None
    try:
        number = phonenumbers.parse(text, region.upper())
    except NumberParseException:
        return None
    if not phonenumbers.is_possible_number(number):
        return None
    return str(phonenumbers.format_number(number, PhoneNumberFormat.E164))


def caller_candidates(raw: str, region: str = DEFAULT_REGION) -> list[str]:
    """What a calling number may be, most likely first.

    A trunk may send the international number without the `+` (`15555678`,
    `4930123456`): read as a national number of `region` it would be another number or
    none, so when `raw` is bare digits its `+digits` reading is a second candidate.
    """
    found: list[str] = []
    first = normalise(raw, region)
    if first is not None:
        found.append(first)
    bare = raw.strip()
    if bare.isdigit() and not bare.startswith("0"):
        second = normalise("+" + bare, region)
        if second is not None and second not in found:
            found.append(second)
    return found


def split_numbers(cell: str) -> list[str]:
    """The numbers of one spreadsheet cell: `+1 555 0100; 555-0199` -> two numbers."""
    return [part.strip() for part in _SEPARATORS.split(cell) if part.strip()]


def digits(number: str) -> str:
    return re.sub(r"\D", "", number)
