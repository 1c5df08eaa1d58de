"""The public contract of docs/jobs.md, pinned to the code.

docs/jobs.md is what other applications (PHP, Node, the scheduler) program against: the jobs,
their queue, their arguments and defaults, and the few library functions an application calls.
These tests read that page and compare it with the declared Dramatiq actors and with the
functions at the module path the page names, so that a renamed argument, a new argument without
a default, a changed default, a moved function or a job that vanishes fails here, not in a
sender's production.

How the page documents a job, and so what is parsed here:
- a heading ``## name`` or ``### name`` (one section may name several jobs: ``## a, b, c``);
- ``Queue `billing`.`` (or ``emails``) in the section;
- a table ``| argument | type | default | meaning |``: the argument in backticks, the default
  ``required`` (or ``**required**``), a JSON literal in backticks (``null``, ``true``, ``"0"``,
  ``1000``, optionally followed by words), or ``today`` (a date argument: ``null``).
The internal jobs (the worker sends them to itself) are named in the paragraph **Public and
internal jobs**; some are documented in prose only, so their signatures are pinned in
``INTERNAL_ACTORS`` below and their arguments must at least be named in their section.
"""

from __future__ import annotations

import importlib
import inspect
import json
import pkgutil
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import billingworker.actors
import billingworker.domain

JOBS_MD = Path(__file__).resolve().parents[1] / "docs" / "jobs.md"


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Any = _Required()

#: Jobs the worker sends to itself (docs/jobs.md, "Public and internal jobs"), with their
#: signature as (argument, default) pairs in order and their queue. Changing one changes what a
#: message already waiting in a broker (or a scheduler that sends a batch itself) must look like.
INTERNAL_ACTORS: dict[str, tuple[str, tuple[tuple[str, Any], ...]]] = {
    "generate_due_invoices_batch": ("billing", (("client_ids", REQUIRED), ("as_of", REQUIRED), ("send_email", True))),
    "run_task_batch": ("billing", (("task", REQUIRED), ("first_client_id", REQUIRED),
                                   ("last_client_id", REQUIRED), ("as_of", REQUIRED), ("send_email", True))),
    "normalize_phone_numbers_batch": ("billing", (("client_ids", REQUIRED),)),
    "deliver_emails": ("emails", (("email_ids", REQUIRED),)),
    "advance_daily_run": ("billing", (("run_id", REQUIRED),)),
    "run_daily_batch": ("billing", (("run_id", REQUIRED), ("task", REQUIRED), ("batch_no", REQUIRED),
                                    ("first_client_id", REQUIRED), ("last_client_id", REQUIRED))),
    "relay_module_commands": ("billing", (("limit", 1000), ("older_than_seconds", None))),
    # Sent by Dramatiq's Retries (deliver_email's on_retry_exhausted), with the spent message.
    "give_up_email_delivery": ("emails", (("message_data", REQUIRED), ("retry_info", None))),
    # Never accepted from a sender (message_guard enqueues it itself); its arguments are not
    # documented, only pinned here.
    "refuse_undecodable_message": ("billing", (("actor", REQUIRED), ("field", REQUIRED), ("value", REQUIRED),
                                               ("rule", REQUIRED))),
}
#: Internal jobs whose arguments docs/jobs.md does not name (nobody may send them).
UNDOCUMENTED_ARGUMENTS = {"refuse_undecodable_message"}

#: The library functions docs/jobs.md tells other Python applications to call, with their
#: signature: (name, kind, default) in order; "pos" = positional or keyword, "kw" = keyword-only.
LIBRARY_FUNCTIONS: dict[str, tuple[tuple[str, str, Any], ...]] = {
    "verify_reset_token": (("session", "pos", REQUIRED), ("token", "pos", REQUIRED), ("now", "kw", REQUIRED),
                           ("secret_keys", "kw", None)),
    "complete_password_reset": (("session", "pos", REQUIRED), ("token", "pos", REQUIRED),
                                ("new_password", "pos", REQUIRED), ("now", "kw", REQUIRED),
                                ("secret_keys", "kw", None)),
    "normalize_phone_for_write": (("session", "pos", REQUIRED), ("raw", "pos", REQUIRED), ("country", "pos", REQUIRED),
                                  ("field", "kw", "phone_number")),
    "normalize_phone": (("raw", "pos", REQUIRED), ("country", "pos", REQUIRED), ("formatting", "kw", True),
                        ("field", "kw", "phone_number")),
}
#: Names the page tells applications to import beside the functions (exceptions they catch).
LIBRARY_NAMES = ("InvalidResetToken",)


