"""Settings from the environment, with safe embedded defaults.

Only what differs between machines lives here (where the database, broker and mail server
are, the installation's time zone). Billing rules (invoice generation days, reminder days,
late fees...) are installation settings kept in the shared database (table ``settings``),
because the admin panel edits them.
"""

from __future__ import annotations

import math
import os
import re
import secrets
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy.engine import make_url

DEFAULT_DATABASE_URL = "sqlite:///var/billingworker.sqlite3"
DEFAULT_BROKER_URL = "redis://127.0.0.1:6379/0"
DEFAULT_MAIL_URL = "file://var/mail"
#: Name of the file that keeps the generated SECRET_KEY when the environment sets none.
SECRET_KEY_FILE = "secret_key"
#: A SECRET_KEY shorter than this (in characters) is refused: it keys the password-reset tokens
#: (HMAC-SHA256), and a weak key lets anyone who reads a backup forge the open links.
MIN_SECRET_KEY_LENGTH = 16
#: ... and so is one whose estimated strength (``secret_key_bits``) is below this, in bits.
MIN_SECRET_KEY_BITS = 64
#: What the refusals tell the operator to run.
GENERATE_KEY_COMMAND = 'python -c "import secrets; print(secrets.token_urlsafe(48))"'
#: The test doubles an installation may switch on, by variable. Never on by default: the test
#: gateway approves every capture without moving money, the recording module changes nothing.
OPTIONAL_PAYMENT_GATEWAYS = ("test",)
OPTIONAL_SERVER_MODULES = ("test",)


class SecretKeyError(ValueError):
    """SECRET_KEY, a fallback key or the key file is unusable; the message says how to fix it
    and never contains the key."""


@dataclass(frozen=True)
class Config:
    database_url: str
    broker_url: str
    mail_url: str
    time_zone: str
    mail_from: str
    fan_out_batch_size: int
    exports_dir: Path
    #: EMAIL_CLAIM_TIMEOUT_SECONDS: a ``sending`` claim older than this was left by a dead worker.
    email_claim_timeout_seconds: int = 120
    #: SECRET_KEY from the environment, or None: then ``secret_key()`` uses ``secret_key_file``.
    secret_key_value: str | None = field(default=None, repr=False)
    #: Where a generated key is kept: next to the SQLite database, else ``var/secret_key``.
    secret_key_file: Path = Path("var") / SECRET_KEY_FILE
    #: SECRET_KEY_FALLBACKS: earlier keys, still accepted for links made under them (rotation).
    secret_key_fallback_values: tuple[str, ...] = field(default=(), repr=False)
    #: PAYMENT_GATEWAYS: the optional gateways switched on (``{"test"}`` or nothing).
    payment_gateways: frozenset[str] = frozenset()
    #: SERVER_MODULES: the optional server modules switched on (``{"test"}`` or nothing).
    server_modules: frozenset[str] = frozenset()
    #: BROKER_HEARTBEAT_TIMEOUT_MS: how soon (ms) the messages of a dead Redis worker go to another
    #: one (None: Dramatiq's 60000).
    broker_heartbeat_timeout_ms: int | None = None
    #: BROKER_MAINTENANCE_CHANCE: Redis maintenance chance per million broker calls (None: Dramatiq's 1000).
    broker_maintenance_chance: int | None = None
    #: PROMETHEUS_PORT: the workers' metrics port (None: no metrics); PROMETHEUS_HOST: where it listens.
    prometheus_port: int | None = None
    prometheus_host: str = "0.0.0.0"

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
            email_claim_timeout_seconds=_positive_int(env, "EMAIL_CLAIM_TIMEOUT_SECONDS", 120),
            secret_key_value=env.get("SECRET_KEY") or None,
            secret_key_file=_secret_key_file(env.get("DATABASE_URL", DEFAULT_DATABASE_URL)),
            secret_key_fallback_values=_key_list(env.get("SECRET_KEY_FALLBACKS", "")),
            payment_gateways=payment_gateways(env),
            server_modules=server_modules(env),
            broker_heartbeat_timeout_ms=_optional_positive_int(env, "BROKER_HEARTBEAT_TIMEOUT_MS"),
            broker_maintenance_chance=_optional_positive_int(env, "BROKER_MAINTENANCE_CHANCE"),
            prometheus_port=_port(env, "PROMETHEUS_PORT"),
            prometheus_host=env.get("PROMETHEUS_HOST", "").strip() or "0.0.0.0",
        )

    def secret_key(self) -> bytes:
        """The installation's secret (HMAC key of the password-reset tokens, SPEC §10): the key
        new links are made with.

        SECRET_KEY when set (every host of an installation must share it: a token derived on
        one host is re-derived by whichever worker delivers the email). Unset, a random key is
        generated once into ``secret_key_file`` (mode 0600) so that the embedded default works
        on one machine. ``SecretKeyError`` (a ``ValueError``) for a weak key
        (``check_secret_key``) and for a key file other users may read.
        """
        if self.secret_key_value is not None:
            check_secret_key(self.secret_key_value, "SECRET_KEY")
            return self.secret_key_value.encode()
        return _load_or_create_key_file(self.secret_key_file)

    def secret_key_fallbacks(self) -> tuple[bytes, ...]:
        """The earlier keys of SECRET_KEY_FALLBACKS, in the order given, each checked like
        SECRET_KEY; a copy of the current key is left out. Links made under one of them stay
        valid until it is removed from the list (or they expire)."""
        return self._fallbacks(self.secret_key())

    def secret_keys(self) -> tuple[bytes, ...]:
        """The keys a password-reset link may have been made with: SECRET_KEY first, then the
        fallbacks."""
        current = self.secret_key()
        return (current, *self._fallbacks(current))

    def _fallbacks(self, current: bytes) -> tuple[bytes, ...]:
        keys: list[bytes] = []
        for n, value in enumerate(self.secret_key_fallback_values, start=1):
            check_secret_key(value, f"SECRET_KEY_FALLBACKS (key {n} of {len(self.secret_key_fallback_values)})")
            key = value.encode()
            if key != current and key not in keys:
                keys.append(key)
        return tuple(keys)


