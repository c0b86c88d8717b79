"""Shared code of the sms4sats services: domain logic and adapters."""