# ---------------------------------------------------------------------------------------------
# Reading docs/jobs.md


@dataclass
class JobDoc:
    name: str
    heading: str
    text: str
    queue: str | None
    #: (argument, default) in the table's order; None when the section has no argument table.
    arguments: tuple[tuple[str, Any], ...] | None


_HEADING = re.compile(r"^(#{2,4})\s+(.+?)\s*$")
_JOB_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
_QUEUE = re.compile(r"\bQueue `([a-z_]+)`")
_TABLE_HEAD = re.compile(r"^\|\s*argument\s*\|\s*type\s*\|\s*default\s*\|")


def _sections(text: str) -> list[tuple[str, str]]:
    """(heading, body) of every heading of level 2 to 4; a body runs to the next heading."""
    found: list[tuple[str, list[str]]] = []
    in_code = False
    for line in text.splitlines():
        if line.startswith("```"):
            in_code = not in_code
        match = None if in_code else _HEADING.match(line)
        if match:
            found.append((match.group(2), []))
        elif found:
            found[-1][1].append(line)
    return [(heading, "\n".join(body)) for heading, body in found]


def _cells(row: str) -> list[str]:
    return [c.strip() for c in row.strip().strip("|").split("|")]


def parse_default(cell: str) -> Any:
    """The default a table cell documents; an unreadable cell fails (say it in a form read here)."""
    plain = cell.replace("**", "").strip()
    if plain.startswith("required"):
        return REQUIRED
    if plain.startswith("today"):
        return None  # a date argument: null or absent means today
    literal = re.match(r"`([^`]+)`", plain)
    if literal:
        try:
            return json.loads(literal.group(1))
        except ValueError:
            pass
    raise AssertionError(f"docs/jobs.md: cannot read the default {cell!r}: write `required`, a JSON literal "
                         "in backticks, or `today`")


def _argument_table(body: str) -> tuple[tuple[str, Any], ...] | None:
    lines = body.splitlines()
    for i, line in enumerate(lines):
        if _TABLE_HEAD.match(line):
            rows = []
            for row in lines[i + 2:]:
                if not row.startswith("|"):
                    break
                cells = _cells(row)
                name = re.fullmatch(r"`([a-z_][a-z0-9_]*)`", cells[0])
                assert name, f"docs/jobs.md: argument cell {cells[0]!r} is not one `name`"
                rows.append((name.group(1), parse_default(cells[2])))
            return tuple(rows)
    return None


def parse_jobs(text: str) -> dict[str, JobDoc]:
    jobs: dict[str, JobDoc] = {}
    for heading, body in _sections(text):
        names = [n.strip().strip("`") for n in heading.split(",")]
        if not all(_JOB_NAME.match(n) for n in names):
            continue  # a heading about something else ("The message", "Completing a reset"...)
        queue = _QUEUE.search(body)
        arguments = _argument_table(body)
        for name in names:
            assert name not in jobs, f"docs/jobs.md documents {name} twice"
            jobs[name] = JobDoc(name, heading, body, queue.group(1) if queue else None, arguments)
    return jobs


def parse_internal(text: str) -> set[str]:
    """The jobs the paragraph **Public and internal jobs** calls internal."""
    paragraph = next(p for p in text.split("\n\n") if p.startswith("**Public and internal jobs.**"))
    _, _, internal = paragraph.partition("**internal** ones")
    assert internal, "docs/jobs.md: the paragraph 'Public and internal jobs' no longer names the internal ones"
    return set(re.findall(r"`([a-z][a-z0-9_]*)`", internal))


def parse_public(text: str) -> set[str]:
    """The jobs the same paragraph calls public: those it names, and the jobs of the
    client-account table but those it excepts."""
    paragraph = next(p for p in text.split("\n\n") if p.startswith("**Public and internal jobs.**"))
    public, _, _ = paragraph.partition("**internal** ones")
    named, _, excepted = public.partition(" except ")
    account = dict(_sections(text))["Client-account jobs"]
    table = {name for row in account.splitlines() if row.startswith("| [")
             for name in re.findall(r"\[`([a-z_]+)`\]", _cells(row)[0])}
    return set(re.findall(r"`([a-z][a-z0-9_]*)`", named)) | (table - set(re.findall(r"`([a-z][a-z0-9_]*)`", excepted)))


def _doc_text() -> str:
    return JOBS_MD.read_text(encoding="utf-8")


DOC = _doc_text()
DOCUMENTED = parse_jobs(DOC)


# ---------------------------------------------------------------------------------------------
# The code


