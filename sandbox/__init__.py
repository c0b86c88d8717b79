"""Simulators of the outside world (Lightning nodes, SMS provider) and the dev stack launcher."""
