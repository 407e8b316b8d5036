"""Alembic migrations of kefu's SQL schema (run by `crm_link.store.upgrade`)."""
