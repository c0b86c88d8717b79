"""Operator tools on top of everything: bootstrap and the invariant checker."""
