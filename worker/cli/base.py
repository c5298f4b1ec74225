"""The `bbsync` group itself (options, logging, settings check) and what its commands share.
Commands import the engine inside their bodies, so `bbsync --help` starts fast."""
from __future__ import annotations

import logging

import click

from config.settings import SettingsError, get_settings


def fail(message: str) -> None:
    raise click.ClickException(message)


@click.group()
@click.option("-v", "--verbose", is_flag=True, help="Log at INFO level.")
def main(verbose: bool) -> None:
    """bbsync: two-way sync between Bitbucket issues and a helpdesk."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        get_settings()
    except SettingsError as exc:
        fail(str(exc))
