"""Phone numbers normalised to E.164 the way the caller look-up and the import read them."""

from __future__ import annotations

import pytest

from crm_link.phones import caller_candidates, normalise, split_numbers


@pytest.mark.parametrize(
    ("raw", "region", "e164"),
    [
        ("5551234", "US", "+15551234"),  # a 7-digit local number, as the demo trunk sends
        ("+1 555-5678", "US", "+15555678"),
        ("(555) 123-4567", "US", "+15551234567"),
        ("011 49 30 123456", "US", "+4930123456"),  # dialled internationally from the US
        ("030 123456", "DE", "+4930123456"),
        ("0049 30 123456", "DE", "+4930123456"),
        ("138 0013 8000", "CN", "+8613800138000"),
        ("555-1234 ext. 5", "US", "+15551234"),  # the extension is not part of the number
        ("5678", "US", None),  # too short to be anyone's number
        ("12ab", "US", None),
        ("", "US", None),
        ("anonymous", "US", None),
    ],
)
def test_numbers_normalise_to_e164_or_none(raw: str, region: str, e164: str | None) -> None:
    assert normalise(raw, region) == e164


def test_bare_digits_with_a_country_code_are_a_second_candidate() -> None:
    """A trunk that sends 15555678 or 4930123456 means +1 555 5678 and +49 30 123456."""
    assert caller_candidates("15555678") == ["+15555678"]
    assert caller_candidates("4930123456") == ["+14930123456", "+4930123456"]
    assert caller_candidates("5551234") == ["+15551234"]
    assert caller_candidates("030123456", "DE") == ["+4930123456"]  # 0...: never +0...
    assert caller_candidates("5678") == []


def test_a_cell_can_hold_several_numbers() -> None:
    assert split_numbers("+1 555 0100; 555-0199 | (555) 0123,") == [
        "+1 555 0100", "555-0199", "(555) 0123",
    ]  # fmt: skip
    assert split_numbers("  ") == []
