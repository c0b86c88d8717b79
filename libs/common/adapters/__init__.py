"""Clients of the systems we do not run: the Lightning node and the SMS provider."""
