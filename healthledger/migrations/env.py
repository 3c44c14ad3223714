"""Alembic environment: runs against the engine HealthLedger hands it (see healthledger.db.upgrade)."""

from alembic import context

from healthledger.db import Base

config = context.config
engine = config.attributes["engine"]

with engine.begin() as connection:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    context.run_migrations()
