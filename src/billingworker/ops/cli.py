"""Operator commands, registered on the main CLI group by ``register``."""

from __future__ import annotations

import click


def register(main: click.Group) -> None:
    """Add the operator commands (status, dead-letters, health, metrics) to ``main``."""
