"""Who may use the console: users from the environment, passwords checked with argon2, sign-in
attempts slowed down after failures.

CONSOLE_USERS holds ``name:role:argon2-hash`` entries separated by spaces, newlines or ``;``
(not commas: an argon2 hash contains commas). ``billingworker console hash-password`` prints one.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from ..domain.accounts.passwords import hash_password, verify_password

#: admin: sees and acts; viewer: sees only (every action is refused with 403).
ROLES = ("admin", "viewer")
ACTING_ROLES = frozenset({"admin"})
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,99}$")
# Verified when the user name is unknown, so that an unknown name costs as long as a wrong password
# (the response time does not tell which names exist).
_DUMMY_HASH = hash_password("not-a-user-password")


class ConsoleConfigError(ValueError):
    """CONSOLE_USERS (or another console setting) cannot be used; the message says which entry and why."""


@dataclass(frozen=True)
class User:
    name: str
    role: str
    password_hash: str = field(repr=False)

    @property
    def can_act(self) -> bool:
        return self.role in ACTING_ROLES


def parse_users(value: str, source: str = "CONSOLE_USERS") -> dict[str, User]:
    """The users of ``value`` by name; ``ConsoleConfigError`` naming the entry (never its hash)."""
    users: dict[str, User] = {}
    entries = [e for e in re.split(r"[\s;]+", value.strip()) if e]
    for n, entry in enumerate(entries, start=1):
        name, _, rest = entry.partition(":")
        role, _, password_hash = rest.partition(":")
        where = f"{source}: entry {n} ({name!r})"
        if not _NAME.match(name):
            raise ConsoleConfigError(f"{where}: the user name must be letters, digits, _ . @ - (at most 100)")
        if role not in ROLES:
            raise ConsoleConfigError(f"{where}: the role must be one of {', '.join(ROLES)}, not {role!r}")
        if not password_hash.startswith("$argon2"):
            raise ConsoleConfigError(f"{where}: the third part must be an argon2 hash "
                                     "(billingworker console hash-password prints one)")
        if name in users:
            raise ConsoleConfigError(f"{where}: the user is listed twice")
        users[name] = User(name, role, password_hash)
    return users


def check_password(user: User | None, password: str) -> bool:
    """Whether ``password`` is ``user``'s; an unknown user (None) costs one verification too."""
    if user is None:
        verify_password(_DUMMY_HASH, password)
        return False
    return verify_password(user.password_hash, password)


class SignInThrottle:
    """Slows down password guessing, per (user name, address) pair and per address.

    After ``free_attempts`` failures for one name from one address, or ``address_free_attempts``
    failures from one address (whatever the names), each further attempt must wait
    ``base_delay * 2**(extra failures)`` seconds (at most ``max_delay``) after the last failure.
    Keyed on the pair, not on the name alone, so that nobody elsewhere can lock an operator out by
    failing on purpose with her name; the address's own, larger allowance stops one address from
    trying many names.

    ``attempt`` reserves the attempt *before* the password is checked, counting it as a failure
    at once; ``succeeded`` takes the reservation back. A burst of parallel requests therefore gets
    no more checks than a sequence would (the check and the count happen together, with no await
    between them). In memory, per console process: a restart forgets it. ``clock`` is monotonic
    seconds (tests pass their own).
    """

    def __init__(self, *, free_attempts: int = 3, address_free_attempts: int = 20, base_delay: float = 1.0,
                 max_delay: float = 300.0, clock: Callable[[], float] = time.monotonic,
                 max_keys: int = 10_000) -> None:
        self.free_attempts = free_attempts
        self.address_free_attempts = address_free_attempts
        self.max_keys = max_keys
        self.base_delay = base_delay
        self.max_delay = max_delay
        self.clock = clock
        self._failures: dict[str, tuple[int, float]] = {}

    def _keys(self, name: str, address: str) -> list[tuple[str, int]]:
        """The counters an attempt of ``name`` from ``address`` is held to, with their allowance."""
        return [(f"user:{name.lower()}@{address}", self.free_attempts),
                (f"addr:{address}", self.address_free_attempts)]

    def wait_seconds(self, name: str, address: str) -> float:
        """Seconds before ``name`` may try again from ``address`` (0: now)."""
        now = self.clock()
        waits = [0.0]
        for key, free in self._keys(name, address):
            count, last = self._failures.get(key, (0, 0.0))
            if count >= free:
                delay = min(self.max_delay, self.base_delay * 2 ** (count - free))
                waits.append(last + delay - now)
        return max(waits)

    def attempt(self, name: str, address: str) -> float:
        """0, with the attempt counted as a failure until ``succeeded`` says otherwise; or the
        seconds to wait, with nothing counted (a refused attempt does not lengthen the wait)."""
        wait = self.wait_seconds(name, address)
        if wait > 0:
            return wait
        now = self.clock()
        if len(self._failures) > self.max_keys:
            self._forget(now)
        for key, _ in self._keys(name, address):
            count, _ = self._failures.get(key, (0, 0.0))
            self._failures[key] = (count + 1, now)
        return 0.0

    def succeeded(self, name: str, address: str) -> None:
        """The password was right: the pair starts afresh; the address gets its reservation back."""
        (pair, _), (addr, _) = self._keys(name, address)
        self._failures.pop(pair, None)
        count, last = self._failures.get(addr, (0, 0.0))
        if count <= 1:
            self._failures.pop(addr, None)
        else:
            self._failures[addr] = (count - 1, last)

    def _forget(self, now: float) -> None:
        """Drop the keys whose last failure is older than the longest wait: a flood of made-up
        names cannot grow the table without end."""
        for key, (_, last) in list(self._failures.items()):
            if now - last > self.max_delay:
                del self._failures[key]
