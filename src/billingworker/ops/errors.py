"""The errors of the operator commands: each one names what was asked and why it cannot be done."""

from __future__ import annotations


class OpsError(Exception):
    """Base of the errors the operator commands report (the CLI prints them and exits 1)."""


class UnsupportedBroker(OpsError):
    """The command needs a broker this installation does not use (dead letters need Redis)."""


class DeadLetterNotFound(OpsError):
    """No dead-lettered message has this id (redis id or message id) in the queues searched."""

    def __init__(self, ident: str, queues: tuple[str, ...]) -> None:
        self.ident = ident
        self.queues = queues
        super().__init__(f"no dead letter {ident!r} in {', '.join(q + '.XQ' for q in queues)}")
