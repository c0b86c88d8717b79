"""NATS JetStream: connecting, the stream and consumer definitions, and the pull-consumer loop."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable, Mapping

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, StorageType, StreamConfig

from libs.common.core import metrics
from libs.common.core.logs import LOG_CONTEXT
from libs.common.domain.events import (
    CONSUMERS,
    Event,
    EventType,
    dead_letter_subject,
    subjects,
)
from libs.common.messaging import ops
from libs.common.persistence.ports import Inbox

log = logging.getLogger(__name__)

MAX_DELIVER = 50
# Longer than the slowest handler (a refund attempt waits up to its payment timeout + 5 s).
ACK_WAIT_SECONDS = 120.0


class Retry(Exception):
    """Raised by a handler to have the message redelivered after `delay` seconds."""

    def __init__(self, reason: str, delay: float = 2.0) -> None:
        super().__init__(reason)
        self.delay = delay


Handler = Callable[[Event], Awaitable[None]]
# A worker's action on one kind of event: given the order id.
OrderAction = Callable[[str], Awaitable[None]]


def dispatch(consumer: str, actions: Mapping[EventType, OrderAction]) -> Handler:
    """One handler from a worker's table of actions, which must cover exactly its events.

    The table is checked against the registry (`events.CONSUMERS`) when the worker starts,
    so an event routed to a worker without an action, or an action for an event the worker
    never receives, is a startup error instead of a silently dropped message.
    """
    expected = set(CONSUMERS[consumer])
    if set(actions) != expected:
        missing = sorted(expected - set(actions))
        extra = sorted(set(actions) - expected)
        raise ValueError(f"{consumer}: no action for {missing}; not its events: {extra}")
    table = dict(actions)

    async def handle(event: Event) -> None:
        action = table.get(event.type)
        if action is None:
            # A filter wider than the table (a stale durable mid-deploy): ack it, as the
            # if/elif chains this replaced did, rather than retry it into the dead letters.
            log.warning("%s has no action for %s; acked", consumer, event.type)
            return
        await action(event.order_id)

    return handle


async def connect(url: str, name: str) -> NATS:
    """Connect to NATS, retrying the first connection for a while."""
    return await nats.connect(
        url, name=name, connect_timeout=5, max_reconnect_attempts=-1, allow_reconnect=True
    )


def stream_config(name: str, prefix: str, *, replicas: int = 1) -> StreamConfig:
    """The order-event stream: file storage, a 2-minute dedup window, kept for 7 days."""
    return StreamConfig(
        name=name,
        subjects=[f"{prefix}.>"],
        storage=StorageType.FILE,
        num_replicas=replicas,
        duplicate_window=120.0,
        max_age=7 * 24 * 3600.0,
    )


def consumer_config(
    prefix: str, consumer: str, *, ack_wait: float = ACK_WAIT_SECONDS
) -> ConsumerConfig:
    """A worker type's durable pull consumer."""
    return ConsumerConfig(
        durable_name=consumer,
        filter_subjects=subjects(prefix, consumer),
        ack_policy=AckPolicy.EXPLICIT,
        deliver_policy=DeliverPolicy.ALL,
        ack_wait=ack_wait,
        max_deliver=MAX_DELIVER,
        max_ack_pending=1000,
    )


async def bootstrap(
    js: JetStreamContext,
    stream: str,
    prefix: str,
    *,
    replicas: int = 1,
    ack_wait: float = ACK_WAIT_SECONDS,
) -> None:
    """Create or update the stream and every worker's durable consumer (idempotent)."""
    config = stream_config(stream, prefix, replicas=replicas)
    try:
        await js.add_stream(config)
    except nats.js.errors.BadRequestError:
        await js.update_stream(config)
    for consumer in CONSUMERS:
        await js.add_consumer(stream, consumer_config(prefix, consumer, ack_wait=ack_wait))


def _backoff(delivered: int) -> float:
    """Delay before the next delivery of a failing message: 1 s doubling to 60 s."""
    return float(min(60, 2 ** max(0, delivered - 1)))


