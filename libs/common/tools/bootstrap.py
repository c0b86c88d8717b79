"""One-shot setup step: apply migrations and create the JetStream stream and consumers."""

from __future__ import annotations

import argparse
import asyncio
import logging

from libs.common.core.config import load_settings
from libs.common.core.logs import setup_logging
from libs.common.messaging import bus
from libs.common.persistence import db

log = logging.getLogger(__name__)


async def create_streams(
    nats_url: str, stream: str, prefix: str, replicas: int, ack_wait: float
) -> None:
    """Create or update the order stream and the durable consumers."""
    nc = await bus.connect(nats_url, "bootstrap")
    try:
        await bus.bootstrap(nc.jetstream(), stream, prefix, replicas=replicas, ack_wait=ack_wait)
    finally:
        await nc.drain()


def main() -> None:
    """Run the selected bootstrap steps (both by default)."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--migrate-only", action="store_true", help="only apply migrations")
    parser.add_argument("--streams-only", action="store_true", help="only create NATS streams")
    parser.add_argument("--replicas", type=int, default=1, help="JetStream stream replicas")
    args = parser.parse_args()
    settings = load_settings()
    setup_logging("bootstrap", settings.log_level)
    if not args.streams_only:
        db.migrate(settings.database_url)
        log.info("database migrated")
    if not args.migrate_only:
        asyncio.run(
            create_streams(
                settings.nats_url,
                settings.nats_stream,
                settings.subject_prefix,
                args.replicas,
                settings.ack_wait_seconds,
            )
        )
        log.info("stream %s and consumers ready", settings.nats_stream)


if __name__ == "__main__":
    main()
