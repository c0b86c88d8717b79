"""Provider worker: buys numbers, watches for SMS, finishes or cancels activations."""