def declared_actors() -> dict[str, Any]:
    """The jobs billingworker declares: actors whose function lives in the package (a test may
    declare a probe actor of its own on the same broker; it is not part of the contract)."""
    broker = billingworker.actors.broker
    actors = {name: broker.get_actor(name) for name in broker.get_declared_actors()}
    return {name: actor for name, actor in actors.items() if actor.fn.__module__.startswith("billingworker.")}


def actor_signature(fn: Any) -> tuple[tuple[str, Any], ...]:
    """(argument, default) in order; a job's arguments are sent by name, so none may be
    positional-only, and *args / **kwargs would accept what no table documents."""
    result = []
    for p in inspect.signature(fn).parameters.values():
        assert p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY), \
            f"{fn.__name__}: argument {p.name} is {p.kind.description}; a job takes named arguments only"
        result.append((p.name, REQUIRED if p.default is p.empty else p.default))
    return tuple(result)


def _describe(signature: tuple[tuple[str, Any], ...] | None) -> str:
    if signature is None:
        return "(no argument table)"
    return "(" + ", ".join(n if d is REQUIRED else f"{n}={d!r}" for n, d in signature) + ")"


ACTORS = declared_actors()


# ---------------------------------------------------------------------------------------------
# Jobs


def test_every_job_is_documented_and_every_documented_job_exists():
    internal_without_section = {n for n in INTERNAL_ACTORS if n not in DOCUMENTED}
    missing_in_code = sorted(set(DOCUMENTED) - set(ACTORS))
    undocumented = sorted(set(ACTORS) - set(DOCUMENTED) - internal_without_section)
    assert not missing_in_code, f"docs/jobs.md documents jobs the worker no longer declares: {missing_in_code}"
    assert not undocumented, (f"actors not in docs/jobs.md (document them, or list them in INTERNAL_ACTORS "
                              f"if the page calls them internal): {undocumented}")


def test_internal_jobs_are_the_ones_the_page_calls_internal():
    assert parse_internal(DOC) == set(INTERNAL_ACTORS)
    assert not set(INTERNAL_ACTORS) - set(ACTORS), "an internal job listed here is no longer declared"


def test_every_documented_job_is_either_public_or_internal():
    public, internal = parse_public(DOC), parse_internal(DOC)
    assert not public & internal, f"docs/jobs.md calls these both public and internal: {sorted(public & internal)}"
    assert public | internal == set(ACTORS), (
        f"docs/jobs.md, 'Public and internal jobs': unnamed {sorted(set(ACTORS) - public - internal)}, "
        f"not jobs {sorted((public | internal) - set(ACTORS))}")


def test_internal_jobs_without_a_section_are_still_named_in_the_page():
    for name in INTERNAL_ACTORS:
        assert f"`{name}`" in DOC, f"docs/jobs.md no longer mentions {name}"


@pytest.mark.parametrize("name", sorted(DOCUMENTED))
def test_documented_job_matches_its_actor(name):
    doc = DOCUMENTED[name]
    assert name in ACTORS, f"docs/jobs.md documents {name} (section {doc.heading!r}), which no actor declares"
    actor = ACTORS[name]
    code = actor_signature(actor.fn)
    assert doc.queue == actor.queue_name, f"{name}: docs say queue {doc.queue!r}, the actor is on {actor.queue_name!r}"
    if name in INTERNAL_ACTORS:
        if doc.arguments is None:
            # Documented in prose: every argument must at least be named in its section.
            unnamed = [arg for arg, _ in code if f"`{arg}`" not in doc.text]
            assert not unnamed, f"{name}: section {doc.heading!r} does not name the arguments {unnamed}"
            return
    else:
        assert doc.arguments is not None, (f"{name} is public: its section {doc.heading!r} needs a table "
                                           "| argument | type | default | meaning |")
    assert doc.arguments == code, (f"{name}: docs/jobs.md says {_describe(doc.arguments)}, "
                                   f"the actor takes {_describe(code)}")


@pytest.mark.parametrize("name", sorted(INTERNAL_ACTORS))
def test_internal_job_keeps_its_pinned_signature(name):
    queue, pinned = INTERNAL_ACTORS[name]
    assert name in ACTORS, f"internal job {name} is no longer declared"
    actor = ACTORS[name]
    assert actor.queue_name == queue
    code = actor_signature(actor.fn)
    assert code == pinned, f"{name}: pinned {_describe(pinned)}, the actor takes {_describe(code)}"
    if name not in DOCUMENTED and name not in UNDOCUMENTED_ARGUMENTS:
        # Documented in another job's prose (run_task_batch: "messages (`task`, ...)").
        paragraphs = [p for p in DOC.split("\n\n") if f"`{name}`" in p]
        unnamed = [arg for arg, _ in code if not any(f"`{arg}`" in p for p in paragraphs)]
        assert not unnamed, f"{name}: docs/jobs.md names it but not its arguments {unnamed}"


