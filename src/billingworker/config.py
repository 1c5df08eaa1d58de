"""Settings from the environment, with safe embedded defaults.

Only what differs between machines lives here (where the database, broker and mail server
are, the installation's time zone). Billing rules (invoice generation days, reminder days,
late fees...) are installation settings kept in the shared database (table ``settings``),
because the admin panel edits them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

DEFAULT_DATABASE_URL = "sqlite:///var/billingworker.sqlite3"
DEFAULT_BROKER_URL = "redis://127.0.0.1:6379/0"
DEFAULT_MAIL_URL = "file://var/mail"


@dataclass(frozen=True)
class Config:
    database_url: str
    broker_url: str
    mail_url: str
    time_zone: str
    mail_from: str
    fan_out_batch_size: int
    exports_dir: Path

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Config:
        env = os.environ if env is None else env
        return cls(
            database_url=env.get("DATABASE_URL", DEFAULT_DATABASE_URL),
            broker_url=env.get("BROKER_URL", DEFAULT_BROKER_URL),
            mail_url=env.get("MAIL_URL", DEFAULT_MAIL_URL),
            time_zone=env.get("BILLING_TIME_ZONE", "UTC"),
            mail_from=env.get("MAIL_FROM", "Billing <billing@example.com>"),
            fan_out_batch_size=int(env.get("FAN_OUT_BATCH_SIZE", "1000")),
            exports_dir=Path(env.get("EXPORTS_DIR", "var/exports")),
        )


def get_config() -> Config:
    """The configuration of this process, read from the environment on each call (cheap)."""
    return Config.from_env()
