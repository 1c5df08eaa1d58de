"""Dead-lettered messages on Redis: list, show, requeue, purge.

Dramatiq keeps the dead letters of queue ``Q`` in the sorted set ``dramatiq:Q.XQ`` (redis id,
scored by the time in ms it died) and their JSON in the hash ``dramatiq:Q.XQ.msgs``, for 7
days. A dead message carries the options of its last attempt (``retries``, ``traceback`` of
the attempt before, ``requeue_timestamp``); a refused one (bad input) carries none, its reason
is in ``job_failures``.

What the commands print of a dead letter (``summary``, ``shown``) is masked and bounded with the
rules of ``domain.redaction``: secret keys at any depth of its kwargs, args and options, card
numbers, URL passwords; long texts cut. Only ``requeue`` handles the message as stored.
"""

from __future__ import annotations

import inspect
import json
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import redis

from ..domain.redaction import mask, mask_lines, mask_text
from .errors import DeadLetterNotFound, OpsError
from .queues import NAMESPACE
from .runs import failure_text
from .stored_messages import StoredMessage

#: Options of the last attempt that a requeued message must not carry: it starts afresh.
_ATTEMPT_OPTIONS = ("traceback", "requeue_timestamp", "eta")

#: Move one dead letter back to its queue, if it is still the one we read (a concurrent purge,
#: requeue or Dramatiq's 7-day expiry wins cleanly). Same order as Dramatiq's enqueue: the
#: hash before the list, so a worker never pops an id whose message is not written yet.
_REQUEUE = """
-- KEYS: Q.XQ, Q.XQ.msgs, Q, Q.msgs   ARGV: dead id, dead JSON (as read), new id, new JSON
if redis.call("hget", KEYS[2], ARGV[1]) ~= ARGV[2] then
    return 0
end
redis.call("zrem", KEYS[1], ARGV[1])
redis.call("hdel", KEYS[2], ARGV[1])
redis.call("hset", KEYS[4], ARGV[3], ARGV[4])
redis.call("rpush", KEYS[3], ARGV[3])
return 1
"""

#: Characters of one text of a message that ``show`` prints (``list`` prints MAX_SHOWN), and of
#: the error ``list`` prints.
SHOWN_TEXT_LIMIT = 2_000
ERROR_LIMIT = 500


class NotRequeueable(OpsError, ValueError):
    """A dead letter whose payload is not a JSON message: there is nothing a worker could run."""

    def __init__(self, letter: DeadLetter) -> None:
        self.letter = letter
        super().__init__(f"dead letter {letter.id} in {letter.queue}.XQ cannot be requeued: {letter.decode_error}; "
                         f"read it with `dead-letters show {letter.id}`, then purge it")


@dataclass(frozen=True)
class DeadLetter(StoredMessage):
    """One dead message. ``id`` is its redis id (the ``Q.XQ`` member), not always its message id."""

    queue: str
    id: str
    died_at_ms: int
    raw: bytes | None

    @cached_property
    def _decoded(self) -> tuple[dict[str, Any], str | None]:
        if self.raw is None:
            return {}, "its body is missing from the .XQ.msgs hash"
        try:
            decoded = json.loads(self.raw)
        except (ValueError, RecursionError) as exc:  # RecursionError: nested too deep
            return ({"undecodable": self.raw.decode("utf-8", "replace")},
                    f"its payload is not JSON ({type(exc).__name__})")
        if not isinstance(decoded, dict):
            return {"undecodable": decoded}, f"its payload is a JSON {type(decoded).__name__}, not a message object"
        return decoded, None

    @property
    def message(self) -> dict[str, Any]:
        """The message as stored (``{"undecodable": ...}`` if it is not a JSON object)."""
        return self._decoded[0]

    @property
    def decode_error(self) -> str | None:
        """Why the payload is not a message that could be requeued; None if it is one."""
        return self._decoded[1]

    @property
    def error(self) -> str:
        """The exception line of the traceback it carries ("" if none): what an operator reads."""
        if self.raw is None:
            return "message body missing from the .XQ.msgs hash"
        return self.traceback_error

    def arguments(self) -> dict[str, Any]:
        """Every argument by name: the positional ones named by the job's signature (an unknown
        job, or arguments that do not fit it: ``#0``, ``#1`` ... for the positional ones)."""
        try:
            return bound_arguments(self.actor, self.args, self.kwargs)
        except ArgumentsRefused:
            return {**{f"#{n}": value for n, value in enumerate(self.args)}, **self.kwargs}

    def corrected(self, changes: Mapping[str, Any]) -> dict[str, Any]:
        """The arguments a corrected requeue sends, all by name: the stored ones bound to the
        job's signature (positional ones included), ``changes`` applied. ``ArgumentsRefused`` if
        the stored arguments do not fit the job (nothing sensible to correct)."""
        return {**bound_arguments(self.actor, self.args, self.kwargs), **changes}

    def age_seconds(self, now_ms: int | None = None) -> float:
        now_ms = int(time.time() * 1000) if now_ms is None else now_ms
        return max(0.0, (now_ms - self.died_at_ms) / 1000)

    def summary(self, now_ms: int | None = None) -> dict[str, Any]:
        """What ``list`` prints: arguments and error masked and bounded. ``arguments`` names every
        argument, the positional ones by the job's signature (``args``, ``kwargs``: as stored)."""
        return {"queue": self.queue, "id": self.id, "message_id": mask_text(self.message_id),
                "actor": mask_text(self.actor), "arguments": mask(self.arguments()),
                "args": mask(self.args), "kwargs": mask(self.message.get("kwargs")),
                "died_at_ms": self.died_at_ms, "age_seconds": round(self.age_seconds(now_ms), 3),
                "retries": self.retries, "error": mask_text(self.error, ERROR_LIMIT)}

    def shown(self) -> tuple[dict[str, Any], str | None]:
        """What ``show`` prints: the message masked and bounded (texts cut to SHOWN_TEXT_LIMIT),
        without the traceback of its options, and that traceback, masked, line by line bounded."""
        message = dict(self.message)
        options = dict(self.options)
        traceback = options.pop("traceback", None)
        if "options" in message:
            message["options"] = options
        shown = mask(message, text_limit=SHOWN_TEXT_LIMIT)
        return shown, None if traceback is None else mask_lines(str(traceback))


