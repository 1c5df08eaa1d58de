"""Messages the worker cannot run are refused with a reason, never left to stall a queue.

Dramatiq decodes each message in the consumer thread of its queue (``Message.decode``). A
payload that is not UTF-8, not JSON or not a message object raises ``DecodeError`` there: the
Redis consumer gives up and restarts, the payload stays unacknowledged, and the messages
fetched with it wait until the worker restarts (RabbitMQ dead-letters it, with the reason in its
log only). A message that decodes but names no job, claims another queue, or carries a Dramatiq
option of the wrong type fails later, inside Dramatiq: acknowledged without its retry, left
unacknowledged, or killing a worker thread.

Here none of them reaches a job. ``GuardedEncoder.decode`` never raises: a payload that is not
a message becomes a message for the internal actor ``refuse_undecodable_message``
(``actors.base``) naming the field and the rule. The consumers check what only they know (the
queue they read, the actors declared, on Redis the message's Redis id) and refuse the same way.
That actor writes a ``job_failures`` row and raises ``BadMessage``, so Dramatiq dead-letters the
message after one attempt like any bad input: the broker moves the **raw** payload (found by its
Redis id or AMQP delivery tag) to the dead-letter queue, and the consumer goes on with the next
message.
"""

from __future__ import annotations

import math
import reprlib
import threading
import time
import uuid
from typing import Any

import redis
from dramatiq.broker import Broker, MessageProxy
from dramatiq.brokers.rabbitmq import RabbitmqBroker, _RabbitmqConsumer, _RabbitmqMessage
from dramatiq.brokers.redis import RedisBroker, _RedisConsumer
from dramatiq.brokers.stub import StubBroker, _StubConsumer, _StubMessageProxy
from dramatiq.encoder import JSONEncoder, MessageData
from dramatiq.errors import ActorNotFound, ConnectionClosed, QueueNotFound
from dramatiq.logging import get_logger
from dramatiq.message import Message, get_encoder

from .domain.errors import ValidationError

#: The internal actor that refuses a message (declared in ``actors.base``; never send it).
REFUSE_ACTOR = "refuse_undecodable_message"
#: The largest message a worker parses, in bytes of JSON. The largest legitimate one (an
#: admin-written email, a batch of ids) is a few hundred kilobytes at most.
MAX_MESSAGE_BYTES = 1024 * 1024
#: ``job_failures.actor`` and ``job_failures.message_id`` are VARCHAR(100).
MAX_NAME_LENGTH = 100
#: Integer options and timestamps (milliseconds, counts) stay below this: exact in a float.
MAX_OPTION_INT = 2**53
#: The fields of a Dramatiq message; the last two have defaults.
REQUIRED_FIELDS = ("queue_name", "actor_name", "args", "kwargs", "options")
OPTIONAL_FIELDS = ("message_id", "message_timestamp")

_NULL = type(None)
#: The options Dramatiq's middleware read from a message, and the JSON types each may have. A
#: wrong type fails inside Dramatiq after the job ran (``"retries": "x"`` acknowledges a failed
#: message instead of retrying it; a ``throws`` kills the worker thread). Other options pass.
OPTION_TYPES: dict[str, tuple[type, ...]] = {
    "redis_message_id": (str,),
    "retries": (int,), "max_retries": (int, _NULL), "min_backoff": (int,), "max_backoff": (int,),
    "requeue_timestamp": (int,), "traceback": (str, _NULL),
    "eta": (int, _NULL), "time_limit": (int, _NULL), "max_age": (int, _NULL),
    "notify_shutdown": (bool, _NULL), "store_results": (bool, _NULL), "result_ttl": (int, _NULL),
    "on_success": (str, _NULL), "on_failure": (str, _NULL), "on_retry_exhausted": (str, _NULL),
    "pipe_target": (dict, _NULL), "pipe_ignore": (bool, _NULL),
    "group_completion_uuid": (str, _NULL), "group_completion_callbacks": (list, _NULL),
    # Exception classes, which JSON cannot carry.
    "throws": (_NULL,),
}
_JSON_TYPES = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", int: "a number",
               float: "a number", _NULL: "null"}

_quote = reprlib.Repr()
_quote.maxstring = _quote.maxother = 60
_quote.maxlist = _quote.maxdict = 4
_quote.maxlevel = 2


