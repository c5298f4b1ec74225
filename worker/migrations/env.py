"""Alembic environment: the URL comes from the caller (`bbsync db upgrade`), never a file."""
from alembic import context

from worker.db.schema import metadata
from worker.db.session import get_engine

config = context.config
url = config.get_main_option("sqlalchemy.url")

with get_engine(url).connect() as connection:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        render_as_batch=connection.dialect.name == "sqlite",  # SQLite alters tables by copy
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()
    connection.commit()