class DeadLetters:
    """The dead-letter queues of one Redis broker (the database of BROKER_URL)."""

    def __init__(self, client: redis.Redis, *, namespace: str = NAMESPACE) -> None:
        self.client = client
        self.namespace = namespace
        self._requeue = client.register_script(_REQUEUE)

    def _keys(self, queue: str) -> tuple[str, str, str, str]:
        base = f"{self.namespace}:{queue}"
        return f"{base}.XQ", f"{base}.XQ.msgs", base, f"{base}.msgs"

    def list(self, queue: str, *, limit: int | None = None) -> list[DeadLetter]:
        """The dead letters of ``queue``, oldest death first."""
        xq, xq_msgs, _, _ = self._keys(queue)
        members = self.client.zrange(xq, 0, -1 if limit is None else limit - 1, withscores=True)
        if not members:
            return []
        bodies = self.client.hmget(xq_msgs, [m for m, _ in members])
        return [DeadLetter(queue, m.decode(), int(score), body)
                for (m, score), body in zip(members, bodies, strict=True)]

    def count(self, queue: str) -> int:
        return self.client.zcard(self._keys(queue)[0])

    def newest_death_ms(self, queue: str) -> int:
        """When the last dead letter of ``queue`` died (ms; 0 when there is none): one ZRANGE,
        no message body read."""
        newest = self.client.zrange(self._keys(queue)[0], -1, -1, withscores=True)
        return int(newest[0][1]) if newest else 0

    def find(self, ident: str, queues: tuple[str, ...]) -> DeadLetter:
        """The dead letter whose redis id, else whose message id, is ``ident``, in ``queues``."""
        for queue in queues:
            xq, xq_msgs, _, _ = self._keys(queue)
            score = self.client.zscore(xq, ident)
            if score is not None:
                return DeadLetter(queue, ident, int(score), self.client.hget(xq_msgs, ident))
        for queue in queues:
            for letter in self.list(queue):
                if letter.message_id == ident:
                    return letter
        raise DeadLetterNotFound(ident, queues)

    def requeue(self, letter: DeadLetter) -> str | None:
        """Put ``letter`` back at the end of its queue, as a fresh attempt; returns its new redis id.

        Atomic (one Lua script): the dead copy is removed and the live one written together.
        ``options.retries`` is 0 again and the last attempt's traceback is dropped; the
        ``message_id`` is kept (run-once receipts key on it) and a fresh ``redis_message_id``
        names the new hash entry. None if the letter was purged or requeued meanwhile.
        """
        return self.requeue_with(letter, {})

    def requeue_with(self, letter: DeadLetter, changes: Mapping[str, Any]) -> str | None:
        """``requeue`` with some arguments corrected first: ``changes`` maps an argument's name to
        its new value (added if the message lacked it). The message's arguments, positional ones
        included, are bound to the job's signature and sent all by name (``args`` empty: a
        positional ``42`` and a corrected ``email_id=43`` would be "multiple values" for the job),
        after the checks of ``enqueue`` (``ArgumentsRefused``, nothing sent). The stored message
        is compared as read, so a letter changed or gone meanwhile is left alone (None)."""
        if letter.decode_error is not None:
            raise NotRequeueable(letter)
        message = letter.message
        if changes:
            arguments = letter.corrected(changes)
            check_corrected_arguments(letter.actor, arguments)
            message = {**message, "args": [], "kwargs": arguments}
        new_id = str(uuid.uuid4())
        options = {k: v for k, v in letter.options.items() if k not in _ATTEMPT_OPTIONS}
        options.update(retries=0, redis_message_id=new_id)
        message = {**message, "queue_name": letter.queue, "options": options}
        data = json.dumps(message, separators=(",", ":"))
        moved = self._requeue(keys=list(self._keys(letter.queue)), args=[letter.id, letter.raw, new_id, data])
        return new_id if moved else None

    def requeue_all(self, queue: str, *, letters: list[DeadLetter] | None = None,
                    progress: Callable[[DeadLetter], None] | None = None) -> tuple[list[str], list[DeadLetter]]:
        """Requeue every dead letter of ``queue`` (or ``letters``, as listed earlier), each
        atomically; returns the new redis ids, and the letters left where they are because they
        are not messages (``NotRequeueable``). ``progress`` is called after each letter."""
        new_ids, skipped = [], []
        for letter in self.list(queue) if letters is None else letters:
            if letter.decode_error is not None:
                skipped.append(letter)
            elif new_id := self.requeue(letter):
                new_ids.append(new_id)
            if progress is not None:
                progress(letter)
        return new_ids, skipped

    def purge(self, letter: DeadLetter) -> bool:
        """Drop one dead letter for good; False if it was already gone."""
        xq, xq_msgs, _, _ = self._keys(letter.queue)
        pipe = self.client.pipeline(transaction=True)
        pipe.zrem(xq, letter.id)
        pipe.hdel(xq_msgs, letter.id)
        removed, _ = pipe.execute()
        return bool(removed)

    def purge_all(self, queue: str) -> int:
        """Drop every dead letter of ``queue``; returns how many there were."""
        xq, xq_msgs, _, _ = self._keys(queue)
        pipe = self.client.pipeline(transaction=True)
        pipe.zcard(xq)
        pipe.delete(xq, xq_msgs)
        count, _ = pipe.execute()
        return count


