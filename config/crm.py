"""The `crm:` section of a kefu configuration: the default phone region, which CRM
answers look-ups (the built-in store or an external one over HTTP) and how interaction
write-back retries.

```yaml
crm:
  region: US                    # numbers without a country code
  adapter: http                 # store (default) | http
  http:
    customer_url: https://crm.example.com/api/customers?phone={number}
    account_url: https://crm.example.com/api/accounts/{account}
    interaction_url: https://crm.example.com/api/interactions
    auth_env: KEFU_CRM_TOKEN    # the Authorization header's value, from the environment
    timeout_s: 1.0
    cache_ttl_s: 60
  outbox: {base_s: 5, factor: 2, max_s: 900}
```

Neighbours: `crm_link.adapters` (what `http` does), `crm_link.outbox` (the backoff);
it lives in `config` so reading a configuration never imports the CRM code.
"""

from __future__ import annotations

import os
import string
from typing import Literal, Self

import phonenumbers
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

DEFAULT_REGION = "US"
"""Used for numbers written without a country code when nothing else is configured."""


def valid_region(region: str) -> bool:
    return region.upper() in phonenumbers.SUPPORTED_REGIONS


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _placeholders(template: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(template) if name}


class HttpCrmSettings(_Model):
    customer_url: str = Field(
        description="GET for a caller: {number} is E.164 (+15551234567, URL-encoded), "
        "{digits} the same without '+', {raw} as the trunk sent it"
    )
    account_url: str | None = Field(None, description="GET for an account: {account}")
    interaction_url: str | None = Field(
        None,
        description="POST of each interaction as JSON ({call_id} may appear); None: no write-back",
    )
    headers: dict[str, str] = Field({}, description="sent with every request")
    auth: str | None = Field(None, description="the Authorization header's value")
    auth_env: str | None = Field(
        None, description="environment variable holding the Authorization header's value"
    )
    timeout_s: float = Field(1.0, gt=0, le=30, description="connect and read, each")
    cache_ttl_s: float = Field(60.0, ge=0, description="how long an answer is reused")
    cache_size: int = Field(10_000, ge=0)
    retry_after_s: float = Field(
        10.0, ge=0, description="after a failure, look-ups go to the built-in store this long"
    )
    field_map: dict[str, str] = Field(
        {},
        description="card field -> dotted path in the CRM's JSON "
        "(e.g. name: contact.full_name); unmapped fields use their own name",
    )

    @model_validator(mode="after")
    def _templates(self) -> Self:
        allowed = {
            "customer_url": ({"number", "digits", "raw"}, True),
            "account_url": ({"account"}, True),
            "interaction_url": ({"call_id"}, False),
        }
        for name, (names, required) in allowed.items():
            template = getattr(self, name)
            if template is None:
                continue
            try:
                used = _placeholders(template)
            except ValueError as exc:
                raise ValueError(f"{name}: {exc}") from None
            if used - names:
                raise ValueError(
                    f"{name}: unknown placeholder(s) {sorted(used - names)} "
                    f"(allowed: {sorted(names)})"
                )
            if required and not used:
                raise ValueError(f"{name}: name the value with one of {sorted(names)}")
        if self.auth is not None and self.auth_env is not None:
            raise ValueError("give 'auth' or 'auth_env', not both")
        return self

    def authorization(self) -> str | None:
        if self.auth_env is not None:
            return os.environ.get(self.auth_env) or None
        return self.auth


class OutboxSettings(_Model):
    base_s: float = Field(5.0, gt=0, description="wait after the first failed delivery")
    factor: float = Field(2.0, ge=1, description="each further failure multiplies the wait")
    max_s: float = Field(900.0, gt=0, description="the longest wait between two tries")
    batch: int = Field(50, ge=1, le=10_000, description="messages per drain")


class CrmSettings(_Model):
    region: str = Field(DEFAULT_REGION, description="ISO 3166 region of numbers without +CC")
    adapter: Literal["store", "http"] = "store"
    http: HttpCrmSettings | None = None
    outbox: OutboxSettings = OutboxSettings()

    @field_validator("region")
    @classmethod
    def _region(cls, value: str) -> str:
        if not valid_region(value):
            raise ValueError(f"unknown region {value!r} (an ISO 3166 code such as US, DE, CN)")
        return value.upper()

    @model_validator(mode="after")
    def _adapter(self) -> Self:
        if self.adapter == "http" and self.http is None:
            raise ValueError("adapter 'http' needs the 'http' section")
        return self
