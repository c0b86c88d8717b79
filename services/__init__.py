"""The four sms4sats services: gateway, payments, provider, scheduler."""
