"""Which broker (Redis, RabbitMQ, in-process) and which middleware.

BROKER_URL picks it: ``redis://...`` (default), ``amqp://...`` (RabbitMQ) or ``stub://`` (the
in-process broker used by the demo and the tests). Dramatiq 2 no longer adds Prometheus by
default and its StubBroker.join fails fast by default; we rely on neither.

Each broker is Dramatiq's own with guarded consumers (``message_guard``): a message the worker
cannot run (undecodable, an unknown job, an option of the wrong type) is dead-lettered with a
``job_failures`` row instead of stalling its queue.
"""

from __future__ import annotations

import dramatiq
from dramatiq.broker import Broker
from dramatiq.middleware import AgeLimit, CurrentMessage

from .config import Config, get_config
from .message_guard import GuardedEncoder, GuardedRabbitmqBroker, GuardedRedisBroker, GuardedStubBroker
from .message_options import TrustedOptions
from .queue_names import QUEUES


def make_broker(url: str, config: Config | None = None) -> Broker:
    """The broker for ``url`` with our middleware; its tunables come from ``config`` (default: the environment's)."""
    config = config or get_config()
    # The guarded consumers need the encoder that never raises (message_guard).
    if not isinstance(dramatiq.get_encoder(), GuardedEncoder):
        dramatiq.set_encoder(GuardedEncoder())
    if url.startswith("stub:"):
        broker: Broker = GuardedStubBroker()
    elif url.startswith(("redis://", "rediss://", "unix://")):
        # Operator tunables: how soon the messages of a worker that died are given to another one.
        # Heartbeat timeout in milliseconds (Dramatiq: 60000); maintenance chance in broker calls
        # per million (Dramatiq: 1000; 1000000 = on every call).
        options = {}
        if config.broker_heartbeat_timeout_ms:
            options["heartbeat_timeout"] = config.broker_heartbeat_timeout_ms
        if config.broker_maintenance_chance:
            options["maintenance_chance"] = config.broker_maintenance_chance
        broker = GuardedRedisBroker(url=url, **options)
    elif url.startswith(("amqp://", "amqps://")):
        # Publisher confirms: a send returns once RabbitMQ has the message (without them a
        # message published just before RabbitMQ goes down is lost, and the sender never knows).
        broker = GuardedRabbitmqBroker(url=url, confirm_delivery=True)
    else:
        raise ValueError(f"BROKER_URL: {url!r} is not redis://, amqp:// or stub://")
    # Before Dramatiq's own middleware reads them: no sender chooses a job's retries, backoff,
    # time limit or callbacks (message_options.py).
    broker.add_middleware(TrustedOptions(), before=AgeLimit)
    # CurrentMessage lets a job know its own message id (the key of its run-once receipt).
    broker.add_middleware(CurrentMessage())
    if not url.startswith("stub:"):
        # JSON logs in worker processes, set up after Dramatiq configured its own logging.
        from .ops.logs import StructuredLogging

        broker.add_middleware(StructuredLogging())
    if isinstance(broker, GuardedRedisBroker):
        # Worker processes (and only they: it starts at worker boot) record themselves as
        # consumers, with their processed/failed counts: what `health` and `status` count as
        # live workers (Dramatiq's heartbeats also count every process that enqueues).
        from .ops.consumers import ConsumerPresence

        broker.add_middleware(ConsumerPresence(broker.client))
    if not url.startswith("stub:"):
        # PROMETHEUS_PORT set: Dramatiq's Prometheus middleware, serving our queue and daily-run
        # gauges on the same port (docs/operations.md). Off when unset, as in the tests.
        from .ops.metrics import worker_metrics

        if config.prometheus_port is not None and (metrics := worker_metrics()) is not None:
            broker.add_middleware(metrics)
    for queue in QUEUES:
        broker.declare_queue(queue)
    return broker
