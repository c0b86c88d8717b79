"""Structured JSON logging shared by every process."""

from __future__ import annotations

import json
import logging
import re
import sys
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, urlencode

from aiohttp.abc import AbstractAccessLogger
from aiohttp.web import BaseRequest, StreamResponse

# Extra fields a log call may attach; anything else in `extra` is dropped on purpose so a
# careless call cannot leak a secret into the logs.
_FIELDS = ("order_id", "correlation_id", "event", "status", "activation_id", "consumer")


# Set by the consumer around each event it handles, so every line logged while handling it
# carries the order and the correlation id that came in the NATS headers.
LOG_CONTEXT: ContextVar[dict[str, str] | None] = ContextVar("log_context", default=None)


# The webhook secret travels as ?token= (HeroSMS cannot send our headers): whatever logs a URL
# (the access log, an error, a client's log of the URL it sends) must not write it down.
_TOKEN_PARAM = re.compile(r"(?i)([?&;]token=)[^&;\s\"'#\\]*")
REDACTED = "REDACTED"
# Secret values registered by a service, masked wherever they appear in a line.
_SECRETS: set[str] = set()


def register_secret(value: str) -> None:
    """Mask this value (and its URL-quoted and JSON-escaped forms) in every log line."""
    if len(value) < 4:
        return  # masking a tiny value would garble unrelated text and hide nothing
    _SECRETS.update({value, quote(value, safe=""), json.dumps(value)[1:-1]})


def redact(text: str) -> str:
    """The text with every token query parameter's value and every registered secret masked."""
    text = _TOKEN_PARAM.sub(rf"\g<1>{REDACTED}", text)
    for secret in _SECRETS:
        if secret in text:
            text = text.replace(secret, REDACTED)
    return text


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
        # Redacted as a whole line: message, exception text and fields alike.
        return redact(json.dumps(out, default=str))


ACCESS_LOGGER = "sms4sats.access"
# Query parameters that carry a bearer secret: the webhook secret, and the classic API's
# orderId (whoever knows it reads the order and its code).
_SECRET_PARAMS = frozenset({"token", "orderid"})


class AccessLogger(AbstractAccessLogger):
    """One line per request: method, path and query (token redacted), status, size, time.

    No header is logged (credentials, API keys and the webhook secret travel in headers), and
    query parameters that carry a secret are redacted.
    """

    @property
    def enabled(self) -> bool:
        """Skip building the line when its level is off (SMS4SATS_LOG_LEVEL=WARNING)."""
        return self.logger.isEnabledFor(logging.INFO)

    def log(self, request: BaseRequest, response: StreamResponse, time: float) -> None:
        """Write the request's line."""
        # Rebuilt from the decoded query, so "tok%65n=" is caught as "token=" is.
        query = urlencode(
            [(k, REDACTED if k.lower() in _SECRET_PARAMS else v) for k, v in request.query.items()],
            errors="backslashreplace",  # undecodable bytes arrive as lone surrogates
        )
        self.logger.info(
            "%s %s %s %s %.1fms",
            request.remote,
            request.method,
            redact(f"{request.path}?{query}" if query else request.path),
            response.status,
            time * 1000,
        )


def setup_logging(service: str, level: str = "INFO") -> None:
    """Send every log line of this process to stderr as JSON."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(service))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiohttp's own access log would print raw request lines (query tokens and all); the
    # gateway writes its own, redacted, as ACCESS_LOGGER.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    # aiohttp's protocol-level errors quote raw header bytes (possibly credentials); our
    # middleware already logs every handler failure, so these add nothing but risk.
    logging.getLogger("aiohttp.server").setLevel(logging.CRITICAL)