# ---------------------------------------------------------------------------------------------
# Library functions


def documented_module(name: str) -> str | None:
    """The module docs/jobs.md says ``name`` is imported from: ``from M import ..., name`` or a
    dotted ``M.name(`` reference; None when the page names no module for it."""
    for match in re.finditer(r"from\s+(billingworker(?:\.\w+)*)\s+import\s+([^\n]+)", DOC):
        if name in [n.strip() for n in match.group(2).split("#")[0].split(",")]:
            return match.group(1)
    match = re.search(rf"`(billingworker(?:\.\w+)*)\.{name}\(", DOC)
    return match.group(1) if match else None


def find_in_domain(name: str) -> list[str]:
    """The modules of billingworker.domain (and its subpackages) that define ``name``."""
    found = []
    for info in pkgutil.walk_packages(billingworker.domain.__path__, "billingworker.domain."):
        module = importlib.import_module(info.name)
        obj = getattr(module, name, None)
        if obj is not None and getattr(obj, "__module__", None) == info.name:
            found.append(info.name)
    return found


def library_object(name: str) -> Any:
    module = documented_module(name)
    if module is None:
        # The page names no module: the one domain module that defines it.
        defined = find_in_domain(name)
        assert len(defined) == 1, f"{name}: docs/jobs.md names no module and the domain defines it in {defined}"
        module = defined[0]
    imported = importlib.import_module(module)  # a moved module fails here: keep the documented path
    assert hasattr(imported, name), f"docs/jobs.md tells applications to import {name} from {module}: it is not there"
    return getattr(imported, name)


def _documented_call(name: str) -> tuple[list[str], list[str]] | None:
    """(positional names, keyword names) of the first call of ``name`` shown in the page."""
    match = re.search(rf"\b{name}\(([^)]*)\)", DOC)
    if not match:
        return None
    positional, keywords = [], []
    for arg in (a.strip() for a in match.group(1).split(",") if a.strip()):
        key = re.match(r"(\w+)\s*=", arg)
        (keywords if key else positional).append(key.group(1) if key else arg)
    return positional, keywords


def test_library_functions_are_documented():
    for name in (*LIBRARY_FUNCTIONS, *LIBRARY_NAMES):
        assert f"{name}" in DOC, f"docs/jobs.md no longer documents {name}"


@pytest.mark.parametrize("name", sorted(LIBRARY_FUNCTIONS))
def test_library_function_keeps_its_signature(name):
    fn = library_object(name)
    kinds = {inspect.Parameter.POSITIONAL_OR_KEYWORD: "pos", inspect.Parameter.KEYWORD_ONLY: "kw"}
    code = tuple((p.name, kinds.get(p.kind, p.kind.description), REQUIRED if p.default is p.empty else p.default)
                 for p in inspect.signature(fn).parameters.values())
    assert code == LIBRARY_FUNCTIONS[name], f"{name}: pinned {LIBRARY_FUNCTIONS[name]}, the code has {code}"
    call = _documented_call(name)
    assert call is not None, f"docs/jobs.md shows no call of {name}"
    positional, keywords = call
    # The page's example call: its positional names are the leading positional parameters,
    # its keywords exist, and it passes every required parameter.
    by_position = [n for n, kind, _ in code if kind == "pos"][:len(positional)]
    assert positional == by_position, f"{name}: docs/jobs.md passes {positional} by position, the code takes {code}"
    assert set(keywords) <= {n for n, _, _ in code}, \
        f"{name}: docs/jobs.md passes {keywords} by name, the code takes {code}"
    required = {n for n, _, d in code if d is REQUIRED}
    shown = set(positional) | set(keywords)
    assert required <= shown, f"{name}: docs/jobs.md's call leaves out the required {sorted(required - shown)}"


@pytest.mark.parametrize("name", LIBRARY_NAMES)
def test_library_names_import_from_the_documented_module(name):
    obj = library_object(name)
    assert isinstance(obj, type) and issubclass(obj, Exception)


def test_the_parser_reads_defaults_as_documented():
    assert parse_default("required") is REQUIRED
    assert parse_default("**required**") is REQUIRED
    assert parse_default("`null` (every client)") is None
    assert parse_default('`"0"`') == "0"
    assert parse_default("`1000`") == 1000
    assert parse_default("today (installation time zone)") is None
    with pytest.raises(AssertionError):
        parse_default("whatever the settings say")
