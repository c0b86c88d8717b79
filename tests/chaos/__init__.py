"""The fault matrix behind `make chaos`: a steady stream of every order type while one
server, simulator or worker fails, then the money checks. `tests/e2e/test_chaos.py` runs a
representative part of it under `make test`."""