class BadMessage(ValidationError):
    """A message the worker cannot run: not a Dramatiq message, or not one of its jobs."""


def quoted(value: Any) -> Any:
    """``value`` as a refusal may quote it: small JSON scalars as they are, else a short repr."""
    if value is None or isinstance(value, bool | float) or (isinstance(value, int) and abs(value) < 2**63):
        return value
    if isinstance(value, bytes):
        text = value[:60].decode("utf-8", "replace")
        return text if len(value) <= 60 else f"{text}... ({len(value)} bytes)"
    if isinstance(value, str) and len(value) <= 60:
        return value
    return _quote.repr(value)


def _json_type(value: Any) -> str:
    return _JSON_TYPES.get(type(value), type(value).__name__)


def _is_name(value: Any) -> bool:
    """A non-empty printable string short enough for a VARCHAR(100) column."""
    return isinstance(value, str) and 0 < len(value) <= MAX_NAME_LENGTH and value.isprintable()


def _is_option_int(value: Any) -> bool:
    return type(value) is int and 0 <= value <= MAX_OPTION_INT


def _is_millis(value: Any) -> bool:
    """A time in milliseconds since the epoch: Dramatiq writes integers, other senders may not."""
    return _is_option_int(value) or (type(value) is float and math.isfinite(value) and 0 <= value <= MAX_OPTION_INT)


def check_message(data: Any) -> None:
    """Raise ``BadMessage`` unless ``data`` (decoded JSON) is a message Dramatiq can handle."""
    if not isinstance(data, dict):
        raise BadMessage("message", quoted(data), f"is {_json_type(data)}, not a JSON object")
    for name in REQUIRED_FIELDS:
        if name not in data:
            raise BadMessage(f"message.{name}", None, "is missing")
    for name in data:
        if name not in REQUIRED_FIELDS and name not in OPTIONAL_FIELDS:
            raise BadMessage("message", quoted(name), "is not a field of a Dramatiq message")
    for name, wanted in (("queue_name", str), ("actor_name", str), ("args", list), ("kwargs", dict),
                         ("options", dict)):
        if not isinstance(data[name], wanted):
            raise BadMessage(f"message.{name}", quoted(data[name]),
                             f"must be {_JSON_TYPES[wanted]}, not {_json_type(data[name])}")
    if not _is_name(data["actor_name"]):
        raise BadMessage("message.actor_name", quoted(data["actor_name"]),
                         f"is not a job name (1 to {MAX_NAME_LENGTH} printable characters)")
    if data["actor_name"] == REFUSE_ACTOR:
        raise BadMessage("message.actor_name", REFUSE_ACTOR, "is internal to the worker: it cannot be sent")
    if "message_id" in data and not _is_name(data["message_id"]):
        raise BadMessage("message.message_id", quoted(data["message_id"]),
                         f"must be a string of 1 to {MAX_NAME_LENGTH} printable characters")
    if "message_timestamp" in data and not _is_millis(data["message_timestamp"]):
        raise BadMessage("message.message_timestamp", quoted(data["message_timestamp"]),
                         "must be a number of milliseconds since the epoch")
    for name, value in data["options"].items():
        wanted = OPTION_TYPES.get(name)
        if wanted is None or (name == "eta" and _is_millis(value)):
            continue
        if int in wanted and _is_option_int(value):
            continue
        if type(value) in wanted and type(value) is not int:
            continue
        kinds = " or ".join(_JSON_TYPES[t] if t is not int else f"an integer from 0 to {MAX_OPTION_INT}"
                            for t in wanted)
        raise BadMessage(f"message.options.{name}", quoted(value), f"must be {kinds}")


def refusal_kwargs(exc: BadMessage, actor: Any = None) -> dict[str, Any]:
    """The arguments of ``refuse_undecodable_message`` for ``exc``; ``actor`` is the job the
    message named, kept only if it is one (for ``job_failures.actor``)."""
    return {"actor": actor if _is_name(actor) else "", "field": exc.field, "value": exc.value, "rule": exc.rule}


