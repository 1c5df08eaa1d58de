"""Masking secrets and bounding values wherever a value is echoed: a log line, an error, a
``job_failures`` row, the dead-letter commands. One set of rules for all of them.

- **Keys.** The value of a key (a dict key at any depth, or ``key=value`` / ``"key": "value"`` /
  ``key: value`` in a text) becomes ``***`` when the key names a secret (``is_secret_key``).
  In a text, a quoted value ends at its closing quote; an unquoted one may hold spaces
  (``password=correct horse``, ``pan=4111 1111 1111 1111``) and ends at the end of the line, at
  a separator (``, ; & ) } ]``), before the next ``name=`` / ``name:`` (``password=a b
  user=bob`` keeps ``user=bob``) or before the length marker of a cut text. A key names a
  secret when
  it *contains* ``pass`` (password, passwd, passphrase), ``pwd``, ``secret``, ``token``,
  ``card``, ``cvv``, ``cvc``, ``credential``, ``authoriz`` or ``cookie``; or one of its words
  (split at ``_ - .`` and at camelCase) *is* ``pan``, ``pin``, ``auth`` or ``otp``, or is or ends
  with ``key`` (``api_key``, ``apiKey``, ``accesskey``, ``dedupe_key``), or, as its last word,
  ``keys`` (``api_keys``). Not masked: ``company`` (``pan`` is a word, not a substring),
  ``keys_count``, ``keyword``, ``pinned``.
  A false positive (``passenger``, ``card_id``) only hides a harmless value.
- **Card numbers.** 13 to 19 digits (single spaces or dashes between them) that pass the Luhn
  check keep only their last four digits (``****1111``), in any text or integer, at any depth.
- **URL passwords.** ``scheme://user:***@host``.
- **Bounds.** A text is cut to a limit *before* it is masked (so the work is bounded too), with
  a marker giving its length (``... (98304 characters)``); a cut never ends inside a run of
  digits. Nested data is walked to ``MAX_DEPTH`` levels, ``MAX_ITEMS`` items per container and
  ``MAX_NODES`` values in all.

Every scan is linear in the length of the text: one compiled pattern, searched left to right
from where the last match ended, whose every branch either consumes what it reads (possessive
quantifiers) or reads a bounded number of characters; a secret's value is consumed with it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

MASK = "***"
#: Characters of a value quoted in an error, a ``job_failures`` reason or a log field.
MAX_SHOWN = 200
#: Levels of nested dicts and lists walked by ``mask``; deeper containers are summed up.
MAX_DEPTH = 10
#: Items kept per dict or list; the rest is summed up in one last item.
MAX_ITEMS = 100
#: Values walked by one call to ``mask``, at every depth together.
MAX_NODES = 2_000

#: A key containing one of these names a secret.
SECRET_KEY_PARTS = ("pass", "pwd", "secret", "token", "card", "cvv", "cvc", "credential", "authoriz", "cookie")
#: A key one of whose words is one of these names a secret (a word ending with ``key`` too).
SECRET_KEY_WORDS = frozenset({"pan", "pin", "auth", "otp"})
#: Only the start of a key is looked at.
_KEY_CHECKED = 100
_WORD = re.compile(r"[A-Z]?[a-z0-9]+|[A-Z]+(?![a-z])")

_SCAN = re.compile(r"""
    # 13 to 19 digits with single spaces or dashes, not inside a longer word or number
    (?P<card>(?<![\w-])[0-9](?:[ -]?[0-9]){12,18}(?!\w))
    # scheme://user:PASSWORD@
  | (?P<url>(?<![\w+.-])[a-z][\w+.-]*+://[^:/\s@]*+:)(?P<password>[^@\s/]++)@
    # key= key: "key": 'key' = ...  (the value is read apart, only for a secret key)
  | (?<![\w-])(?P<key>[a-z_][\w-]*+)["']?[ \t]*+[:=][ \t]*+
""", re.VERBOSE | re.IGNORECASE)

_VALUE = re.compile(r"""
    (?:bearer|basic|digest|token)[ \t]++[^\s"',;&)}\]]++
  | "(?:[^"\\\n]|\\.)*+"?
  | '(?:[^'\\\n]|\\.)*+'?
  | [{\[][^}\]\n]*+[}\]]?
    # unquoted: words separated by spaces or tabs, up to the end of the line, a separator
    # (, ; & ) } ]), the next key (``password=correct horse user=bob``: ``user`` is kept) or the
    # length marker of a cut text (``(98304 characters)``)
  | [^\s"',;&)}\]]++(?:[ \t]++(?![a-z_][\w-]*+["']?[ \t]*+[:=]|\([0-9]++[ ]characters\))[^\s"',;&)}\]]++)*+
