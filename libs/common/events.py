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


# Which worker acts on which events; each is one durable consumer with these filters.
CONSUMERS: dict[str, tuple[EventType, ...]] = {
    "payments": (
        EventType.CREATED,
        EventType.REFUND_REQUESTED,
        EventType.INVOICE_EXPIRED,
        EventType.CODE_DELIVERED,
        EventType.HOLD_DEADLINE,
    ),
    "provider": (
        EventType.PAID,
        EventType.SMS_TIMEOUT,
        EventType.CANCEL_REQUESTED,
        EventType.ANOTHER_SMS_REQUESTED,
        EventType.CODE_WINDOW_ENDED,
        EventType.RENT_ENDED,
    ),
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
