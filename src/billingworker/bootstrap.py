"""The composition root: one call builds what a process runs with, from its ``Config``.

``bootstrap(config)`` makes the broker (with our middleware), binds the jobs to it and installs
the runtime (database engine, clock, mailer, gateways). Worker processes get it from
``billingworker.worker``; the CLI, the demo and the tests call it with the config they want
instead of rewriting ``os.environ`` before an import. Importing ``billingworker.actors`` builds
nothing (``actors/binding.py``).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from dramatiq.broker import Broker
from dramatiq.brokers.stub import StubBroker

from .actors.binding import bind_jobs
from .broker import make_broker
from .config import Config, get_config
from .runtime import Runtime, install, runtime_from


@dataclass(frozen=True)
class App:
    config: Config
    broker: Broker
    runtime: Runtime


_app: App | None = None


def bootstrap(config: Config | None = None) -> App:
    """Build and install the process's broker and runtime from ``config`` (default: the environment).

    Called again (a command switching to the in-process broker), the last call wins.
    """
    global _app
    config = config or get_config()
    from . import actors  # noqa: F401 - declares every job, so that all of them are bound

    broker = make_broker(config.broker_url, config)
    bind_jobs(broker)
    _app = App(config=config, broker=broker, runtime=install(runtime_from(config)))
    return _app


def current_app() -> App:
    """The App of this process: bootstrapped from the environment on first use."""
    return _app or bootstrap()


def bootstrap_in_process() -> App:
    """The App with the in-process broker, for a command that runs the jobs itself (a
    foreground ``daily-run``, the demo): the one already bootstrapped if its broker is in-process."""
    if _app is not None and isinstance(_app.broker, StubBroker):
        return _app
    return bootstrap(replace(get_config(), broker_url="stub://"))
