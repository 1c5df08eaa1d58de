"""Read-model commands (SPEC §13): ``billingworker statement`` and ``billingworker summary``."""

from __future__ import annotations

import click


def register(main: click.Group) -> None:
    """Add the read-model commands to ``main``."""
