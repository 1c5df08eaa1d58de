"""Settings from the environment, with safe embedded defaults.

Only what differs between machines lives here (where the database, broker and mail server
are, the installation's time zone). Billing rules (invoice generation days, reminder days,
late fees...) are installation settings kept in the shared database (table ``settings``),
because the admin panel edits them.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy.engine import make_url

DEFAULT_DATABASE_URL = "sqlite:///var/billingworker.sqlite3"
DEFAULT_BROKER_URL = "redis://127.0.0.1:6379/0"
DEFAULT_MAIL_URL = "file://var/mail"
#: Name of the file that keeps the generated SECRET_KEY when the environment sets none.
SECRET_KEY_FILE = "secret_key"
#: A SECRET_KEY shorter than this is refused: it keys the password-reset tokens (HMAC-SHA256).
MIN_SECRET_KEY_LENGTH = 16


@dataclass(frozen=True)
class Config:
    database_url: str
    broker_url: str
    mail_url: str
    time_zone: str
    mail_from: str
    fan_out_batch_size: int
    exports_dir: Path
    #: SECRET_KEY from the environment, or None: then ``secret_key()`` uses ``secret_key_file``.
    secret_key_value: str | None = field(default=None, repr=False)
    #: Where a generated key is kept: next to the SQLite database, else ``var/secret_key``.
    secret_key_file: Path = Path("var") / SECRET_KEY_FILE

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
            secret_key_value=env.get("SECRET_KEY") or None,
            secret_key_file=_secret_key_file(env.get("DATABASE_URL", DEFAULT_DATABASE_URL)),
        )

    def secret_key(self) -> bytes:
        """The installation's secret (HMAC key of the password-reset tokens, SPEC §10).

        SECRET_KEY when set (every host of an installation must share it: a token derived on
        one host is re-derived by whichever worker delivers the email). Unset, a random key is
        generated once into ``secret_key_file`` (mode 0600) so that the embedded default works
        on one machine. Raises ``ValueError`` for a SECRET_KEY shorter than 16 characters.
        """
        if self.secret_key_value is not None:
            if len(self.secret_key_value) < MIN_SECRET_KEY_LENGTH:
                raise ValueError(f"SECRET_KEY must be at least {MIN_SECRET_KEY_LENGTH} characters long")
            return self.secret_key_value.encode()
        return _load_or_create_key_file(self.secret_key_file)


def _secret_key_file(database_url: str) -> Path:
    """``secret_key`` next to a SQLite database file; ``var/secret_key`` for any other database."""
    try:
        url = make_url(database_url)
    except Exception:  # noqa: BLE001 - a bad DATABASE_URL is the engine's to report
        return Path("var") / SECRET_KEY_FILE
    if url.get_backend_name() == "sqlite" and url.database and url.database != ":memory:":
        return Path(url.database).parent / SECRET_KEY_FILE
    return Path("var") / SECRET_KEY_FILE


def _load_or_create_key_file(path: Path) -> bytes:
    """The key kept in ``path``, generating it first if the file does not exist.

    Two processes starting at once must end with the same key: the new key is written to a
    private temporary file and linked into place, which fails if another process won the race
    (then its key is read). The file is never seen half-written.
    """
    try:
        return _read_key(path)
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as out:
            out.write(secrets.token_urlsafe(48) + "\n")
            out.flush()
            os.fsync(out.fileno())
        try:
            os.link(temporary, path)
        except FileExistsError:
            pass  # another process generated it first: use theirs
    finally:
        temporary.unlink(missing_ok=True)
    return _read_key(path)


def _read_key(path: Path) -> bytes:
    key = path.read_text().strip()
    if len(key) < MIN_SECRET_KEY_LENGTH:
        raise ValueError(f"{path}: the secret key in it is shorter than {MIN_SECRET_KEY_LENGTH} characters")
    return key.encode()


def get_config() -> Config:
    """The configuration of this process, read from the environment on each call (cheap)."""
    return Config.from_env()
