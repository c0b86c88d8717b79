"""Prometheus metrics every service exports on its ops port's /metrics (names are the contract
the alert rules in deploy/ and the README's operations section rely on)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

# Sampled from PostgreSQL by a collector loop (one per process; every replica reports the same
# numbers, so alert on max(), not sum()).
ORDERS = Gauge("sms4sats_orders", "Orders currently in each status", ["type", "status"])
INVOICES = Gauge("sms4sats_invoices", "Invoices by kind and state", ["kind", "state"])
PAID_ORDERS_PAST_DEADLINE = Gauge(
    "sms4sats_paid_orders_past_deadline",
    "Paid orders not terminal although their deadline passed more than a grace ago",
)
CONSUMER_PENDING = Gauge(
    "sms4sats_consumer_pending", "JetStream messages not yet delivered to a consumer", ["consumer"]
)
CONSUMER_ACK_PENDING = Gauge(
    "sms4sats_consumer_ack_pending", "JetStream messages delivered but not acked", ["consumer"]
)
FX_RATE_AGE = Gauge("sms4sats_fx_rate_age_seconds", "Age of the cached BTC/USD rate")
PROVIDER_NO_BALANCE = Gauge(
    "sms4sats_provider_no_balance",
    "1 while the provider account reported NO_BALANCE (new orders are refused)",
)
FX_RATE_REJECTED = Gauge(
    "sms4sats_fx_rate_rejected",
    "1 while the BTC/USD source answers a rate too far from the stored one (not stored)",
)

# Counted where they happen.
TRANSITIONS = Counter(
    "sms4sats_order_transitions_total", "Order status changes", ["from_status", "to_status"]
)
STAGE_SECONDS = Histogram(
    "sms4sats_stage_seconds",
    "Time an order spent in a stage",
    ["stage"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1200, 1800),
)
# Each SMS counts once, under the source that saw it first (webhook, bulk, getStatus).
SMS_ARRIVALS = Counter(
    "sms4sats_sms_arrivals_total", "SMS recorded on one-time orders, by first source", ["source"]
)
REFUNDS = Counter("sms4sats_refunds_total", "Refund payouts by outcome", ["outcome"])
PROVIDER_ERRORS = Counter(
    "sms4sats_provider_errors_total", "Errors answered by the SMS provider", ["code"]
)
EVENTS_HANDLED = Counter(
    "sms4sats_events_handled_total", "Bus events handled", ["consumer", "type", "outcome"]
)
HTTP_REQUESTS = Counter("sms4sats_http_requests_total", "Gateway requests", ["route", "status"])
TIMERS_FIRED = Counter("sms4sats_timers_fired_total", "Durable timers fired", ["kind"])
PROVIDER_BUDGET_WAIT = Histogram(
    "sms4sats_provider_budget_wait_seconds",
    "Time a provider call waited for its slot in the account's request budget",
    ["urgency"],
    buckets=(0.001, 0.005, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
PROVIDER_BUDGET_PAUSES = Counter(
    "sms4sats_provider_budget_pauses_total",
    "Pauses of the provider request budget (a 429 or BANNED answer holds every replica)",
    ["reason"],
)
PROVIDER_BUDGET_LATE = Counter(
    "sms4sats_provider_budget_late_total",
    "Slots given up because the process woke too late to use them (a new slot was taken)",
    ["urgency"],
)
PROVIDER_BUDGET_REFUSED = Counter(
    "sms4sats_provider_budget_refused_total",
    "Provider calls refused by the budget: the wait would exceed max_wait, or no database",
    ["urgency", "reason"],
)
# Fire time (the claiming transaction committed) minus due time; the issue-12 target is a
# p99 of 2 s with 10,000 timers due in the same second, so the buckets are fine around it.
TIMER_LATENESS = Histogram(
    "sms4sats_timer_lateness_seconds",
    "How late a durable timer fired (fire time - due time)",
    ["kind"],
    buckets=(0.05, 0.1, 0.25, 0.5, 0.75, 1, 1.5, 2, 3, 5, 10, 30, 60, 300),
)
