"""The `bbsync` group itself (options, logging, settings check) and what its commands share.
Commands import the engine inside their bodies, so `bbsync --help` starts fast."""
from __future__ import annotations

import logging

import click

from config.settings import SettingsError, get_settings


def fail(message: str) -> None:
    raise click.ClickException(message)


class _Group(click.Group):
    """Database errors end the command with a clear line, never a traceback full of SQL: on a
    database that was never migrated, the line says how to migrate it."""

    def invoke(self, ctx: click.Context):
        from sqlalchemy.exc import DBAPIError
        try:
            return super().invoke(ctx)
        except DBAPIError as exc:
            if _unmigrated():
                fail("the database has no bbsync tables yet: run `bbsync db upgrade` first")
            fail(f"database error ({exc.orig.__class__.__name__ if exc.orig else exc.__class__.__name__})")


def _unmigrated() -> bool:
    try:
        from sqlalchemy import inspect

        from worker.db.session import get_engine
        return not inspect(get_engine()).has_table("alembic_version")
    except Exception:  # the database cannot even be asked: say what failed, not this
        return False


@click.group(cls=_Group)
@click.option("-v", "--verbose", is_flag=True, help="Log at INFO level.")
def main(verbose: bool) -> None:
    """bbsync: two-way sync between Bitbucket issues and a helpdesk."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        get_settings()
    except SettingsError as exc:
        fail(str(exc))
