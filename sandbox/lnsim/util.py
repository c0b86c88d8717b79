"""Encoding helpers, atomic file writes and LND-style RPC errors for the simulator."""

from __future__ import annotations

import base64
import binascii
import json
import os
import tempfile
from pathlib import Path
from typing import Any

# grpc status code -> HTTP status, as grpc-gateway's HTTPStatusFromCode maps them.
_GRPC_TO_HTTP = {
    0: 200,
    1: 499,
    2: 500,
    3: 400,
    4: 504,
    5: 404,
    6: 409,
    7: 403,
    8: 429,
    9: 400,
    10: 409,
    11: 400,
    12: 501,
    13: 500,
    14: 503,
    15: 500,
    16: 401,
}

GRPC_UNKNOWN = 2
GRPC_INVALID_ARGUMENT = 3
GRPC_NOT_FOUND = 5
GRPC_ALREADY_EXISTS = 6
GRPC_UNIMPLEMENTED = 12


class RpcError(Exception):
    """An error answered the way LND's gRPC gateway answers it."""

    def __init__(self, message: str, code: int = GRPC_UNKNOWN) -> None:
        super().__init__(message)
        self.message = message
        self.code = code

    @property
    def http_status(self) -> int:
        """HTTP status grpc-gateway uses for this gRPC code."""
        return _GRPC_TO_HTTP.get(self.code, 500)

    def status_json(self) -> dict[str, Any]:
        """The google.rpc.Status JSON body."""
        return {"code": self.code, "message": self.message, "details": []}


def b64(data: bytes) -> str:
    """Standard base64 with padding, as protojson encodes bytes."""
    return base64.b64encode(data).decode("ascii")


def b64_decode_any(value: str, field: str) -> bytes:
    """Decode standard or URL-safe base64, padded or not (protojson accepts all)."""
    # A '+' from standard base64 arrives as a space when a query string was not escaped.
    text = value.strip().replace(" ", "+")
    text += "=" * (-len(text) % 4)
    try:
        if "-" in text or "_" in text:
            return base64.urlsafe_b64decode(text)
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise RpcError(
            f"type mismatch, parameter: {field}, error: illegal base64 data", GRPC_INVALID_ARGUMENT
        ) from exc


def parse_int(value: Any, field: str) -> int:
    """Parse a protojson integer (JSON number or decimal string)."""
    if value is None or value == "":
        return 0
    if isinstance(value, bool):
        raise RpcError(
            f"proto: invalid value for integer field {field}: {value}", GRPC_INVALID_ARGUMENT
        )
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            return int(value, 10)
        except ValueError:
            pass
    raise RpcError(
        f"proto: invalid value for integer field {field}: {value!r}", GRPC_INVALID_ARGUMENT
    )


def parse_bool(value: Any, field: str) -> bool:
    """Parse a protojson/grpc-gateway boolean (JSON bool or query string)."""
    if value is None or value == "":
        return False
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "1"):
        return True
    if isinstance(value, str) and value.lower() in ("false", "0"):
        return False
    raise RpcError(f"proto: invalid value for bool field {field}: {value!r}", GRPC_INVALID_ARGUMENT)


def parse_str(value: Any, field: str) -> str:
    """Parse a protojson string field."""
    if value is None:
        return ""
    if not isinstance(value, str):
        raise RpcError(
            f"proto: invalid value for string field {field}: {value!r}", GRPC_INVALID_ARGUMENT
        )
    return value


def atomic_write_text(path: Path, text: str, *, mode: int = 0o644) -> None:
    """Write a file atomically: temporary file in the same folder, then rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def atomic_write_json(path: Path, data: Any) -> None:
    """Write JSON atomically."""
    atomic_write_text(path, json.dumps(data, indent=1, sort_keys=True) + "\n")
