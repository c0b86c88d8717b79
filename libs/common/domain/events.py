"""Order events: what happened to an order, as published on NATS (pure)."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class EventType(StrEnum):
    """The kinds of order event; the value is the last token of the NATS subject."""

    CREATED = "created"
    PAID = "paid"
    REFUND_REQUESTED = "refund_requested"
    INVOICE_EXPIRED = "invoice_expired"
    SMS_TIMEOUT = "sms_timeout"
    CANCEL_REQUESTED = "cancel_requested"
    CODE_DELIVERED = "code_delivered"
    HOLD_DEADLINE = "hold_deadline"
    ANOTHER_SMS_REQUESTED = "another_sms_requested"
    CODE_WINDOW_ENDED = "code_window_ended"
    RENT_ENDED = "rent_ended"
    COMPLETED = "completed"
    REFUNDED = "refunded"
    REFUND_FAILED = "refund_failed"
    EXPIRED = "expired"


class Timer(StrEnum):
    """The kinds of durable timer; the value is what the timers table stores."""

    INVOICE_EXPIRED = "invoice_expired"
    SMS_TIMEOUT = "sms_timeout"
    PURGE_CODE = "purge_code"
    HOLD_DEADLINE = "hold_deadline"
    # The end of the window in which another SMS may be asked for on a code_received order.
    CODE_WINDOW = "code_window"
    RENT_END = "rent_end"


# The registry of events: which worker's durable consumer acts on each (None: nobody, it is
# only published). Each worker maps exactly its events to handlers (`bus.dispatch` checks).
# Adding a step: a member above, its row here, its handler in the worker's table.
EVENTS: dict[EventType, str | None] = {
    EventType.CREATED: "payments",
    EventType.REFUND_REQUESTED: "payments",
    EventType.INVOICE_EXPIRED: "payments",
    EventType.CODE_DELIVERED: "payments",
    EventType.HOLD_DEADLINE: "payments",
    EventType.PAID: "provider",
    EventType.SMS_TIMEOUT: "provider",
    EventType.CANCEL_REQUESTED: "provider",
    EventType.ANOTHER_SMS_REQUESTED: "provider",
    EventType.CODE_WINDOW_ENDED: "provider",
    EventType.RENT_ENDED: "provider",
    EventType.COMPLETED: None,
    EventType.REFUNDED: None,
    EventType.REFUND_FAILED: None,
    EventType.EXPIRED: None,
}

# The registry of timers: the event each becomes when it fires (None: the scheduler's own
# housekeeping, its action in the scheduler's `HOUSEKEEPING` table). Adding a timed step: a
# Timer member and its row here, then the action in the acting worker's table.
TIMERS: dict[Timer, EventType | None] = {
    Timer.INVOICE_EXPIRED: EventType.INVOICE_EXPIRED,
    Timer.SMS_TIMEOUT: EventType.SMS_TIMEOUT,
    Timer.HOLD_DEADLINE: EventType.HOLD_DEADLINE,
    Timer.CODE_WINDOW: EventType.CODE_WINDOW_ENDED,
    Timer.RENT_END: EventType.RENT_ENDED,
    Timer.PURGE_CODE: None,
}

# Each worker's events, derived from the registry: one durable consumer with these filters.
CONSUMERS: dict[str, tuple[EventType, ...]] = {
    consumer: tuple(t for t, owner in EVENTS.items() if owner == consumer)
    for consumer in dict.fromkeys(owner for owner in EVENTS.values() if owner is not None)
}

MSG_ID_HEADER = "Nats-Msg-Id"
CORRELATION_HEADER = "X-Correlation-Id"


@dataclass(frozen=True)
class Event:
    """One thing that happened to one order."""

    type: EventType
    order_id: str
    data: dict[str, Any] = field(default_factory=dict)
    id: str = field(default_factory=lambda: str(uuid.uuid4()))
    correlation_id: str = ""

    def subject(self, prefix: str) -> str:
        """The NATS subject this event is published on."""
        return f"{prefix}.{self.type.value}"

    def payload(self) -> dict[str, Any]:
        """The JSON body of the message."""
        return {"id": self.id, "type": self.type.value, "orderId": self.order_id, "data": self.data}

    def headers(self) -> dict[str, str]:
        """The NATS headers: the dedup id and the correlation id."""
        return {MSG_ID_HEADER: self.id, CORRELATION_HEADER: self.correlation_id or self.order_id}

    @classmethod
    def decode(cls, body: bytes, headers: dict[str, str] | None) -> Event:
        """Parse a message body; raises ValueError on anything malformed."""
        try:
            raw = json.loads(body)
            return cls(
                type=EventType(raw["type"]),
                order_id=str(raw["orderId"]),
                data=dict(raw.get("data") or {}),
                id=str(raw["id"]),
                correlation_id=(headers or {}).get(CORRELATION_HEADER, ""),
            )
        except (KeyError, TypeError, json.JSONDecodeError) as exc:
            raise ValueError(f"malformed event: {exc}") from exc


def subjects(prefix: str, consumer: str) -> list[str]:
    """The filter subjects of a worker's durable consumer."""
    return [f"{prefix}.{t.value}" for t in CONSUMERS[consumer]]


def dead_letter_subject(prefix: str, consumer: str) -> str:
    """Where a consumer parks messages it gave up on."""
    return f"{prefix}.dlq.{consumer}"
