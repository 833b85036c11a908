"""Alembic environment: migrations run on the connection the daemon hands over (see worklist/db.py)."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from triage_node.worklist.models import Base

config = context.config
target_metadata = Base.metadata


def run() -> None:
    conn = config.attributes.get("connection")
    if conn is None:  # `alembic` run by hand: use the URL from the ini/CLI
        engine = create_engine(config.get_main_option("sqlalchemy.url") or "sqlite:///var/triage-node.db")
        with engine.begin() as conn2:
            context.configure(connection=conn2, target_metadata=target_metadata, render_as_batch=True)
            context.run_migrations()
        return
    context.configure(connection=conn, target_metadata=target_metadata, render_as_batch=True)
    context.run_migrations()


run()
