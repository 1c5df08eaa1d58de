"""Check a message before it is sent (``billingworker enqueue``, ``dead-letters requeue --set``,
the console's requeue with a corrected argument) with the rules the job declares
(``actors.arguments.check_arguments``: its signature, the rule of each argument given with
``argument_rules``, and its rules over several arguments, e.g. no real daily run of a future
day). Nothing is sent when a check fails. Not checked here: what a job checks only in its body,
above all what needs the database (an amount in the client's currency, a client that exists):
such a message is sent and refused by the job.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import dramatiq

from ..domain.errors import ValidationError

#: ``enqueue daily-run`` is this job.
DAILY_RUN_JOB = "run_daily_automation"


class MessageRefused(ValueError):
    """The message would be refused by its job: ``field`` names the argument; the text says
    what is wrong with it (``field: value rule``)."""

    def __init__(self, field: str, text: str) -> None:
        super().__init__(text)
        self.field = field


def find_job(broker: dramatiq.Broker, name: str) -> dramatiq.Actor:
    """The actor a message names; MessageRefused (field ``actor``) listing the jobs otherwise."""
    try:
        return broker.get_actor(name)
    except dramatiq.errors.ActorNotFound:
        names = ", ".join(sorted(n for n in broker.get_declared_actors() if not n.startswith("_")))
        raise MessageRefused("actor", f"{name!r} is not a job; the jobs: daily-run, {names}") from None


def check_message(actor: dramatiq.Actor, kwargs: Mapping[str, Any]) -> None:
    """Raise MessageRefused if ``actor`` would refuse ``kwargs`` before doing anything."""
    try:
        json.dumps(dict(kwargs))
    except (TypeError, ValueError) as exc:
        raise MessageRefused("arguments", f"arguments are not JSON: {exc}") from None
    try:
        from ..actors.arguments import check_arguments

        check_arguments(actor.fn, kwargs)
    except ValidationError as exc:
        text = f"{exc.field} {exc.rule}" if exc.value is None else str(exc)
        raise MessageRefused(exc.field, text) from None


def parse_assignments(arguments: tuple[str, ...] | list[str]) -> dict[str, Any]:
    """``NAME=VALUE`` words into keyword arguments: VALUE is JSON, a bare word a string, and a
    number with a decimal point a string ("10.50": the jobs take money as decimal strings)."""
    kwargs: dict[str, Any] = {}
    for arg in arguments:
        name, sep, raw = arg.partition("=")
        if not sep or not name.strip():
            raise MessageRefused("arguments", f"{arg!r} is not NAME=VALUE")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        except RecursionError:
            raise MessageRefused(name.strip(), f"{name.strip()}: the JSON value is nested too deep") from None
        except ValueError as exc:  # an integer of more than 4300 digits (Python's int limit)
            raise MessageRefused(name.strip(), f"{name.strip()}: {exc}") from None
        # JSON floats lose cents, and every job refuses them: 10.50 is meant as money.
        kwargs[name.strip()] = raw.strip() if isinstance(value, float) else value
    return kwargs
