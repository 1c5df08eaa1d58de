"""``python -m billingworker.console [--host H] [--port P]``: the same as ``billingworker console``."""

from .cli import console

console(prog_name="billingworker console")
