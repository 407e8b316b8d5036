"""`CrmLink`: the one object the core needs for its CRM — look-ups through the
configured adapter (the built-in store unless `crm.adapter` says otherwise) and the
write-back of interactions through the outbox.

```python
crm = CrmLink.from_settings(store, settings.crm)      # or CrmLink(store)
card = crm.lookup("caller", "+1 555-5678")             # same answer shape as store.lookup
store.wrap_up(call_id, disposition="resolved", at=now, tickets=["T-2041"])
crm.record_interaction(call_id, now=now)               # queued (external CRMs only)
report = crm.drain(now=now)                            # call every few seconds
```

All calls block (HTTP, SQL): the async core runs them in its executor. Neighbours:
`crm_link.adapters`, `crm_link.outbox`, `crm_link.store`.
"""

from __future__ import annotations

from datetime import datetime

from config.crm import CrmSettings
from crm_link.adapters import CrmAdapter, HttpCrm, StoreCrm
from crm_link.outbox import Backoff, DrainReport, Message, drain, enqueue
from crm_link.store import CallStore, CustomerCard


class CrmLink:
    def __init__(
        self,
        store: CallStore,
        adapter: CrmAdapter | None = None,
        *,
        backoff: Backoff = Backoff(),  # noqa: B008 (frozen)
        batch: int = 50,
    ) -> None:
        self.store = store
        self.adapter: CrmAdapter = adapter if adapter is not None else StoreCrm(store)
        self.backoff = backoff
        self.batch = batch

    @classmethod
    def from_settings(cls, store: CallStore, settings: CrmSettings) -> CrmLink:
        adapter: CrmAdapter = StoreCrm(store)
        if settings.adapter == "http":
            assert settings.http is not None  # the settings' validator made sure
            adapter = HttpCrm(settings.http, store)
        outbox = settings.outbox
        return cls(
            store,
            adapter,
            backoff=Backoff(base_s=outbox.base_s, factor=outbox.factor, max_s=outbox.max_s),
            batch=outbox.batch,
        )

    def lookup(self, by: str, value: str) -> CustomerCard | None:
        """By calling number (`by="caller"`) or account number (otherwise), like
        `CallStore.lookup`, through the adapter."""
        if by == "caller":
            return self.adapter.lookup_customer(value)
        return self.adapter.lookup_account(value)

    def record_interaction(self, call_id: str, *, now: datetime) -> int | None:
        """Queue the call's interaction (its row as it is now: call it after the wrap-up)
        for the external CRM; returns the outbox message id, None when there is nothing
        to write back to or the call has no row yet."""
        if not self.adapter.writes_back:
            return None
        payload = self.store.interaction(call_id)
        if payload is None:
            return None
        return enqueue(
            self.store,
            target=self.adapter.name,
            kind="interaction",
            key=call_id,
            payload=payload,
            now=now,
        )

    def drain(self, *, now: datetime, limit: int | None = None) -> DrainReport:
        """Deliver the due outbox messages (see `crm_link.outbox.drain`)."""
        if not self.adapter.writes_back:
            return DrainReport()

        def deliver(message: Message) -> None:
            self.adapter.write_interaction(message.payload, key=message.idempotency_key)

        return drain(
            self.store,
            deliver,
            target=self.adapter.name,
            now=now,
            backoff=self.backoff,
            limit=limit or self.batch,
        )

    def close(self) -> None:
        """Close the adapter (its HTTP connections); the store stays open."""
        self.adapter.close()
