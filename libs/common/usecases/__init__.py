"""Use cases shared by several services: over the stores and settings, never a provider or a bus."""
