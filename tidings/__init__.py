"""Tidings: a real-time publish/subscribe push server over plain HTTP."""

__version__ = "0.1.0"
