"""Schema migrations through Alembic, configured in code so no alembic.ini has to be found."""
from __future__ import annotations

from importlib import resources

from alembic import command
from alembic.config import Config

from config.settings import get_settings


def alembic_config(url: str | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(resources.files("worker") / "migrations"))
    # ConfigParser interpolation would choke on a literal % in a password.
    cfg.set_main_option("sqlalchemy.url", (url or get_settings().database_url).replace("%", "%%"))
    return cfg


def upgrade(url: str | None = None, revision: str = "head") -> None:
    command.upgrade(alembic_config(url), revision)


def revision(message: str, url: str | None = None) -> None:
    """Developer helper: autogenerate a migration from the models."""
    command.revision(alembic_config(url), message=message, autogenerate=True)
