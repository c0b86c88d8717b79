"""Structured JSON logging shared by every process."""

from __future__ import annotations

import json
import logging
import sys
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

# Extra fields a log call may attach; anything else in `extra` is dropped on purpose so a
# careless call cannot leak a secret into the logs.
_FIELDS = ("order_id", "correlation_id", "event", "status", "activation_id", "consumer")


# Set by the consumer around each event it handles, so every line logged while handling it
# carries the order and the correlation id that came in the NATS headers.
LOG_CONTEXT: ContextVar[dict[str, str] | None] = ContextVar("log_context", default=None)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, service, logger, message and known fields."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self._service = service

    def format(self, record: logging.LogRecord) -> str:
        """Render one record."""
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "service": self._service,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        context = LOG_CONTEXT.get() or {}
        for key in _FIELDS:
            value = record.__dict__.get(key, context.get(key))
            if value is not None:
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def setup_logging(service: str, level: str = "INFO") -> None:
    """Send every log line of this process to stderr as JSON."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(service))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiohttp's access log would print request paths; keep it but never headers.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    # aiohttp's protocol-level errors quote raw header bytes (possibly credentials); our
    # middleware already logs every handler failure, so these add nothing but risk.
    logging.getLogger("aiohttp.server").setLevel(logging.CRITICAL)
