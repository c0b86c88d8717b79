"""The domain: orders, events, pricing, credentials and invoices as pure values and rules."""
