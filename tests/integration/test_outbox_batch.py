"""The outbox relay publishes a batch all at once, then marks it: each event once on the stream."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import nats
import pytest
from nats.js import JetStreamContext

from libs.common.domain.events import Event, EventType
from libs.common.messaging import bus
from libs.common.messaging.outbox import OutboxRelay
from libs.common.persistence.stores import PgStores
from tests.integration.helpers import insert_order

pytestmark = pytest.mark.integration


class FlakyJetStream:
    """A JetStream context whose `fail_at`-th publish (1 = the first) raises."""

    def __init__(self, js: JetStreamContext, fail_at: int) -> None:
        self._js = js
        self._fail_at = fail_at
        self.calls = 0

    async def publish(self, subject: str, payload: bytes, **kwargs: Any) -> Any:
        """Publish, unless this is the call that fails."""
        self.calls += 1
        if self.calls == self._fail_at:
            await asyncio.sleep(0.01)  # the others of the batch are on their way meanwhile
            raise nats.errors.TimeoutError
        return await self._js.publish(subject, payload, **kwargs)


async def test_a_failed_batch_stays_unpublished_and_its_republish_is_deduplicated(
    pool: asyncpg.Pool, nats_url: str, stream_names: tuple[str, str]
) -> None:
    stream, prefix = stream_names
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    await bus.bootstrap(js, stream, prefix)
    stores = PgStores(pool, prefix)
    order_id = await insert_order(pool)
    events = [Event(EventType.SMS_TIMEOUT, order_id) for _ in range(1200)]
    async with stores.transaction() as tx:
        await tx.outbox.enqueue_many(events)

    flaky = FlakyJetStream(js, fail_at=300)
    relay = OutboxRelay(stores, flaky, batch=500)  # type: ignore[arg-type]
    with pytest.raises(nats.errors.TimeoutError):
        await relay.publish_pending()
    assert await pool.fetchval("SELECT count(*) FROM outbox WHERE published_at IS NULL") == 1200

    relay = OutboxRelay(stores, js, batch=500)
    published = [await relay.publish_pending() for _ in range(4)]
    assert published == [500, 500, 200, 0]
    assert await pool.fetchval("SELECT count(*) FROM outbox WHERE published_at IS NULL") == 0

    # Every event exactly once on the stream, though part of the first batch went out twice:
    # the ids are distinct, so a lost one would show fewer and a duplicate more.
    info = await js.stream_info(stream)
    await nc.drain()
    assert info.state.messages == 1200
