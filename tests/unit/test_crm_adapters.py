"""External CRM answers read into cards, the `crm:` settings, and the outbox backoff."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from config.crm import CrmSettings, HttpCrmSettings
from crm_link.adapters import card_from_json
from crm_link.outbox import Backoff


def test_a_crm_answer_becomes_a_card_with_open_tickets_most_urgent_first() -> None:
    card = card_from_json(
        [{"id": 42, "name": "Ana", "vip": "yes", "phones": "+351211234567", "tickets": [
            {"id": "T1", "priority": "Normal", "status": "open", "sla_due_at": "2026-11-25"},
            {"id": "T2", "priority": "high", "status": "pending", "assignee": "bob"},
            {"id": "T3", "priority": "urgent", "status": "closed"},
            {"id": "T4", "priority": "normal", "status": "open", "sla_due_at": "2026-11-24",
             "assignee": "carol"},
        ]}]
    )  # fmt: skip
    assert card is not None and (card.customer_id, card.vip, card.tier) == ("42", True, "standard")
    assert [t["ticket_id"] for t in card.open_tickets] == ["T2", "T4", "T1"]
    assert card.ticket_priority == "high" and card.preferred_agent == "bob"
    assert card.phones == ["+351211234567"] and card.source == "http"


def test_a_field_map_reads_a_crm_with_other_names() -> None:
    data = {"contact": {"full_name": "Jonas", "key": "sf-9"}, "segment": {"vip": False}}
    field_map = {"name": "contact.full_name", "customer_id": "contact.key", "vip": "segment.vip"}
    card = card_from_json(data, field_map)
    assert card is not None and (card.customer_id, card.name, card.vip) == ("sf-9", "Jonas", False)


def test_empty_and_unreadable_answers() -> None:
    assert card_from_json([]) is None
    with pytest.raises(ValueError, match="no customer_id or name"):
        card_from_json({"id": "1"})
    with pytest.raises(ValueError, match="expected an object"):
        card_from_json("Maria")


def test_http_settings_check_their_url_templates() -> None:
    ok = HttpCrmSettings(customer_url="http://crm/c?phone={number}", auth_env="KEFU_CRM_TOKEN")
    assert ok.authorization() is None  # the variable is not set
    with pytest.raises(ValidationError, match=r"unknown placeholder\(s\) \['phone'\]"):
        HttpCrmSettings(customer_url="http://crm/c?phone={phone}")
    with pytest.raises(ValidationError, match="name the value"):
        HttpCrmSettings(customer_url="http://crm/customers")
    with pytest.raises(ValidationError, match="adapter 'http' needs the 'http' section"):
        CrmSettings(adapter="http")
    with pytest.raises(ValidationError, match="unknown region 'XX'"):
        CrmSettings(region="XX")
    assert CrmSettings(region="de").region == "DE"


def test_backoff_doubles_up_to_its_cap() -> None:
    backoff = Backoff(base_s=5, factor=2, max_s=60)
    assert [backoff.delay(n) for n in range(6)] == [0, 5, 10, 20, 40, 60]
    assert backoff.delay(10_000) == 60  # a CRM away for weeks does not overflow
