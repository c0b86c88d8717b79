"""Shared libraries of the sms4sats services."""