""", re.VERBOSE | re.IGNORECASE)


def is_secret_key(key: str) -> bool:
    """Whether the value of ``key`` is a secret (see the module's rules)."""
    key = key[:_KEY_CHECKED]
    lowered = key.lower()
    if any(part in lowered for part in SECRET_KEY_PARTS):
        return True
    words = [word.lower() for word in _WORD.findall(key)]
    if any(word in SECRET_KEY_WORDS or word.endswith("key") for word in words):
        return True
    return bool(words) and words[-1].endswith("keys")  # api_keys, but not keys_count


#: What the Luhn check adds for a digit in a doubled position.
_DOUBLED = (0, 2, 4, 6, 8, 1, 3, 5, 7, 9)


def _luhn(digits: str) -> bool:
    total = 0
    for n, char in enumerate(reversed(digits)):
        total += _DOUBLED[ord(char) - 48] if n % 2 else ord(char) - 48
    return total % 10 == 0


def _masked_card(text: str) -> tuple[str | None, int]:
    """For ``text`` (13 to 19 digits, maybe grouped): its longest Luhn-valid run of 13 or more
    digits from the start that ends where a group ends, masked, and the length it covers; else
    None and where the next group starts (the scan resumes there: a card may start inside).
    One pass: the Luhn sum of every prefix comes from running sums by position parity."""
    plain, doubled = [0, 0], [0, 0]
    found, count = None, 0
    for n, char in enumerate(text):
        if not char.isdigit():
            continue
        digit, parity = ord(char) - 48, count % 2
        plain[parity] += digit
        doubled[parity] += _DOUBLED[digit]
        count += 1
        # In a number of ``count`` digits, the digits doubled are those at an index of count's parity.
        if count >= 13 and (n + 1 == len(text) or not text[n + 1].isdigit()) \
                and (doubled[count % 2] + plain[1 - count % 2]) % 10 == 0:
            found = n + 1
    if found is not None:
        return f"****{_last_digits(text[:found])}", found
    groups = re.search(r"[ -]", text)
    return None, groups.end() if groups is not None else len(text)


def _last_digits(text: str, count: int = 4) -> str:
    return "".join(char for char in text if char.isdigit())[-count:]


def _scan(text: str) -> str:
    """``text`` with every secret masked, in one left-to-right pass."""
    out: list[str] = []
    done = pos = 0
    while (found := _SCAN.search(text, pos)) is not None:
        pos = found.end()
        if found.group("card") is not None:
            masked, covered = _masked_card(found.group())
            pos = found.start() + covered
            if masked is not None:
                out += (text[done:found.start()], masked)
                done = pos
        elif found.group("url") is not None:
            out += (text[done:found.start("password")], MASK, "@")
            done = pos
        elif is_secret_key(found.group("key")):
            value = _VALUE.match(text, pos)
            if value is not None and value.group().strip("'\"") != MASK:  # masked already: left as it is
                out += (text[done:pos], MASK)
                done = pos = value.end()
    if not done:
        return text
    out.append(text[done:])
    return "".join(out)


def _cut(text: str, end: int) -> str:
    """``text[:end]``, less what the cut would leave unmaskable: a run of digits (and their
    separators) it splits, so a card number is never shown in part, and the ``user:pass`` of a
    URL whose ``@`` is cut off."""
    head = text[:end]
    if end >= len(text):
        return head
    if text[end].isdigit() and head[-1:].isdigit():
        kept = len(head.rstrip("0123456789 -"))
        head = head[:kept] if len(head) - kept <= 40 else head
    word = max(head.rfind(" "), head.rfind("\t"), head.rfind("\n")) + 1
    scheme = head.find("://", word)
    if scheme != -1:
        rest = head[scheme + 3:]
        colon = rest.find(":")
        if colon != -1 and "@" not in rest and "/" not in rest[colon:]:
            head = head[:scheme + 3]
    return head


def shorten(text: str, limit: int = MAX_SHOWN) -> str:
    """``text`` cut to at most ``limit`` characters, a marker giving its length at the end."""
    if len(text) <= limit:
        return text
    marker = f"... ({len(text)} characters)"
    return _cut(text, max(limit - len(marker), 0)) + marker


def mask_text(text: str, limit: int | None = MAX_SHOWN, *, keep_end: int = 0) -> str:
    """``text`` cut to at most ``limit`` characters (the marker included; ``keep_end``: the last
    characters are kept too, e.g. the exception line of a traceback), then masked. Linear time;
    ``limit`` None masks the whole text."""
    if limit is None or len(text) <= limit:
        masked = _scan(text)
        return masked if limit is None or len(masked) <= limit else shorten(masked, limit)
    marker = f"... ({len(text)} characters) ..." if keep_end else f"... ({len(text)} characters)"
    room = max(limit - len(marker), 0)
    end_room = min(keep_end, room // 2)
    head = _scan(_cut(text, room - end_room))[:room - end_room]
    if not end_room:
        return head + marker
    tail = text[len(text) - end_room:]
    tail = _scan(tail.lstrip("0123456789 -") if tail[:1].isdigit() else tail)[-end_room:]
    return head + marker + tail


def mask_lines(text: str, *, line_limit: int = 1_000, limit: int = 20_000) -> str:
    """A traceback or any multi-line text: each line cut to ``line_limit`` characters, the whole
    to ``limit`` (its first and last lines kept), then masked."""
    if len(text) > line_limit:
        text = "\n".join(shorten(line, line_limit) for line in text.split("\n"))
    return mask_text(text, limit, keep_end=limit // 2)


def _masked_int(value: int) -> Any:
    if value.bit_length() > 64:
        return f"<an integer of {value.bit_length()} bits>"
    digits = str(abs(value))
    return f"****{digits[-4:]}" if 13 <= len(digits) <= 19 and _luhn(digits) else value


class _Walk:
    """One bounded walk over nested data."""

    def __init__(self, text_limit: int) -> None:
        self.text_limit = text_limit
        self.nodes = MAX_NODES

    def key(self, key: Any) -> Any:
        return mask_text(key, self.text_limit) if isinstance(key, str) else self.value(key, MAX_DEPTH)

    def value(self, value: Any, depth: int) -> Any:
        self.nodes -= 1
        if self.nodes < 0:
            return "..."
        if value is None or isinstance(value, bool | float):
            return value
        if isinstance(value, int):
            return _masked_int(value)
        if isinstance(value, str):
            return mask_text(value, self.text_limit)
        if isinstance(value, bytes | bytearray):
            return mask_text(bytes(value[:self.text_limit]).decode("utf-8", "replace"), self.text_limit)
        if isinstance(value, Mapping):
            if depth >= MAX_DEPTH:
                return f"<{len(value)} keys, nested too deep>"
            out: dict[Any, Any] = {}
            for n, (key, item) in enumerate(value.items()):
                if n == MAX_ITEMS:
                    out["..."] = f"{len(value) - MAX_ITEMS} more keys"
                    break
                secret = isinstance(key, str) and is_secret_key(key)
                out[self.key(key)] = MASK if secret else self.value(item, depth + 1)
            return out
        if isinstance(value, list | tuple | set | frozenset):
            if depth >= MAX_DEPTH:
                return f"<{len(value)} items, nested too deep>"
            items = [self.value(item, depth + 1) for _, item in zip(range(MAX_ITEMS), value, strict=False)]
            if len(value) > MAX_ITEMS:
                items.append(f"... ({len(value) - MAX_ITEMS} more items)")
            return items
        return mask_text(str(value), self.text_limit)


def mask(value: Any, *, text_limit: int = MAX_SHOWN) -> Any:
    """A copy of ``value`` (JSON-like data: dicts, lists, strings, numbers) with every secret in
    it masked and its size bounded: texts cut to ``text_limit`` characters, ``MAX_ITEMS`` items
    per container, ``MAX_DEPTH`` levels. Tuples and sets become lists, other objects their text."""
    return _Walk(text_limit).value(value, 0)


def quote(value: Any, limit: int = MAX_SHOWN) -> str:
    """``value`` as an error or a ``job_failures`` reason quotes it: its ``repr``, masked and at
    most about ``limit`` characters (a cut string is quoted up to the cut, its length after)."""
    if isinstance(value, str):
        if len(value) <= limit:
            return repr(_scan(value))
        marker = f"... ({len(value)} characters)"
        return repr(_scan(_cut(value, max(limit - len(marker) - 2, 0)))) + marker
    if isinstance(value, int) and not isinstance(value, bool):
        return repr(_masked_int(value))
    if value is None or isinstance(value, bool | float | Mapping | list | tuple | set | frozenset | bytes):
        return shorten(repr(mask(value, text_limit=limit)), limit)
    return mask_text(repr(value), limit)


#: 12 to 19 digits, optionally split by spaces or dashes: what a card number looks like.
_CARD_NUMBER = re.compile(r"(?<!\d)\d(?:[ -]?\d){11,18}(?!\d)")


def redact_card_numbers(text: str) -> str:
    """``text`` with anything shaped like a card number masked down to its last four digits."""

    def mask(match: re.Match[str]) -> str:
        digits = re.sub(r"\D", "", match.group())
        return "****" + digits[-4:]

    return _CARD_NUMBER.sub(mask, text)


def escape_unprintable(text: str) -> str:
    """``text`` with its control characters (but line breaks and tabs) and lone surrogates
    written as escapes (``\\x00``): words from outside (a gateway's, a server module's) as a
    column keeps them; PostgreSQL refuses a NUL in text, and a terminal would obey an ESC."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() or c in "\t\n\r" else repr(c)[1:-1] for c in text)
