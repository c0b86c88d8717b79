"""HTTP load benchmark of the gateway against a bare aiohttp baseline (`python -m bench`)."""
