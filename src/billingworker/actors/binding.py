"""Jobs are declared on import and bound to a broker by ``bootstrap``, not by the import.

Dramatiq binds an actor to a broker when the actor is declared. Binding ours to the broker of
BROKER_URL at import time made importing ``billingworker.actors`` build a broker from the
environment (so the CLI and the demo had to rewrite ``os.environ`` first). Instead every job is
declared on ``UNBOUND``, a broker that records the declarations and refuses to send or consume,
and ``bind_jobs`` moves them all to the process's real broker (``bootstrap.bootstrap``).
"""

from __future__ import annotations

import dramatiq
from dramatiq.broker import Broker

#: The command that starts worker processes: its module bootstraps, then loads the jobs.
WORKER_COMMAND = "dramatiq billingworker.worker"


class NotBootstrapped(RuntimeError):
    """A job was sent, or a worker started, before ``bootstrap`` bound the jobs to a broker."""

    def __init__(self) -> None:
        super().__init__("billingworker's jobs are not bound to a broker: call billingworker.bootstrap.bootstrap() "
                         f"first (worker processes: `{WORKER_COMMAND} ...`)")


class UnboundBroker(Broker):
    """Holds the declared jobs until ``bind_jobs``; sends and consumes nothing."""

    def __init__(self) -> None:
        super().__init__()  # Dramatiq's default middleware: the options our jobs declare are checked
        self.queues: set[str] = set()

    def declare_queue(self, queue_name: str) -> None:
        self.queues.add(queue_name)

    def get_declared_queues(self) -> set[str]:
        return set(self.queues)

    def enqueue(self, message, *, delay=None):
        raise NotBootstrapped()

    def emit_before(self, signal: str, *args, **kwargs) -> None:
        if signal == "worker_boot":  # a worker started on the jobs alone: stop it, saying why
            raise NotBootstrapped()
        super().emit_before(signal, *args, **kwargs)

    def consume(self, queue_name, prefetch=1, timeout=30000):
        raise NotBootstrapped()


UNBOUND = UnboundBroker()
# `dramatiq billingworker.worker` (the command before the bootstrap) would otherwise get
# Dramatiq's default broker with none of our jobs, and consume nothing, silently: with this it
# stops at once, saying which command to run. Only when no broker was set before.
if dramatiq.broker.global_broker is None:
    dramatiq.set_broker(UNBOUND)


def bind_jobs(broker: Broker) -> None:
    """Bind every declared job to ``broker`` and make it Dramatiq's global broker.

    May be called again (a CLI command switching to the in-process broker): the last call wins.
    """
    for actor in list(UNBOUND.actors.values()):
        actor.broker = broker
        broker.declare_actor(actor)
    dramatiq.set_broker(broker)


def bound_broker() -> Broker:
    """The broker the jobs are bound to (``NotBootstrapped`` before ``bind_jobs``)."""
    actors = list(UNBOUND.actors.values())
    if not actors or actors[0].broker is UNBOUND:
        raise NotBootstrapped()
    return actors[0].broker
