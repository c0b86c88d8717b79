"""Settings of every service, read from SMS4SATS_* environment variables with embedded defaults."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from decimal import Decimal
from typing import Any, get_type_hints
from urllib.parse import quote

PREFIX = "SMS4SATS_"


@dataclass(frozen=True)
class Settings:
    """Every tunable of the system; the environment variable is SMS4SATS_<FIELD NAME UPPERCASE>."""

    database_url: str = "postgresql://postgres@127.0.0.1:5432/sms4sats"
    nats_url: str = "nats://127.0.0.1:4222"
    # Stream and subject prefix are configurable so test runs and tenants stay isolated.
    nats_stream: str = "ORDERS"
    subject_prefix: str = "orders"

    lnd_rest_url: str = "http://127.0.0.1:8181"
    lnd_macaroon_hex: str = field(default="", repr=False)
    lnd_macaroon_path: str = ""
    lnd_tls_cert_path: str = ""
    lnd_network: str = "regtest"
    # The payments worker's connection pools to LND: outgoing payments (send, track) get
    # their own, which no invoice stream, lookup or sweep can take.
    lnd_money_connections: int = 16
    # Settle and cancel of held funds get a pool of their own too: only these short calls
    # use it, so refund streams a receiver holds open (a hold invoice as the refund invoice)
    # can fill the payment pool without ever making a settle or a hold cancel wait.
    lnd_settle_connections: int = 4
    lnd_other_connections: int = 8
    # Hold invoices are found ACCEPTED by paging ListInvoices (pending only) this many at a
    # time each sweep: the node calls per sweep grow by one per page, never per invoice.
    hold_scan_page_size: int = 500
    # Unpaid orders (L402 and classic; /fund top-ups need an API key and are not counted) one
    # client address may have open at once; past it order creation answers 429 RATE_LIMITED.
    # 0 turns the cap off.
    max_unpaid_per_client: int = 20

    provider_url: str = "http://127.0.0.1:8090"
    provider_api_key: str = field(default="sim-key", repr=False)
    # Client-side pacing of provider calls (the upstream blocks an account for bursts over
    # about 50 req/s) and the timeout of each call.
    provider_rate_per_second: float = 40.0
    provider_timeout_seconds: float = 10.0
    # --- issue 12, provider budget (shared by replicas): settings go here ---
    # Calls after a quiet spell that may go at once; 1 keeps the strict pace, so N replicas
    # together never put more than provider_rate_per_second * (1 + late) + burst in a second.
    provider_budget_burst: float = 1.0
    # A slot the process wakes up later than this for is given up and a new one taken, so
    # requests sent late never bunch with those sent on time (event-loop lag under load).
    provider_budget_late_seconds: float = 0.1
    # The longest a provider call waits for its slot (or through a 429 / ban pause); longer
    # waits fail at once with a transient RateLimited / Banned so the worker retries later.
    provider_budget_max_wait_seconds: float = 30.0

    # --- issue 12, bulk poll and activation webhooks: settings go here ---
    # The provider POSTs each activation SMS to our webhook (/v2/l402/webhooks/sms?token=…, set
    # in the provider account): the code is stored as it arrives, and polling (one bulk
    # getActiveActivations per account and interval) becomes a slow safety net.
    activation_webhooks: bool = False
    # With activation webhooks on, the safety net's interval: SMS whose push was lost, and
    # activations the provider ended (no webhook tells of those). Off: sms_poll_interval_seconds.
    sms_safety_poll_seconds: float = 30.0

    # --- issue 12, Lightning and timers at scale: settings go here ---
    # Refund payments in flight at once per payments worker: a bounded pool, so 1,000 refunds
    # due together are paid in parallel without one task (and one claim) each waiting.
    refund_concurrency: int = 32
    # Due timers one scheduler claims and fires per transaction (one set-based insert of
    # their events): 10,000 due in the same second fire in about ten transactions.
    timer_batch_size: int = 1000
    # Outbox rows the relay publishes per transaction, all at once (JetStream dedups a
    # republish after a crash by Nats-Msg-Id), so 10,000 fired timers leave in seconds.
    outbox_batch_size: int = 500
    # Orders the invoice reconcile looks up one by one per pass (those whose invoice left
    # the pending scan): bounded, so a backlog costs a few calls per pass, never one each.
    reconcile_lookups_per_pass: int = 100

    gateway_host: str = "127.0.0.1"
    gateway_port: int = 8080
    # Public base URL for discovery documents (empty: derived from each request).
    public_url: str = ""
    index_verify_token: str = ""
    # Shared secret the provider sends in X-Webhook-Secret; empty disables the webhook.
    webhook_secret: str = field(default="", repr=False)
    rate_challenges_per_minute: int = 30
    rate_polls_per_minute: int = 120
    # Deprecated: true means trusted_proxy_hops = 1 (when that is 0).
    trust_forwarded_for: bool = False
    # How many proxies we run in front of the gateway, each appending to X-Forwarded-For; the
    # client is the entry that many from the right (0: the socket peer, the header ignored).
    trusted_proxy_hops: int = 0
    # The gateway's access log: one line per request, never headers, secret query values
    # (token, the classic orderId) redacted.
    access_log: bool = True
    # How long the gateway reuses what it read from the catalog tables (PG is the truth).
    catalog_ttl_seconds: float = 2.0
    # The scheduler reloads the provider's catalog into PostgreSQL this often.
    catalog_refresh_seconds: float = 600.0
    # Rental durations (hours) whose offers the catalog asks the provider for.
    rent_hours: str = "2,4,12,24,72,168"
    # BTC/USD source in CoinGecko's simple/price shape (the provider simulator serves one).
    fx_url: str = "http://127.0.0.1:8090/api/v3/simple/price"
    fx_refresh_seconds: float = 60.0
    # Older than this: still quoted, with a warning. Older than max age: no new orders.
    fx_stale_seconds: float = 600.0
    fx_max_age_seconds: float = 3600.0
    # A fetched rate further than this share (0.5 = 50 %) from the stored one is not stored and
    # raises the fx_rate_jump alarm; the stored rate keeps ageing. 0 turns the check off.
    fx_max_change_ratio: float = 0.5

    order_timeout_seconds: int = 1200
    cancel_min_age_seconds: int = 180
    # The classic API's own cancel window (its docs: 2 minutes after payment).
    classic_cancel_min_age_seconds: int = 120
    # After the SMS deadline, how long a hold may wait for the provider's cancel before the
    # invoice is cancelled anyway (1200 + 60 s: "cancelled by 21 minutes at the latest").
    hold_grace_seconds: float = 60.0
    invoice_expiry_seconds: int = 600
    macaroon_ttl_seconds: int = 86400
    code_retention_seconds: int = 3600
    # The floor of a refund invoice's validity; the rule is derived from the clocks below
    # (libs/common/domain/refund_invoices.py refund_min_validity_seconds).
    refund_min_validity_seconds: int = 1800
    allocation_deadline_seconds: int = 120
    # A code_received L402 order stays open this long (capped by its deadline) so the customer
    # can ask for another SMS on the same number; then the activation is finished.
    another_sms_window_seconds: float = 300.0
    # After an order's deadline, a provider that cannot be reached no longer delays its refund.
    provider_giveup_seconds: float = 120.0
    # Finishing an activation at the provider (setStatus 6) is housekeeping: a failed try is
    # retried after this long, doubling per try (at most 5 minutes apart), until the order's
    # deadline plus provider_giveup_seconds; it never holds back settlement or completion.
    provider_finish_retry_seconds: float = 2.0
    # Rentals: SMS arrive by webhook, polled as a fallback this often.
    rent_poll_interval_seconds: float = 10.0
    # The URL the provider POSTs rental SMS to (ours, with a secret token); empty: derived from
    # public_url and webhook_secret, or no webhook (polling only).
    rent_webhook_url: str = field(default="", repr=False)
    # While the provider reports NO_BALANCE, check the balance this often to lift the alarm.
    balance_check_seconds: float = 60.0

    price_multiplier: Decimal = Decimal("1.5")
    min_price_sats: int = 100

    refund_max_attempts: int = 5
    refund_retry_base_seconds: float = 2.0
    refund_fee_limit_sat: int = 10
    refund_timeout_seconds: int = 60
    # Routing fee cap of a refund as a share of its amount (parts per million, rounded down);
    # refund_fee_limit_sat stays the ceiling. 2 % leaves 2 sat on a 100-sat refund: two hops at
    # LND's default 1-sat base fee, and no more whatever route hints the customer's invoice has.
    refund_fee_limit_ppm: int = 20_000
    # ... but never below this: a smaller budget (a refund under 50 sat at 2 %) finds no route.
    refund_fee_limit_floor_sat: int = 2

    # How long a worker may hold a message before JetStream redelivers it (bootstrap sets it).
    ack_wait_seconds: float = 120.0
    sms_poll_interval_seconds: float = 2.0
    reconcile_interval_seconds: float = 30.0
    scheduler_tick_seconds: float = 0.5
    outbox_tick_seconds: float = 0.5

    log_level: str = "INFO"
    # Ops HTTP server (/livez, /readyz, /metrics) of every service; 0 disables it.
    ops_host: str = "127.0.0.1"
    ops_port: int = 0
    # On SIGTERM: how long in-flight work may take before it is abandoned (JetStream redelivers).
    shutdown_grace_seconds: float = 20.0
    # /livez answers 503 once a worker loop has not beaten its heartbeat for this long (longer
    # than the slowest handler, which the ack wait already bounds).
    liveness_stale_seconds: float = 150.0

    def webhook_url(self) -> str | None:
        """Where the provider should POST rental SMS, or None for polling only."""
        if self.rent_webhook_url:
            return self.rent_webhook_url
        if self.public_url and self.webhook_secret:
            token = quote(self.webhook_secret, safe="")
            return f"{self.public_url.rstrip('/')}/v2/l402/webhooks/rent?token={token}"
        return None

    def rent_durations(self) -> list[int]:
        """The rental durations of `rent_hours`, in hours, ascending and without duplicates."""
        hours = {int(part) for part in self.rent_hours.split(",") if part.strip()}
        if any(h <= 0 for h in hours):
            raise ValueError(f"{PREFIX}RENT_HOURS: durations must be positive hours")
        return sorted(hours)

    def macaroon_hex(self) -> str:
        """Return the LND macaroon as hex, from the variable or from the file path."""
        if self.lnd_macaroon_hex:
            return self.lnd_macaroon_hex
        if self.lnd_macaroon_path:
            with open(self.lnd_macaroon_path, "rb") as f:
                return f.read().hex()
        return ""


def _coerce(raw: str, kind: Any) -> Any:
    """Turn an environment string into the field's type."""
    if kind is bool:
        if raw.strip().lower() in ("1", "true", "yes", "on"):
            return True
        if raw.strip().lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError("expected true or false")
    if kind is int:
        return int(raw)
    if kind is float:
        return float(raw)
    if kind is Decimal:
        return Decimal(raw)
    return raw


def load_settings(env: dict[str, str] | None = None) -> Settings:
    """Build Settings from the environment (or the given mapping)."""
    source = os.environ if env is None else env
    hints = get_type_hints(Settings)
    values: dict[str, Any] = {}
    for f in fields(Settings):
        raw = source.get(PREFIX + f.name.upper())
        if raw is not None and raw != "":
            try:
                values[f.name] = _coerce(raw, hints[f.name])
            except (ValueError, ArithmeticError) as exc:
                raise ValueError(f"{PREFIX}{f.name.upper()}={raw!r}: {exc}") from exc
    return Settings(**values)
