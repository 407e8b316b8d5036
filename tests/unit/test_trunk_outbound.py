"""Outbound trunks: the `outbound` address in the config and the URI a worker dials."""

from __future__ import annotations

from typing import Any

import pytest

from config.loader import ConfigError, load, parse
from config.schema import Settings, Trunk
from pbx.edge import trunk_uri
from tests.support.configs import demo_data


def errors_with(*trunks: dict[str, Any]) -> list[str]:
    """The config errors of the demo with these trunks added after the demo trunk."""
    data = demo_data()
    data["edge"]["trunks"] += list(trunks)
    with pytest.raises(ConfigError) as info:
        parse(data, "demo.yaml")
    return info.value.lines


def with_trunks(*trunks: Trunk) -> Settings:
    settings = load()
    edge = settings.edge.model_copy(update={"trunks": list(trunks)})
    return settings.model_copy(update={"edge": edge})


def test_trunks_without_outbound_stay_valid() -> None:
    """The field is optional: the demo trunk only brings calls in."""
    (trunk,) = load().edge.trunks
    assert trunk.outbound is None
    assert trunk.outbound_address is None


@pytest.mark.parametrize(
    ("outbound", "address"),
    [
        ("203.0.113.5", "203.0.113.5:5060"),
        ("203.0.113.5:5080", "203.0.113.5:5080"),
        ("sip.carrier.example", "sip.carrier.example:5060"),
        ("sbc-2.carrier.example:65535", "sbc-2.carrier.example:65535"),
    ],
)
def test_outbound_is_host_or_host_port(outbound: str, address: str) -> None:
    trunk = Trunk(name="carrier", allow=["203.0.113.0/24"], outbound=outbound)
    assert trunk.outbound_address == address


@pytest.mark.parametrize(
    ("outbound", "problem"),
    [
        (
            "sip:203.0.113.5",
            "'sip:203.0.113.5' is not host or host:port (without the 'sip:' scheme), "
            "e.g. 203.0.113.5:5060",
        ),
        ("203.0.113.5:0", "port 0 in '203.0.113.5:0' is not between 1 and 65535"),
        ("203.0.113.5:70000", "port 70000 in '203.0.113.5:70000' is not between 1 and 65535"),
        ("203.0.113.300", "'203.0.113.300' is not an IPv4 address"),
        ("-sbc.example:5060", "'-sbc.example' in '-sbc.example:5060' is not a host name"),
        (
            "2001:db8::1",
            "'2001:db8::1' is not host or host:port (IPv6 addresses are not supported), "
            "e.g. 203.0.113.5:5060",
        ),
        ("", "'' is not host or host:port, e.g. 203.0.113.5:5060"),
    ],
)
def test_a_bad_outbound_names_the_path_and_what_is_wrong(outbound: str, problem: str) -> None:
    lines = errors_with({"name": "carrier", "allow": ["203.0.113.5"], "outbound": outbound})
    assert lines == [f"demo.yaml: edge.trunks[1].outbound: {problem}"]


def test_prefix_needs_outbound_and_digits() -> None:
    assert errors_with({"name": "carrier", "allow": ["203.0.113.5"], "outbound_prefix": "9"}) == [
        "demo.yaml: edge.trunks[1]: outbound_prefix: the trunk has no 'outbound' address "
        "to dial out to"
    ]
    (line,) = errors_with(
        {
            "name": "carrier",
            "allow": ["203.0.113.5"],
            "outbound": "x.example",
            "outbound_prefix": "+1",
        }
    )
    assert line.startswith("demo.yaml: edge.trunks[1].outbound_prefix: String should match")


def test_trunk_names_are_unique_and_outbound_is_not_the_edge() -> None:
    """The edge picks the trunk by name; an outbound address that is the edge would loop."""
    lines = errors_with(
        {"name": "demo-trunk", "allow": ["203.0.113.5"], "outbound": "203.0.113.5"},
        {"name": "loop", "allow": ["203.0.113.6"], "outbound": "127.0.0.1"},
    )
    assert lines == [
        "demo.yaml: edge.trunks[1].name: trunk 'demo-trunk' is named twice",
        "demo.yaml: edge.trunks[2].outbound: '127.0.0.1' is the edge itself: calls would loop",
    ]


INBOUND = Trunk(name="inbound", allow=["192.0.2.1"])
CARRIER = Trunk(name="carrier", allow=["203.0.113.5"], outbound="203.0.113.5")
BACKUP = Trunk(name="backup", allow=["198.51.100.7"], outbound="198.51.100.7:5080")


def test_trunk_uri_goes_to_the_edge_with_the_trunk_name() -> None:
    """Default: the first trunk with an outbound address; '#' is escaped, '+' and '*' kept."""
    settings = with_trunks(INBOUND, CARRIER, BACKUP)
    assert trunk_uri(settings, "5550100") == "sip:5550100@127.0.0.1:5060;trunk=carrier"
    assert trunk_uri(settings, "+4930123", "backup") == "sip:+4930123@127.0.0.1:5060;trunk=backup"
    assert trunk_uri(settings, "*31#0100") == "sip:*31%230100@127.0.0.1:5060;trunk=carrier"


@pytest.mark.parametrize("number", ["", "555 0100", "555-0100", "1+2", "++1", "abc", "1" * 33])
def test_trunk_uri_refuses_what_is_not_dialable(number: str) -> None:
    with pytest.raises(ValueError, match=r"cannot dial .*digits 0-9, \* and #"):
        trunk_uri(with_trunks(CARRIER), number)


def test_trunk_uri_says_which_trunk_cannot_dial_out() -> None:
    with pytest.raises(ValueError, match=r"no trunk can dial out: .*edge\.trunks\[\]\.outbound"):
        trunk_uri(with_trunks(INBOUND), "5550100")
    settings = with_trunks(INBOUND, CARRIER)
    with pytest.raises(ValueError, match=r"trunk 'inbound' has no outbound address .*: carrier\)"):
        trunk_uri(settings, "5550100", "inbound")
    with pytest.raises(ValueError, match=r"unknown trunk 'carier' \(outbound trunks: carrier\)"):
        trunk_uri(settings, "5550100", "carier")