#: The errors of a refused message (bad input: ``actors.base`` records them in ``job_failures``
#: and Dramatiq dead-letters the message at once, without retrying it).
REFUSAL_ERRORS = frozenset({"ValidationError", "Conflict", "BadMessage"})


def refusal(letter: DeadLetter, failures: list[dict[str, Any]]) -> str | None:
    """Why ``letter`` died of bad input, if it did: the last ``job_failures`` row of its message
    (``failures``, as ``runs.failures_by_message`` gives them) naming a field or a refusal error,
    else a refusal error on its traceback's last line. None: it died of something else (retries
    spent on a transient error), which a requeue may well cure."""
    for failure in reversed(failures):
        if failure.get("field") or failure.get("error") in REFUSAL_ERRORS:
            return failure_text(failure)
    name = letter.error.split(":", 1)[0].rsplit(".", 1)[-1]
    return mask_text(letter.error, ERROR_LIMIT) if name in REFUSAL_ERRORS else None


class ArgumentsRefused(OpsError, ValueError):
    """Corrected arguments the job would refuse: the message names the field and the rule."""

    def __init__(self, field: str, text: str) -> None:
        super().__init__(text)
        self.field = field


def _job(actor: str):
    """The declared actor named ``actor`` (``ArgumentsRefused`` naming the jobs if none)."""
    from ..bootstrap import current_app
    from .enqueue_check import MessageRefused, find_job

    try:
        return find_job(current_app().broker, actor)
    except MessageRefused as exc:
        raise ArgumentsRefused(exc.field, str(exc)) from None


def bound_arguments(actor: str, args: list[Any], kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """``args`` and ``kwargs`` of a message for the job ``actor``, all by name (its signature's
    names, in its order). ``ArgumentsRefused`` (field ``arguments``) if they do not fit it: too
    many, one given twice, or a positional one the job can only take as ``*args``."""
    fn = _job(actor).fn
    signature = inspect.signature(fn)
    try:
        bound = signature.bind_partial(*args, **kwargs)
    except TypeError as exc:
        raise ArgumentsRefused("arguments", f"arguments: the message's arguments do not fit "
                               f"{actor}{signature}: {exc}") from None
    named: dict[str, Any] = {}
    for name, value in bound.arguments.items():
        kind = signature.parameters[name].kind
        if kind is inspect.Parameter.VAR_KEYWORD:
            named.update(value)
        elif kind is inspect.Parameter.VAR_POSITIONAL:
            if value:
                raise ArgumentsRefused("arguments", f"arguments: {actor} takes *{name}, which cannot be "
                                       "given by name; purge the letter and enqueue a new message")
        else:
            named[name] = value
    return named


def check_corrected_arguments(actor: str, kwargs: Mapping[str, Any]) -> None:
    """Refuse (``ArgumentsRefused``) the arguments of a corrected requeue, all by name
    (``DeadLetter.corrected``), that the job ``actor`` would refuse at once, with the checks of
    ``enqueue`` (``ops.enqueue_check``). ``requeue_with`` runs it; a caller may run it first."""
    from .enqueue_check import MessageRefused, check_message

    try:
        check_message(_job(actor), kwargs)
    except MessageRefused as exc:
        raise ArgumentsRefused(exc.field, str(exc)) from None


def check_correction(letter: DeadLetter, changes: Mapping[str, Any]) -> dict[str, Any]:
    """The arguments ``letter`` would be requeued with after ``changes`` (all by name), checked as
    ``requeue_with`` checks them; ``ArgumentsRefused`` otherwise."""
    arguments = letter.corrected(changes)
    check_corrected_arguments(letter.actor, arguments)
    return arguments
