"""The CRM link: kefu's SQL data and its bridge to customer records.

- `models`: the tables (calls = interactions, customers, phone numbers, tickets and
  their history, call-ticket links, the write-back outbox); `migrations/`: Alembic.
- `store.CallStore`: the database — migrations at open, call records, the built-in
  CRM look-up by E.164 number or account, tickets, wrap-ups.
- `phones`: E.164 normalisation (`phonenumbers`).
- `adapters`: the CRM interface, the built-in `StoreCrm`, the external `HttpCrm` with
  its fallback; `outbox`: write-back with retry and backoff; `crm.CrmLink`: both behind
  one object for the core; `settings`: the `crm:` configuration section.
- `importer`: `kefu import customers FILE.csv`; `demo`: the demo's customers.
"""
