"""Scheduler worker: fires durable timers stored in PostgreSQL; any number of replicas is safe."""
