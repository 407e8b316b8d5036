"""Alembic's entry point for kefu's schema.

`crm_link.store.upgrade` runs it with an open connection in `config.attributes`
(so the SQLite pragmas and the caller's transaction apply) and the default phone
region under `region` (the data migration of phone numbers needs it). The `alembic`
command line works too for developers (`alembic -x url=sqlite:///var/kefu.sqlite3
upgrade head`, with `script_location` pointing here); offline (`--sql`) mode is not
supported: the phone migration reads and rewrites rows.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine
from sqlalchemy.engine import Connection

from crm_link.models import Base

config = context.config


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        # SQLite cannot alter or drop most things in place: batch mode copies the table.
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    raise SystemExit("kefu's migrations run online only (they migrate data too)")

_connection = config.attributes.get("connection")
if _connection is not None:
    _run(_connection)
else:
    _url = context.get_x_argument(as_dictionary=True).get("url") or config.get_main_option(
        "sqlalchemy.url"
    )
    if not _url:
        raise SystemExit("give the database: alembic -x url=... upgrade head")
    _engine = create_engine(_url)
    try:
        with _engine.begin() as conn:
            _run(conn)
    finally:
        _engine.dispose()
