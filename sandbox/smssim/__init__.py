"""Upstream SMS provider simulator speaking the HeroSMS / SMS-Activate handler_api protocol."""

from sandbox.smssim.app import build_app
from sandbox.smssim.state import Settings, SimState

__all__ = ["Settings", "SimState", "build_app"]
