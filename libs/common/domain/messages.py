"""The SMS messages of an order: one identity per message whichever source reported it (pure)."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import UTC, datetime

# Verification codes are 4-8 digits, sometimes written "123-456" or "123 456".
_CODE = re.compile(r"(?<!\d)(\d{3}[- ]\d{3}|\d{4,8})(?!\d)")


@dataclass(frozen=True)
class Message:
    """One SMS received on an order's number."""

    received_at: datetime
    text: str | None
    code: str | None = None
    phone_from: str | None = None
    # False when the provider gave no usable time and received_at is only when we saw it:
    # the key then leaves the time out, so a retried push is still stored once.
    dated: bool = True

    def dedup_key(self) -> str:
        """The same SMS from the webhook and from polling yields the same key."""
        at = ""
        if self.dated:
            try:
                at = self.received_at.astimezone(UTC).replace(microsecond=0).isoformat()
            except OverflowError:  # past year 9999 (or before 1) in UTC: still one stable key
                at = self.received_at.replace(microsecond=0).isoformat()
        # The code is left out: one source may report it and the other not.
        body = self.text if self.text is not None else (self.code or "")
        raw = f"{self.phone_from or ''}\x00{body}\x00{at}"
        return hashlib.sha256(raw.encode("utf-8", "surrogatepass")).hexdigest()


def extract_code(text: str | None) -> str | None:
    """The verification code in an SMS text, if it carries one (digits only)."""
    if not text:
        return None
    found = _CODE.search(text)
    return re.sub(r"\D", "", found.group(1)) if found else None


def storable(value: str | None) -> str | None:
    """Provider text as PostgreSQL can store it: NULs dropped, lone surrogates replaced."""
    if value is None:
        return None
    return value.replace("\x00", "").encode("utf-8", "replace").decode("utf-8")
