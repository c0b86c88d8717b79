"""NATS and the process: the bus, the outbox relay, the worker runtime and ops endpoints."""
