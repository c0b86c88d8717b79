"""Payments worker: watches invoices, marks orders paid or expired, and pays refunds."""