def _undecodable(exc: Exception) -> str:
    cause = getattr(exc, "error", None) or exc  # DecodeError carries the decoder's error
    if isinstance(cause, UnicodeDecodeError):
        return f"is not UTF-8 text ({cause.reason} at byte {cause.start})"
    return f"is not JSON ({type(cause).__name__}: {str(cause)[:200]})"


class GuardedEncoder(JSONEncoder):
    """Dramatiq's JSON encoding, whose decoding never raises: a payload that is not a message
    decodes as a message for REFUSE_ACTOR (``queue_name`` and ``message_id`` left empty for the
    consumer to fill). It remembers, per thread, the payload it decoded last: the Redis consumer
    needs those bytes to find the Redis id of a payload that does not name it."""

    def __init__(self) -> None:
        self._last = threading.local()

    def last_payload(self) -> bytes | None:
        """The payload this thread decoded last."""
        return getattr(self._last, "payload", None)

    def decode(self, data: bytes) -> MessageData:
        self._last.payload = data
        if len(data) > MAX_MESSAGE_BYTES:
            # Refused before it is parsed: a million-item list is 1.8 GB once it is Python objects.
            return self._refusal(BadMessage("message", f"{len(data)} bytes",
                                            f"is larger than {MAX_MESSAGE_BYTES} bytes: no job takes that much"))
        try:
            fields = super().decode(data)
        except Exception as exc:  # noqa: BLE001 - DecodeError; ValueError (> 4300 digits); RecursionError
            return self._refusal(BadMessage("message", quoted(data), _undecodable(exc)))
        try:
            check_message(fields)
        except BadMessage as exc:
            return self._refusal(exc, fields)
        return fields

    @staticmethod
    def _refusal(exc: BadMessage, fields: Any = None) -> MessageData:
        fields = fields if isinstance(fields, dict) else {}
        message_id = fields.get("message_id")
        return {"queue_name": "", "actor_name": REFUSE_ACTOR, "args": [],
                "kwargs": refusal_kwargs(exc, fields.get("actor_name")), "options": {},
                "message_id": message_id if _is_name(message_id) else "",
                "message_timestamp": int(time.time() * 1000)}


class _GuardedConsumer:
    """Over a Dramatiq consumer (first base after this one): each message it returns is one a
    worker can run, or a refusal that keeps the broker's handle on the raw message."""

    broker: Broker
    queue_name: str

    def __next__(self) -> MessageProxy | None:
        proxy = super().__next__()  # type: ignore[misc]
        if proxy is None:
            return None
        if proxy.actor_name == REFUSE_ACTOR:  # only GuardedEncoder writes this name
            claimed = proxy.kwargs["actor"]
            return self._refuse(proxy, {**proxy.kwargs, "actor": claimed if claimed in self.broker.actors else ""})
        try:
            self._check(proxy)
        except BadMessage as exc:
            actor = proxy.actor_name if proxy.actor_name in self.broker.actors else ""
            return self._refuse(proxy, refusal_kwargs(exc, actor))
        return proxy

    def _check(self, proxy: MessageProxy) -> None:
        if proxy.queue_name != self.queue_name:
            # Dramatiq would acknowledge it on the queue it names, and leave it here unacknowledged.
            raise BadMessage("message.queue_name", quoted(proxy.queue_name),
                             f"is not the queue the message was read from ({self.queue_name})")
        try:
            self.broker.get_actor(proxy.actor_name)
        except ActorNotFound:
            raise BadMessage("message.actor_name", quoted(proxy.actor_name), "is not a job of this worker") from None

    def _refuse(self, proxy: MessageProxy, kwargs: dict[str, Any]) -> MessageProxy | None:
        handle = self._handle(proxy)
        if handle is None:
            return None
        options, message_id = handle
        refusal = self._wrap(proxy, Message(
            queue_name=self.queue_name, actor_name=REFUSE_ACTOR, args=(), kwargs=kwargs, options=options,
            message_id=proxy.message_id or message_id, message_timestamp=int(time.time() * 1000)))
        if REFUSE_ACTOR not in self.broker.actors:  # a process that declared no actors
            get_logger(__name__).error("Message refused without a record (%s): %s %s", REFUSE_ACTOR,
                                       kwargs["field"], kwargs["rule"])
            self.nack(refusal)  # type: ignore[attr-defined]
            return None
        return refusal

    def _handle(self, proxy: MessageProxy) -> tuple[dict[str, Any], str] | None:
        """The options that let the broker dead-letter the raw message, and a message id."""
        return {}, str(uuid.uuid4())

    def _wrap(self, proxy: MessageProxy, message: Message) -> MessageProxy:
        return MessageProxy(message)