def check_secret_key(key: str, source: str = "SECRET_KEY") -> None:
    """Refuse a key that is too weak to sign reset links; ``source`` names it in the error.

    The rule: at least ``MIN_SECRET_KEY_LENGTH`` (16) characters, not only whitespace, and an
    estimated strength (``secret_key_bits``) of at least ``MIN_SECRET_KEY_BITS`` (64) bits.
    ``secrets.token_urlsafe(48)`` (64 characters, 384 random bits) passes with a wide margin.
    """
    if not key.strip():
        problem = "it is empty or only whitespace"
    elif len(key) < MIN_SECRET_KEY_LENGTH:
        problem = f"it has {len(key)} characters"
    else:
        bits = secret_key_bits(key)
        problem = None if bits >= MIN_SECRET_KEY_BITS else (
            f"its estimated strength is {bits:.0f} bits (repeated characters, runs like 'abcd' or '4321', "
            "a repeated pattern and a small set of distinct characters add little)")
    if problem is not None:
        raise SecretKeyError(
            f"{source} is too weak: {problem}. A key needs at least {MIN_SECRET_KEY_LENGTH} characters and an "
            f"estimated {MIN_SECRET_KEY_BITS} bits or more: use random characters, 32 or more, e.g. from "
            f"{GENERATE_KEY_COMMAND}")


#: Character classes and how many characters each holds, for the strength estimate.
_CHARACTER_CLASSES: tuple[tuple[str, int], ...] = (("lower", 26), ("upper", 26), ("digit", 10),
                                                   ("ascii_other", 33), ("non_ascii", 100))


def _character_class(ch: str) -> str:
    if "a" <= ch <= "z":
        return "lower"
    if "A" <= ch <= "Z":
        return "upper"
    if "0" <= ch <= "9":
        return "digit"
    return "ascii_other" if ch.isascii() else "non_ascii"


def secret_key_bits(key: str) -> float:
    """A deliberately low estimate of how many bits of randomness ``key`` holds.

    - A key that repeats a pattern (``abcdabcd…``) counts only its pattern, once.
    - Each character counts log2 of the alphabet it seems drawn from: the character classes it
      uses (26 lower case, 26 upper case, 10 digits, 33 other ASCII, 100 for anything else),
      but no larger than the alphabet its count of distinct characters suggests
      (``_likely_alphabet``: a key of only ``a`` and ``b`` is a two-letter alphabet, whatever
      the classes say).
    - A character that repeats the previous one or continues a run (``aaaa``, ``abcd``, ``4321``)
      counts 1 bit at most.
    """
    unit = key[:_period(key)]
    used = {_character_class(ch) for ch in key}
    pool = sum(size for name, size in _CHARACTER_CLASSES if name in used)
    alphabet = _likely_alphabet(len(unit), len(set(unit)), pool)
    per_char = math.log2(alphabet) if alphabet > 1 else 0.0
    bits = 0.0
    previous = ""
    for ch in unit:
        bits += min(1.0, per_char) if previous and abs(ord(ch) - ord(previous)) <= 1 else per_char
        previous = ch
    return bits


