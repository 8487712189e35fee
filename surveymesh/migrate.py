"""``python -m surveymesh.migrate SERVICE``: brings one service's schema up to date, then exits.

Every service also migrates at start (under a per-schema advisory lock, so replicas
starting together apply each file once). This one-shot form exists for deployments that
want schema changes to happen before a rollout, as a Kubernetes Job or a compose job, so
that a failing migration stops the rollout instead of crash-looping new pods.

Each service keeps its tables in the schema named after it (``delivery``, ``reporting``,
``notification``) and its ``NNN_*.sql`` files in ``<service>_svc/migrations``; the files
are located as package data, so no service code is imported beyond its package marker.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

from surveymesh.config import ConfigError, Settings
from surveymesh.db import apply_migrations, create_pool
from surveymesh.logs import configure_logging

log = logging.getLogger(__name__)

SERVICES = ("delivery", "reporting", "notification")


def migrations_dir(service: str) -> Path:
    """The directory of ``service``'s migration files (inside the installed package)."""
    if service not in SERVICES:
        raise ConfigError(f"unknown service {service!r}; known: {', '.join(SERVICES)}")
    return Path(str(resources.files(f"{service}_svc").joinpath("migrations")))


async def migrate(service: str, dsn: str) -> list[str]:
    """Applies ``service``'s pending migrations to the database at ``dsn``.

    Returns:
        The versions applied by this call (empty when already up to date).
    """
    directory = migrations_dir(service)
    pool = await create_pool(dsn, schema=service, min_size=1, max_size=1)
    try:
        return await apply_migrations(pool, service, directory)
    finally:
        await pool.close()


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the migrations of the named service against ``DATABASE_URL``."""
    parser = argparse.ArgumentParser(prog="python -m surveymesh.migrate")
    parser.add_argument("service", choices=SERVICES)
    args = parser.parse_args(argv)
    try:
        settings = Settings.from_env()
        configure_logging(settings)
        applied = asyncio.run(migrate(args.service, settings.require_database_url()))
    except ConfigError as exc:
        sys.stderr.write(f"migrate: {exc}\n")
        return 2
    log.info(
        "%s schema up to date (%s)",
        args.service,
        f"applied {', '.join(applied)}" if applied else "nothing to apply",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