class _GuardedRedisConsumer(_GuardedConsumer, _RedisConsumer):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: Redis ids given to refusals not yet dead-lettered: two identical payloads get one each.
        self.refused_ids: set[str] = set()

    def _check(self, proxy: MessageProxy) -> None:
        if not isinstance(proxy.options.get("redis_message_id"), str):
            raise BadMessage("message.options.redis_message_id", quoted(proxy.options.get("redis_message_id")),
                             "is missing: the worker acknowledges a message by it (the id of its "
                             "hash field and list element)")
        super()._check(proxy)

    def _handle(self, proxy: MessageProxy) -> tuple[dict[str, Any], str] | None:
        # The payload may name no Redis id, or another one: find the id under which this very
        # payload was fetched, among the ids this consumer holds unacknowledged.
        encoder = get_encoder()
        payload = encoder.last_payload() if isinstance(encoder, GuardedEncoder) else None
        acks = f"{self.broker.namespace}:__acks__.{self.broker.broker_id}.{self.queue_name}"
        try:
            ids = [i for i in self.broker.client.smembers(acks) if _text(i) not in self.refused_ids]
            bodies = self.broker.client.hmget(f"{self.broker.namespace}:{self.queue_name}.msgs", ids) if ids else []
        except redis.ConnectionError as e:
            raise ConnectionClosed(e) from None
        found = next((_text(i) for i, body in zip(ids, bodies, strict=True)
                      if body is not None and payload is not None and _same(body, payload)), None)
        if found is None:
            get_logger(__name__, type(self)).error(
                "A message of queue %r cannot be run and was not found among the fetched ids: it stays "
                "unacknowledged until the worker restarts.", self.queue_name)
            self.queued_message_ids.discard(proxy.message_id)
            return None
        self.refused_ids.add(found)
        return {"redis_message_id": found}, found

    def _wrap(self, proxy: MessageProxy, message: Message) -> MessageProxy:
        # The base consumer counts fetched messages by message id until they are acked.
        self.queued_message_ids.discard(proxy.message_id)
        self.queued_message_ids.add(message.message_id)
        return MessageProxy(message)

    def ack(self, message: MessageProxy) -> None:
        self.refused_ids.discard(message.options.get("redis_message_id"))
        super().ack(message)

    def nack(self, message: MessageProxy) -> None:
        self.refused_ids.discard(message.options.get("redis_message_id"))
        super().nack(message)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _same(body: bytes | str, payload: bytes | str) -> bool:
    return (body.encode() if isinstance(body, str) else body) == (
        payload.encode() if isinstance(payload, str) else payload)


class _GuardedRabbitmqConsumer(_GuardedConsumer, _RabbitmqConsumer):
    def _wrap(self, proxy: MessageProxy, message: Message) -> MessageProxy:
        return _RabbitmqMessage(proxy.redelivered, proxy._tag, message)


class _GuardedStubConsumer(_GuardedConsumer, _StubConsumer):
    def __init__(self, broker: Broker, queue_name: str, *args: Any) -> None:
        super().__init__(*args)
        self.broker = broker
        self.queue_name = queue_name

    def _wrap(self, proxy: MessageProxy, message: Message) -> MessageProxy:
        return _StubMessageProxy(message)


class GuardedRedisBroker(RedisBroker):
    @property
    def consumer_class(self):
        return _GuardedRedisConsumer


class GuardedRabbitmqBroker(RabbitmqBroker):
    @property
    def consumer_class(self):
        return _GuardedRabbitmqConsumer


class GuardedStubBroker(StubBroker):
    def consume(self, queue_name: str, prefetch: int = 1, timeout: int = 100) -> _GuardedStubConsumer:
        try:
            return _GuardedStubConsumer(self, queue_name, self.queues[queue_name],
                                        self.dead_letters_by_queue[queue_name], prefetch, timeout)
        except KeyError:
            raise QueueNotFound(queue_name) from None