def _likely_alphabet(length: int, distinct: int, pool: int) -> int:
    """The smallest alphabet from which ``length`` random draws show ``distinct`` different
    characters on average (at most ``pool``): 16 characters with 14 different ones suggest a
    large alphabet, 16 with 4 different ones an alphabet of about 4."""
    for size in range(max(distinct, 1), pool):
        if size * (1 - (1 - 1 / size) ** length) >= distinct:
            return size
    return pool


def _period(text: str) -> int:
    """The length of the shortest prefix that, repeated, spells ``text`` (``abcab`` → 3)."""
    border = [0] * len(text)  # KMP: border[i] = longest proper prefix of text[:i+1] that is also its suffix
    k = 0
    for i in range(1, len(text)):
        while k and text[i] != text[k]:
            k = border[k - 1]
        if text[i] == text[k]:
            k += 1
        border[i] = k
    return len(text) - (border[-1] if text else 0)


def _key_list(text: str) -> tuple[str, ...]:
    """SECRET_KEY_FALLBACKS: keys separated by commas and/or whitespace."""
    return tuple(part for part in re.split(r"[\s,]+", text) if part)


def _optional_names(env: Mapping[str, str], name: str, known: tuple[str, ...], what: str) -> frozenset[str]:
    chosen = frozenset(part.lower() for part in re.split(r"[\s,]+", env.get(name, "")) if part)
    unknown = sorted(chosen - set(known))
    if unknown:
        shown = ", ".join(repr(u[:40]) for u in unknown[:5])
        raise ValueError(f"{name}: {shown} cannot be switched on (known: {', '.join(known)}). Real {what} are "
                         f"registered in code and always available; '{known[0]}' switches on the test double, "
                         "for tests and demos only")
    return chosen


def payment_gateways(env: Mapping[str, str] | None = None) -> frozenset[str]:
    """PAYMENT_GATEWAYS: the optional payment gateways switched on; ``{"test"}`` switches on the
    test gateway (it approves without charging), the empty set (the default) none."""
    return _optional_names(os.environ if env is None else env, "PAYMENT_GATEWAYS", OPTIONAL_PAYMENT_GATEWAYS,
                           "payment gateways")


def server_modules(env: Mapping[str, str] | None = None) -> frozenset[str]:
    """SERVER_MODULES: the optional server modules switched on; ``{"test"}`` switches on the
    recording module (it records commands and touches no server), the default none."""
    return _optional_names(os.environ if env is None else env, "SERVER_MODULES", OPTIONAL_SERVER_MODULES,
                           "server modules")


def _positive_int(env, name: str, default: int) -> int:
    text = env.get(name, "").strip()
    if not text:
        return default
    if not text.isdigit() or int(text) <= 0:
        raise ValueError(f"{name}: {text!r} is not a positive whole number")
    return int(text)


def _optional_positive_int(env, name: str) -> int | None:
    return _positive_int(env, name, 0) or None


def _port(env, name: str) -> int | None:
    """A TCP port number, or None (off) when unset or empty."""
    text = env.get(name, "").strip()
    if not text:
        return None
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ValueError(f"{name}: {text!r} is not a port number")
    return int(text)


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
    private temporary file (created with ``O_CREAT | O_EXCL``, mode 0600) and linked into place,
    which fails if another process won the race (then its key is read). The file is never seen
    half-written, nor with any other mode.
    """
    try:
        return _read_key(path)
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.fchmod(fd, 0o600)  # exactly 0600, whatever the umask
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
    """The key in ``path``; refused if other users may read or write the file, or if it is weak."""
    with open(path) as key_file:
        mode = os.fstat(key_file.fileno()).st_mode
        if os.name == "posix" and mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise SecretKeyError(
                f"{path}: the secret key file is open to other users (mode {stat.S_IMODE(mode):04o}); anyone who "
                f"reads it can forge password-reset links. Make it private: chmod 600 {path}")
        key = key_file.read().strip()
    check_secret_key(key, f"the secret key in {path}")
    return key.encode()


def get_config() -> Config:
    """The configuration of this process, read from the environment on each call (cheap)."""
    return Config.from_env()
