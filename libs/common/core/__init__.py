"""The ground floor: settings, logging, metrics, fault injection and rate limiting."""
