"""Gateway: the public HTTP API; validates, creates orders and invoices, authenticates L402."""
