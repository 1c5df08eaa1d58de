"""Messages waiting for a retry on Redis: which job, which attempt, why the last one failed, when
the next one goes.

When an attempt fails with a transient error, Dramatiq's ``Retries`` middleware re-enqueues the
message with a delay: its JSON goes to the hash ``dramatiq:Q.DQ.msgs`` and its redis id to the
list ``dramatiq:Q.DQ``, with ``options.eta`` (ms since the epoch), ``options.retries`` (failed
attempts so far) and ``options.traceback`` (of the last one). A worker fetches it from that list
at once and holds it in memory until the eta (its id then sits in the worker's
``__acks__.<worker>.Q.DQ`` set), then moves it to ``Q`` and deletes it from ``Q.DQ.msgs``. So the
hash holds every retry still to come, held by a worker or not: that is what is read here.

The attempt number: a message runs at most ``max_retries + 1`` times (the actor's
``max_retries``, ``actors.base.MAX_RETRIES`` unless the job says otherwise; a message cannot
choose its own, ``message_options.py``). What is printed is masked and bounded like the dead
letters (``domain.redaction``).

RabbitMQ keeps the retries in the queues ``Q.DQ``, which it cannot list without taking the
messages: there, only their count is known (``status``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cached_property
from typing import Any

import redis

from ..domain.redaction import mask, mask_lines, mask_text
from .errors import OpsError
from .queues import NAMESPACE
from .stored_messages import StoredMessage

#: Characters of the error line a listing prints, and of one text of a message ``show`` prints.
ERROR_LIMIT = 500
SHOWN_TEXT_LIMIT = 2_000


class RetryNotFound(OpsError):
    """No message waiting for a retry has this id (redis id or message id) in the queues searched."""

    def __init__(self, ident: str, queues: tuple[str, ...]) -> None:
        self.ident = ident
        self.queues = queues
        super().__init__(f"no message waiting for a retry {ident!r} in {', '.join(q + '.DQ' for q in queues)} "
                         "(it may have been retried meanwhile: see `status`, `dead-letters list`)")


def actor_max_retries(actor_name: str) -> int | None:
    """The ``max_retries`` of the job ``actor_name`` as this installation declares it; None for a
    name no job has (such a message is refused by the worker, never retried)."""
    import dramatiq

    from ..actors.base import MAX_RETRIES
    from ..bootstrap import current_app

    try:
        actor = current_app().broker.get_actor(actor_name)
    except dramatiq.errors.ActorNotFound:
        return None
    return actor.options.get("max_retries", MAX_RETRIES)


@dataclass(frozen=True)
class PendingRetry(StoredMessage):
    """One message waiting for its next attempt. ``id`` is its redis id in ``Q.DQ.msgs``."""

    queue: str
    id: str
    raw: bytes

    @cached_property
    def message(self) -> dict[str, Any]:
        """The message as stored ({} if it is not a JSON object: Dramatiq never writes one)."""
        try:
            decoded = json.loads(self.raw)
        except (ValueError, RecursionError):
            return {}
        return decoded if isinstance(decoded, dict) else {}

    @property
    def next_attempt(self) -> int:
        """The number of the attempt to come: 2 after the first failure."""
        return self.retries + 1

    @property
    def eta_ms(self) -> int | None:
        eta = self.options.get("eta")
        return eta if isinstance(eta, int) else None

    @property
    def error(self) -> str:
        """The exception line of the last attempt's traceback ("" if none)."""
        return self.traceback_error

    def summary(self, *, max_retries: int | None, now_ms: int | None = None,
                failures: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        """What a listing prints: arguments and error masked and bounded. ``max_retries`` is the
        actor's (None: unknown job); ``failures``: its ``job_failures`` rows, if any."""
        now_ms = int(time.time() * 1000) if now_ms is None else now_ms
        eta = self.eta_ms
        return {
            "queue": self.queue, "id": self.id, "message_id": mask_text(self.message_id),
            "actor": mask_text(self.actor), "args": mask(self.args),
            "kwargs": mask(self.kwargs),
            "attempt": self.next_attempt, "max_attempts": None if max_retries is None else max_retries + 1,
            "failed_attempts": self.retries,
            "error": mask_text(self.error, ERROR_LIMIT),
            "failures": failures or [],
            "next_try_at": None if eta is None else datetime.fromtimestamp(eta / 1000, UTC).isoformat(),
            "next_try_in_seconds": None if eta is None else round((eta - now_ms) / 1000, 3),
        }

    def shown(self) -> tuple[dict[str, Any], str | None]:
        """The whole message masked and bounded, without its traceback; and that traceback, masked."""
        message = dict(self.message)
        options = dict(self.options)
        traceback = options.pop("traceback", None)
        if "options" in message:
            message["options"] = options
        return mask(message, text_limit=SHOWN_TEXT_LIMIT), None if traceback is None else mask_lines(str(traceback))


class Retries:
    """The messages waiting for a retry on one Redis broker (the database of BROKER_URL). Read-only."""

    def __init__(self, client: redis.Redis, *, namespace: str = NAMESPACE,
                 max_retries: Callable[[str], int | None] = actor_max_retries) -> None:
        self.client = client
        self.namespace = namespace
        self._max_retries = max_retries
        self._known: dict[str, int | None] = {}

    def max_retries(self, actor: str) -> int | None:
        """The actor's ``max_retries`` (None: no such job), looked up once per actor."""
        if actor not in self._known:
            self._known[actor] = self._max_retries(actor)
        return self._known[actor]

    def _key(self, queue: str) -> str:
        return f"{self.namespace}:{queue}.DQ.msgs"

    def list(self, queue: str, *, limit: int | None = None) -> list[PendingRetry]:
        """The retries of ``queue``, the next due first (unknown eta last), at most ``limit``."""
        retries = [PendingRetry(queue, key.decode(), raw)
                   for key, raw in self.client.hscan_iter(self._key(queue), count=1000)]
        retries.sort(key=lambda r: (r.eta_ms is None, r.eta_ms or 0, r.id))
        return retries if limit is None else retries[:limit]

    def count(self, queue: str) -> int:
        return self.client.hlen(self._key(queue))

    def find(self, ident: str, queues: tuple[str, ...]) -> PendingRetry:
        """The retry whose redis id, else whose message id, is ``ident``, in ``queues``."""
        for queue in queues:
            raw = self.client.hget(self._key(queue), ident)
            if raw is not None:
                return PendingRetry(queue, ident, raw)
        for queue in queues:
            for retry in self.list(queue):
                if retry.message_id == ident:
                    return retry
        raise RetryNotFound(ident, queues)

    def summary(self, retry: PendingRetry, *, now_ms: int | None = None,
                failures: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        """``retry.summary`` with its actor's attempt limit."""
        return retry.summary(max_retries=self.max_retries(retry.actor), now_ms=now_ms, failures=failures)
