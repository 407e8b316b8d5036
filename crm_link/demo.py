"""The demo center's customers and tickets, seeded into an empty database by
`kefu serve` so the IVR's VIP branch and the agent's screen have someone to show.

The numbers are 7-digit local numbers as the demo's SIPp callers send them; the store
reads them in its default region (`+15551234` for "US") when it seeds them."""

from __future__ import annotations

from crm_link.models import Customer, Ticket


def demo_customers() -> tuple[list[Customer], list[Ticket]]:
    customers = [
        Customer(customer_id="c-1001", name="Wang Fang", company="Lotus Trading",
                 tier="gold", vip=True, language="zh", account_number="79927398713",
                 phone="5551234", email="wang.fang@lotus.example", tags=["wholesale"],
               owner="alice"),
        Customer(customer_id="c-1002", name="Maria Lopez", company="Lopez Bakery",
                 tier="standard", vip=False, language="en", account_number="4539578763621486",
                 phone="5555678"),
        Customer(customer_id="c-1003", name="Kim Min-jun", company="Hanbit Logistics",
                 tier="silver", vip=False, language="en", account_number="6011000990139424",
                 phone="5550199"),
    ]  # fmt: skip
    tickets = [
        Ticket(ticket_id="T-2041", customer_id="c-1001", subject="Invoice 8812 charged twice",
               status="open", priority="high", assignee="alice"),
        Ticket(ticket_id="T-2050", customer_id="c-1002", subject="Change delivery address",
               status="pending", priority="normal"),
        Ticket(ticket_id="T-1999", customer_id="c-1003", subject="Damaged pallet",
               status="closed", priority="urgent"),
    ]  # fmt: skip
    return customers, tickets
