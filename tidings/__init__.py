"""Tidings: a real-time publish/subscribe push server over plain HTTP."""

__version__ = "0.1.0"


def compiled() -> bool:
    """Whether this copy runs compiled by mypyc (see README, "Compiled or plain Python")."""
    from tidings import hub

    return not hub.__file__.endswith(".py")