class Consumer:
    """Pulls a worker's events and runs the handler; maps the outcome to ack/nak/term once.

    Handled message ids are recorded in the inbox store so a redelivery (a lost ack, a
    restart) skips the handler. Correctness does not rest on that record alone: handlers
    only write through guarded transitions, so a message handled twice changes nothing.
    """

    def __init__(
        self,
        js: JetStreamContext,
        inbox: Inbox,
        *,
        stream: str,
        prefix: str,
        durable: str,
        handler: Handler,
    ) -> None:
        self._js = js
        self._inbox = inbox
        self._stream = stream
        self._prefix = prefix
        self._durable = durable
        self._handler = handler

    async def run(self, stop: asyncio.Event, *, batch: int = 16) -> None:
        """Fetch and handle messages until stop is set; in-flight messages finish first.

        Each turn of the loop beats the `consumer:<durable>` heartbeat behind /livez. If the
        shutdown grace runs out and the task is cancelled, unfinished messages are nak'ed so
        another replica takes them at once instead of after the ack wait.
        """
        heart = f"consumer:{self._durable}"
        ops.beat(heart)
        sub = await self._js.pull_subscribe_bind(durable=self._durable, stream=self._stream)
        try:
            while not stop.is_set():
                ops.beat(heart)
                try:
                    msgs = await sub.fetch(batch, timeout=1.0)
                except (TimeoutError, nats.errors.TimeoutError):
                    continue
                except nats.errors.Error as exc:
                    log.warning("fetch failed: %s", exc)
                    await asyncio.sleep(1.0)
                    continue
                await asyncio.gather(*(self._handle(m) for m in msgs))
        finally:
            ops.HEALTH.forget(heart)
            # nats-py's drain() waits forever on a pull subscription's queue; leave it first.
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def _handle(self, msg: Msg) -> None:
        """Run the handler on one message, settle it with the broker and count the outcome."""
        try:
            event = Event.decode(msg.data, msg.headers)
        except ValueError as exc:
            log.error("poison message on %s: %s", msg.subject, exc)
            metrics.EVENTS_HANDLED.labels(self._durable, "unknown", "poison").inc()
            await self._dead_letter(msg, str(exc))
            return
        LOG_CONTEXT.set({"order_id": event.order_id, "correlation_id": event.correlation_id})
        try:
            outcome = await self._settle(msg, event)
        except asyncio.CancelledError:
            # Shutdown ran out of grace mid-handler: hand the message back now; the handler's
            # writes are guarded transitions, so whoever runs it next finishes the job.
            with contextlib.suppress(Exception):
                await asyncio.shield(msg.nak())
            metrics.EVENTS_HANDLED.labels(self._durable, event.type.value, "interrupted").inc()
            raise
        metrics.EVENTS_HANDLED.labels(self._durable, event.type.value, outcome).inc()

    async def _settle(self, msg: Msg, event: Event) -> str:
        """Run the handler and ack, nak or term the message; returns the outcome's label."""
        delivered = msg.metadata.num_delivered or 1
        try:
            if await self._inbox.seen(self._durable, event.id):
                await msg.ack()
                return "duplicate"
            await self._handler(event)
            await self._inbox.record(self._durable, event.id)
        except Retry as retry:
            if delivered >= MAX_DELIVER:
                # The broker would drop it silently; park it where operators look instead.
                log.error(
                    "giving up retrying %s for order %s: %s",
                    event.type,
                    event.order_id,
                    retry,
                    extra={"order_id": event.order_id},
                )
                await self._dead_letter(msg, f"retries exhausted: {retry}")
                return "dead_letter"
            log.info(
                "retrying %s for order %s in %.1fs: %s",
                event.type,
                event.order_id,
                retry.delay,
                retry,
                extra={"order_id": event.order_id, "correlation_id": event.correlation_id},
            )
            await msg.nak(delay=retry.delay)
            return "retry"
        except Exception as exc:
            if delivered >= MAX_DELIVER:
                log.exception("giving up on %s for order %s", event.type, event.order_id)
                await self._dead_letter(msg, repr(exc))
                return "dead_letter"
            log.exception(
                "handler failed on %s for order %s (delivery %d)",
                event.type,
                event.order_id,
                delivered,
                extra={"order_id": event.order_id, "correlation_id": event.correlation_id},
            )
            await msg.nak(delay=_backoff(delivered))
            return "error"
        await msg.ack()
        return "ok"

    async def _dead_letter(self, msg: Msg, reason: str) -> None:
        """Park a message on the dead-letter subject and stop its redelivery."""
        body = json.dumps(
            {"subject": msg.subject, "reason": reason, "data": msg.data.decode("utf-8", "replace")}
        ).encode()
        try:
            await self._js.publish(dead_letter_subject(self._prefix, self._durable), body)
        finally:
            await msg.term()
