"""What the jobs run with: which database, clock, mail transport and payment gateways.

``bootstrap.bootstrap`` builds it from the process's ``Config`` (with the broker); a script that
did not bootstrap gets one built from the environment on first use. The demo and the tests
replace parts with ``configure``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path

from sqlalchemy import Engine

from .adapters.gateway import gateway_for
from .adapters.mailer import mailer_from_url
from .clock import Clock, SystemClock
from .config import Config, get_config
from .db import get_engine
from .domain.ports import Mailer, PaymentGateway


@dataclass(frozen=True)
class Runtime:
    engine: Engine
    clock: Clock
    mailer: Mailer
    mail_from: str
    batch_size: int
    #: Where ``export_client_data`` writes its JSON documents (EXPORTS_DIR).
    exports_dir: Path
    #: A ``sending`` claim older than this was left by a dead worker (EMAIL_CLAIM_TIMEOUT_SECONDS).
    email_claim_timeout: timedelta = timedelta(seconds=120)
    #: The payment gateway a pay method names (the adapters' registry, PAYMENT_GATEWAYS).
    gateway_for: Callable[[str], PaymentGateway] = gateway_for


_current: Runtime | None = None


def runtime_from(cfg: Config) -> Runtime:
    return Runtime(engine=get_engine(cfg.database_url), clock=SystemClock(cfg.time_zone),
                   mailer=mailer_from_url(cfg.mail_url), mail_from=cfg.mail_from,
                   batch_size=cfg.fan_out_batch_size, exports_dir=cfg.exports_dir,
                   email_claim_timeout=timedelta(seconds=cfg.email_claim_timeout_seconds))


def install(current: Runtime) -> Runtime:
    """Make ``current`` the runtime of this process (``bootstrap``)."""
    global _current
    _current = current
    return current


def runtime() -> Runtime:
    global _current
    if _current is None:
        _current = runtime_from(get_config())
    return _current


def configure(**overrides) -> Runtime:
    """Replace parts of the runtime (engine, clock, mailer, mail_from, batch_size, exports_dir, gateway_for)."""
    global _current
    _current = replace(runtime(), **overrides) if overrides else runtime()
    return _current


def reset() -> None:
    global _current
    _current = None
