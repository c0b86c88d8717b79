"""API errors: one exception type and the middleware that renders every failure as JSON."""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable
from typing import Any, Final

import asyncpg
from aiohttp import web

log = logging.getLogger(__name__)


class ApiError(Exception):
    """An error answered to the client as {"error": {"code", "message"}} with an HTTP status."""

    def __init__(
        self, status: int, code: str, message: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}


def error_response(status: int, code: str, message: str) -> web.Response:
    """The JSON body every error uses."""
    return web.json_response({"error": {"code": code, "message": message}}, status=status)


# The resources of the classic API's routes: their failures keep the classic error body.
CLASSIC_ROUTES = web.AppKey("classic_routes", set[web.AbstractResource])


def mark_classic(app: web.Application, route: web.AbstractRoute) -> None:
    """Mark a route as the classic API's: the gateway-wide errors answer it in its body."""
    if route.resource is not None:
        app.setdefault(CLASSIC_ROUTES, set()).add(route.resource)


def _is_classic(request: web.Request) -> bool:
    """Whether the request matched a route marked by `mark_classic`."""
    resource = request.match_info.route.resource
    return resource is not None and resource in request.app.get(CLASSIC_ROUTES, ())


def _failure(request: web.Request, status: int, code: str, message: str) -> web.Response:
    """A failure in the body of the API the route belongs to (classic or L402)."""
    if _is_classic(request):
        return web.json_response({"status": "error", "reason": message}, status=status)
    return error_response(status, code, message)


def rate_limited(wait_seconds: float, message: str = "too many requests; slow down") -> ApiError:
    """429 RATE_LIMITED with the Retry-After (whole seconds, at least 1) the client should wait."""
    retry_after = str(max(1, math.ceil(wait_seconds)))
    return ApiError(429, "RATE_LIMITED", message, headers={"Retry-After": retry_after})


class StaleCredential(ApiError):
    """A well-formed credential whose token expired or no longer exists (pruned, revoked)."""


async def read_json(request: web.Request) -> Any:
    """The request body as JSON, or a 400 VALIDATION_ERROR for anything unreadable."""
    try:
        return await request.json()
    except (ValueError, RecursionError, LookupError, web.RequestPayloadError) as exc:
        # ValueError: bad JSON or UTF-8; LookupError: unknown charset; RecursionError:
        # absurd nesting; RequestPayloadError: a body that fails to decompress.
        raise ApiError(400, "VALIDATION_ERROR", "body: must be valid JSON") from exc


# A server we depend on is unreachable (PostgreSQL down or restarting, a refused or reset
# connection): nothing was committed, so the client is told to retry, not that we broke.
UNREACHABLE: Final = (
    OSError,
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.exceptions.TooManyConnectionsError,
)
UNREACHABLE_RETRY_AFTER_SECONDS: Final = 2

_HTTP_CODES = {404: "NOT_FOUND", 405: "METHOD_NOT_ALLOWED", 413: "PAYLOAD_TOO_LARGE"}


@web.middleware
async def error_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Turn ApiError, aiohttp's HTTP errors and any crash into a JSON error, never a traceback.

    On a classic route the body is the classic one, {"status": "error", "reason"}, with the
    same status and headers; elsewhere {"error": {"code", "message"}}.
    """
    try:
        return await handler(request)
    except ApiError as exc:
        resp = _failure(request, exc.status, exc.code, exc.message)
        resp.headers.update(exc.headers)
        return resp
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = _HTTP_CODES.get(exc.status, "VALIDATION_ERROR" if exc.status < 500 else "INTERNAL")
        resp = _failure(request, exc.status, code, exc.reason)
        if exc.status == 405:
            resp.headers["Allow"] = exc.headers.get("Allow", "")
        return resp
    except UNREACHABLE as exc:
        log.warning(
            "backend unreachable on %s %s: %s", request.method, request.path, type(exc).__name__
        )
        resp = _failure(request, 503, "UNAVAILABLE", "temporarily unavailable; retry shortly")
        resp.headers["Retry-After"] = str(UNREACHABLE_RETRY_AFTER_SECONDS)
        return resp
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return _failure(request, 500, "INTERNAL", "internal error; please retry later")
