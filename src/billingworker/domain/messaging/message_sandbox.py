"""The sandbox that renders what an admin writes by hand (SPEC §14): ``render_written``.

Jinja2's ``ImmutableSandboxedEnvironment`` refuses ``{{ ''.__class__ }}`` and friends. On top of
it, every render runs under a ``RenderBudget`` that is enforced *while* the template runs:

- **steps**: each loop iteration, call, attribute or item read, filter, test, operator, slice,
  literal and output counts one (MAX_STEPS). The same counter reads the clock: past
  MAX_RENDER_SECONDS the next step stops the render. Cooperative: no thread is interrupted.
- **size**: every value the template builds (strings, lists, dicts, each output, the literal
  text of each loop iteration) is charged the length it has once written out, MAX_BUILT_LENGTH
  in all; no single value may be longer than MAX_RENDERED_LENGTH.
- **depth**: calls nested in calls (a macro calling itself, a recursive loop): MAX_CALL_DEPTH.

What sizes its result from an *argument* (a width or precision, a repeat count, ``range``, a
separator times the items, a replacement times its occurrences, a fill value, a format, a
rounding precision) is estimated and refused *before* it is built. What is at most a small
multiple of its input (``upper()``, ``split()``, ``|list``, ``|string``) is measured right
after: its input already fits, so it cannot reach more than a few megabytes. Only the str,
dict and list methods of ``_METHODS``, macros, blocks, ``loop`` and ``range`` can be called;
the filters ``pprint``, ``tojson``, ``urlize`` and ``xmlattr`` are not offered.

A breach is a ``ValidationError`` naming the field ("exceeds the rendering budget (steps)",
"uses something the sandbox forbids: ..."), and so is a MemoryError or RecursionError met while
rendering: the job refuses the message (dead-lettered once), it is never retried.
"""

from __future__ import annotations

import itertools
import re
import time
import types
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import jinja2
from jinja2 import nodes
from jinja2.compiler import CodeGenerator, Frame
from jinja2.exceptions import SecurityError
from jinja2.filters import make_attrgetter
from jinja2.runtime import BlockReference, LoopContext, Macro, Undefined
from jinja2.sandbox import ImmutableSandboxedEnvironment, SandboxedFormatter
from markupsafe import EscapeFormatter, Markup

from ..errors import ValidationError

#: Longest rendered subject or body, and longest single value a template may build, in characters.
MAX_RENDERED_LENGTH = 262_144
#: Longest template compiled (the longest body a job accepts), and most tokens in it (a long
#: letter has a few hundred): compiling is not step-counted, these bound it (~0.3 s, ~16 MB).
MAX_SOURCE_LENGTH = 65_536
MAX_TEMPLATE_TOKENS = 5_000
#: Steps of one message (its subject and body together); a long letter uses a few thousand.
MAX_STEPS = 100_000
#: Characters a message may build in all, intermediate values included (16 rendered lengths).
MAX_BUILT_LENGTH = 4_194_304
#: Wall-clock limit of one message's render, in seconds, checked at every step.
MAX_RENDER_SECONDS = 2.0
#: Calls nested in calls (macros, ``caller()``, recursive loops, blocks).
MAX_CALL_DEPTH = 32
#: Largest ``range()`` and exponent; largest whole number ``*`` and ``**`` may make, in bits.
MAX_RANGE = 1000
MAX_EXPONENT = 64
MAX_NUMBER_BITS = 4096
#: Longest text ``wordwrap`` takes: Python's textwrap is quadratic on one long word.
MAX_WRAPPED_LENGTH = 65_536

_CONTAINERS = (list, tuple, dict, set, frozenset)
_VIEWS = (type({}.keys()), type({}.values()), type({}.items()))


class BudgetExceeded(Exception):
    """The render used up its budget (``kind``: steps, size, time or depth)."""

    def __init__(self, kind: str, detail: str) -> None:
        self.kind = kind
        self.detail = detail
        super().__init__(f"{kind}: {detail}")


def _check_length(length: int) -> None:
    if length > MAX_RENDERED_LENGTH:
        raise SecurityError(f"a value would be longer than {MAX_RENDERED_LENGTH} characters")


def _count(what: str, value: Any) -> int:
    """A width, repeat or count as a number, refused beyond MAX_RENDERED_LENGTH. A string of
    digits counts (``'{0:{1}}'.format('x', '4000000000')`` takes its width from one)."""
    if isinstance(value, int):
        number = abs(value)
    elif isinstance(value, str) and re.fullmatch(r"\s*[-+]?\d+\s*", value):
        digits = value.strip().lstrip("+-")
        number = int(digits) if len(digits) <= 7 else MAX_RENDERED_LENGTH + 1
    else:
        return 0  # not a number: the operation itself raises TypeError
    if number > MAX_RENDERED_LENGTH:
        raise SecurityError(f"a {what} larger than {MAX_RENDERED_LENGTH}")
    return number


def _number_length(value: Any) -> int:
    """Upper bound of a number formatted without precision (a float with ``f``: 309 digits)."""
    if isinstance(value, int):
        return abs(value).bit_length() // 3 + 2
    return 330 if isinstance(value, float) else 0


def _quoted_length(text: str) -> int:
    """Upper bound of ``len(repr(text))`` without building it."""
    if text.isprintable():
        return len(text) + text.count("\\") + text.count("'") + 2 + (8 if isinstance(text, Markup) else 0)
    return 10 * len(text) + 2  # \U000e0001


class RenderBudget:
    """The allowance of one message: its subject and body share one (pass it to both renders).

    Only ``render_written`` activates it; the sandbox's hooks find it through a context
    variable, so renders in several threads each count their own.
    """

    def __init__(self, *, steps: int = MAX_STEPS, built: int = MAX_BUILT_LENGTH,
                 seconds: float = MAX_RENDER_SECONDS, depth: int = MAX_CALL_DEPTH,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.max_steps, self.max_built, self.seconds, self.max_depth = steps, built, seconds, depth
        self._clock = clock
        self.deadline = clock() + seconds
        self.steps = self.built = self.depth = 0
        #: The first breach: every later check raises it again, so a breach that some code
        #: swallowed still stops the render.
        self.breach: BudgetExceeded | None = None
        # Written length of the lists and dicts seen, by id (with the object, so that the id is
        # not reused): the sandbox cannot change them, and a list holding one list 400 times
        # is then measured in 400 steps, not 400 times over.
        self._lengths: dict[int, tuple[Any, int]] = {}

    def _trip(self, kind: str, detail: str) -> None:
        self.breach = BudgetExceeded(kind, detail)
        raise self.breach

    def step(self) -> None:
        if self.breach is not None:
            raise self.breach
        self.steps += 1
        if self.steps > self.max_steps:
            self._trip("steps", f"more than {self.max_steps} steps (loop iterations, calls, attribute, filter "
                                f"and operator uses)")
        if self._clock() > self.deadline:
            self._trip("time", f"still rendering after {self.seconds:g} s")

    def charge(self, length: int) -> None:
        if self.breach is not None:
            raise self.breach
        self.built += length
        if self.built > self.max_built:
            self._trip("size", f"builds more than {self.max_built} characters in all")

    @contextmanager
    def nested_call(self) -> Iterator[None]:
        if self.depth >= self.max_depth:
            self._trip("depth", f"calls nested more than {self.max_depth} deep")
        self.depth += 1
        try:
            yield
        finally:
            self.depth -= 1

    def check(self) -> None:
        if self.breach is not None:
            raise self.breach

    def length(self, value: Any, *, quoted: bool = False) -> int:
        """Upper bound of ``len(str(value))`` (``repr`` with ``quoted``), refused beyond
        MAX_RENDERED_LENGTH; computed without building the text."""
        if isinstance(value, str):
            size = _quoted_length(value) if quoted else len(value)
        elif isinstance(value, _CONTAINERS):
            size = self._container_length(value)
        elif isinstance(value, _VIEWS):
            size = 2 * self._container_length(value.mapping) + 16
        elif isinstance(value, bytes | bytearray):
            size = 4 * len(value) + 14
        elif isinstance(value, bool) or value is None:
            size = 5
        elif isinstance(value, int | float):
            size = 24 if isinstance(value, float) else _number_length(value)
        else:
            size = 100  # a macro, a generator, an undefined value...: a short repr
        _check_length(size)
        return size

    def _container_length(self, root: Any) -> int:
        # Iterative (a list may hold lists hundreds deep) and stopped as soon as the total is
        # over the limit, so it costs at most MAX_RENDERED_LENGTH / 2 items.
        known = self._lengths.get(id(root))
        if known is not None and known[0] is root:
            return known[1]
        stack: list[list[Any]] = [[root, _items(root), 2]]
        open_ids = {id(root)}
        while stack:
            frame = stack[-1]
            for child in frame[1]:
                if isinstance(child, _CONTAINERS):
                    known = self._lengths.get(id(child))
                    if known is not None and known[0] is child:
                        frame[2] += known[1] + 2
                    elif id(child) in open_ids:
                        frame[2] += 7  # a list holding itself prints [...]
                    else:
                        open_ids.add(id(child))
                        stack.append([child, _items(child), 2])
                        break
                else:
                    frame[2] += self.length(child, quoted=True) + 2
                _check_length(frame[2])
            else:
                stack.pop()
                open_ids.discard(id(frame[0]))
                self._lengths[id(frame[0])] = (frame[0], frame[2])
                if not stack:
                    return frame[2]
                stack[-1][2] += frame[2] + 2
                _check_length(stack[-1][2])
        raise AssertionError("unreachable")

    def built_value(self, value: Any) -> Any:
        """Measure and charge a value the template built (a string, list, dict...)."""
        if isinstance(value, (str, *_CONTAINERS)):
            self.charge(self.length(value))
        return value

    def counted(self, iterable: Any, literal: int = 0, *, measure: bool = False) -> Iterator[Any]:
        """``iterable``, one step per item, plus ``literal`` characters (the loop body's text)."""
        for item in iterable:
            self.step()
            self.charge(literal)
            if measure:
                self.built_value(item)
            yield item


def _items(container: Any) -> Iterator[Any]:
    return itertools.chain.from_iterable(container.items()) if isinstance(container, dict) else iter(container)


_active: ContextVar[RenderBudget | None] = ContextVar("message_render_budget", default=None)


def _budget() -> RenderBudget:
    budget = _active.get()
    if budget is None:
        raise SecurityError("the message sandbox renders only through render_written")
    return budget


# -- formats ----------------------------------------------------------------------------------

#: A standard format spec: [[fill]align][sign][z][#][0][width][grouping][.precision][type].
_FORMAT_SPEC = re.compile(r"(?:.?[<>=^])?[-+ ]?z?#?0?(?P<width>\d*)[,_]?(?:\.(?P<precision>\d*))?[a-zA-Z%]?", re.S)
#: One ``%`` conversion; ``*`` takes the width or precision from the arguments.
_PERCENT_FIELD = re.compile(r"%(?:\((?P<key>[^)]*)\))?[#0 +\-]*(?P<width>\*|\d*)(?:\.(?P<precision>\*|\d*))?"
                            r"[hlL]?(?P<kind>.?)", re.S)


def _field_length(budget: RenderBudget, value: Any, width: int, precision: int, kind: str = "") -> int:
    if kind in ("r", "a"):
        size = budget.length(value, quoted=True) * (10 if kind == "a" else 1)
    elif isinstance(value, int | float) and not isinstance(value, bool):
        size = _number_length(value) + precision
    else:
        size = budget.length(value)
    return max(width, size)


def _check_percent(budget: RenderBudget, fmt: str, args: Any) -> None:
    """Refuse ``fmt % args`` (or ``fmt|format(...)``) whose result would be over the limit,
    before it is built: each conversion counts its width, precision and value."""
    values = list(args) if isinstance(args, tuple) else [args]
    taken = 0

    def take() -> Any:
        nonlocal taken
        taken += 1
        return values[taken - 1] if taken <= len(values) else None

    written = len(fmt)
    for field in _PERCENT_FIELD.finditer(fmt):
        if field["kind"] == "%":
            continue
        budget.step()
        width = _count("width", take() if field["width"] == "*" else field["width"])
        precision = _count("precision", take() if field["precision"] == "*" else field["precision"])
        value = args.get(field["key"]) if field["key"] is not None and isinstance(args, Mapping) else take()
        written += _field_length(budget, value, width, precision, field["kind"])
        _check_length(written)


class _BoundedFormatter(SandboxedFormatter):
    """``str.format`` in the sandbox: each field's width, precision and value are checked before
    the field is formatted (nested fields first: ``{0:{1}}``), the text so far after."""

    def vformat(self, format_string: str, args: Any, kwargs: Any) -> str:
        self._written = len(format_string)
        return super().vformat(format_string, args, kwargs)

    def convert_field(self, value: Any, conversion: str | None) -> Any:
        if conversion is not None:  # !s, !r, !a write the value out here, before format_field
            _field_length(_budget(), value, 0, 0, conversion)
        return super().convert_field(value, conversion)

    def format_field(self, value: Any, format_spec: str) -> Any:
        budget = _budget()
        budget.step()
        spec = _FORMAT_SPEC.fullmatch(format_spec)
        if spec is not None:
            width, precision = _count("width", spec["width"]), _count("precision", spec["precision"])
        else:  # a type's own format (dates...): refuse any large number in it
            width, precision = max([0, *(_count("width", n) for n in re.findall(r"\d+", format_spec))]), 0
        _check_length(_field_length(budget, value, width, precision))
        text = super().format_field(value, format_spec)
        self._written += len(text)
        _check_length(self._written)
        return text


class _BoundedEscapeFormatter(_BoundedFormatter, EscapeFormatter):
    pass


# -- str methods ------------------------------------------------------------------------------

#: The methods a message may call, by type; the first set sizes its result from an argument.
_SIZED_STR_METHODS = frozenset({"center", "ljust", "rjust", "zfill", "expandtabs", "replace", "join", "format",
                                "format_map"})
_STR_METHODS = _SIZED_STR_METHODS | frozenset({
    "capitalize", "casefold", "count", "endswith", "find", "index", "isalnum", "isalpha", "isascii", "isdecimal",
    "isdigit", "isidentifier", "islower", "isnumeric", "isprintable", "isspace", "istitle", "isupper", "lower",
    "lstrip", "partition", "removeprefix", "removesuffix", "rfind", "rindex", "rpartition", "rsplit", "rstrip",
    "split", "splitlines", "startswith", "strip", "swapcase", "title", "upper"})
_METHODS = ((str, _STR_METHODS), (dict, frozenset({"get", "items", "keys", "values"})),
            (list | tuple | range, frozenset({"count", "index"})))
_VALUE_TYPES = (str, bytes, bytearray, int, float, complex, list, tuple, dict, set, frozenset, range, *_VIEWS)


def _method_allowed(owner: Any, name: str) -> bool:
    return next((name in names for kind, names in _METHODS if isinstance(owner, kind)), False)


def _check_replace(text: str, old: Any, new: Any, count: Any = -1) -> None:
    if isinstance(old, str) and isinstance(new, str):
        found = len(text) + 1 if old == "" else text.count(old)
        if isinstance(count, int) and count >= 0:
            found = min(found, count)
        _check_length(len(text) + found * max(len(new) - len(old), 0))


def _check_join(budget: RenderBudget, separator: str, items: list) -> None:
    _check_length(sum(budget.length(item) for item in items) + len(separator) * max(len(items) - 1, 0))


class _SizedStrMethod:
    """A ``str`` method that sizes its result from its arguments, checked before it runs."""

    def __init__(self, env: _MessageSandbox, method: Any) -> None:
        self._env, self._method, self._text = env, method, method.__self__

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        budget, name, text = _budget(), self._method.__name__, self._text
        if name in ("format", "format_map"):
            formatter = (_BoundedEscapeFormatter(self._env, escape=text.escape) if isinstance(text, Markup)
                         else _BoundedFormatter(self._env))
            if name == "format_map":
                if kwargs or len(args) != 1:
                    raise TypeError("format_map() takes exactly one argument")
                args, kwargs = (), args[0]
            return type(text)(formatter.vformat(text, args, kwargs))
        if name in ("center", "ljust", "rjust", "zfill"):
            _check_length(max(len(text), _count("width", args[0] if args else 0)))
        elif name == "expandtabs":
            _check_length(len(text) + text.count("\t") * _count("tab size", args[0] if args else 8))
        elif name == "replace":
            _check_replace(text, *args[:3])
        elif name == "join" and args:
            items = list(args[0])
            _check_join(budget, text, items)
            args = (items, *args[1:])
        return self._method(*args, **kwargs)


# -- filters ----------------------------------------------------------------------------------

def _check_center(budget: RenderBudget, value: Any, width: Any = 80) -> None:
    _count("width", width)


def _check_indent(budget: RenderBudget, value: Any, width: Any = 4, first: bool = False, blank: bool = False) -> None:
    text = str(value)
    pad = len(width) if isinstance(width, str) else _count("width", width)
    _check_length(len(text) + (len(text.splitlines()) + 1) * pad)


def _check_wordwrap(budget: RenderBudget, value: Any, width: Any = 79, break_long_words: bool = True,
                    wrapstring: Any = None, break_on_hyphens: bool = True) -> None:
    text = str(value)
    if len(text) > MAX_WRAPPED_LENGTH:
        raise SecurityError(f"wordwrap of more than {MAX_WRAPPED_LENGTH} characters")
    lines = len(text) // max(_count("width", width), 1) + len(text.splitlines()) + 1
    _check_length(len(text) + lines * (len(wrapstring) if isinstance(wrapstring, str) else 1))


def _check_format(budget: RenderBudget, value: Any, *args: Any, **kwargs: Any) -> None:
    _check_percent(budget, str(value), kwargs or args)


def _check_replace_filter(budget: RenderBudget, value: Any, old: Any, new: Any, count: Any = None) -> None:
    _check_replace(str(value), str(old), str(new), -1 if count is None else count)


def _check_batch(budget: RenderBudget, value: Any, linecount: Any, fill_with: Any = None) -> None:
    lines = _count("batch size", linecount)
    if fill_with is not None:
        _check_length(lines * (budget.length(fill_with, quoted=True) + 2))


def _check_slice(budget: RenderBudget, value: Any, slices: Any, fill_with: Any = None) -> None:
    _count("number of slices", slices)


def _check_round(budget: RenderBudget, value: Any, precision: Any = 0, method: str = "common") -> None:
    # round(5, -10**9) computes 10**(10**9): minutes in one C call, never reaching a step.
    if _whole(precision) and abs(precision) > MAX_EXPONENT:
        raise SecurityError(f"a rounding precision larger than {MAX_EXPONENT}")


_FILTER_CHECKS: dict[str, Callable[..., None]] = {
    "center": _check_center, "indent": _check_indent, "wordwrap": _check_wordwrap, "format": _check_format,
    "replace": _check_replace_filter, "batch": _check_batch, "slice": _check_slice, "round": _check_round,
}
#: HTML, JSON and debugging filters, meaningless in a plain-text letter, whose output grows with
#: the nesting of their input (``tojson(indent=...)``, ``pprint``) or with markup per word.
_DROPPED_FILTERS = frozenset({"pprint", "tojson", "urlize", "xmlattr"})
#: Filters whose items are new lists or tuples: each item is measured as it comes.
_ITEM_BUILDING_FILTERS = frozenset({"batch", "slice", "items"})


@jinja2.pass_environment
def _do_join(environment: jinja2.Environment, value: Any, d: Any = "", attribute: Any = None) -> str:
    """``join``, checked: the items are listed and measured before they are joined."""
    items = list(value)
    if attribute is not None:
        items = list(map(make_attrgetter(environment, attribute), items))
    separator = str(d)
    _check_join(_budget(), separator, items)
    return separator.join(map(str, items))


@jinja2.pass_environment
def _do_sum(environment: _MessageSandbox, iterable: Any, attribute: Any = None, start: Any = 0) -> Any:
    """``sum`` through the sandbox's checked ``+``: one step per item, lists and strings bounded."""
    getter = make_attrgetter(environment, attribute) if attribute is not None else None
    total = start
    for item in iterable:
        total = environment.call_binop(None, "+", total, getter(item) if getter else item)
    return total


def _budgeted_filter(name: str, func: Callable[..., Any]) -> Callable[..., Any]:
    """``func`` counted one step, its value checked writable (and by ``_FILTER_CHECKS``) before,
    its result measured after; a lazy result is counted item by item."""
    pass_arg = getattr(func, "jinja_pass_arg", None)
    lead = 0 if pass_arg is None else 1
    check = _FILTER_CHECKS.get(name)
    measure_items = name in _ITEM_BUILDING_FILTERS

    def run(*args: Any, **kwargs: Any) -> Any:
        budget = _budget()
        budget.step()
        if len(args) > lead:
            budget.length(args[lead])
            if check is not None:
                check(budget, *args[lead:], **kwargs)
        result = func(*args, **kwargs)
        if isinstance(result, Iterator) and not isinstance(result, (str, *_CONTAINERS)):
            return budget.counted(result, measure=measure_items)
        return budget.built_value(result)

    if pass_arg is not None:
        run.jinja_pass_arg = pass_arg  # type: ignore[attr-defined]
    run.__name__ = name
    return run


def _budgeted_test(func: Callable[..., Any]) -> Callable[..., Any]:
    def run(*args: Any, **kwargs: Any) -> Any:
        _budget().step()
        return func(*args, **kwargs)

    pass_arg = getattr(func, "jinja_pass_arg", None)
    if pass_arg is not None:
        run.jinja_pass_arg = pass_arg  # type: ignore[attr-defined]
    return run


def _bounded_range(*args: int) -> range:
    numbers = range(*args)
    if len(numbers) > MAX_RANGE:
        raise SecurityError(f"range() of more than {MAX_RANGE} numbers")
    return numbers


# -- the compiled template --------------------------------------------------------------------

def _literal_length(body: list[nodes.Node]) -> int:
    """Characters of template text one iteration of ``body`` outputs (nested loops count their own)."""
    total, stack = 0, list(body)
    while stack:
        node = stack.pop()
        if isinstance(node, nodes.TemplateData):
            total += len(node.data)
        elif isinstance(node, nodes.For):
            stack.extend(node.else_)
        else:
            stack.extend(node.iter_child_nodes())
    return total


class _BudgetedCodeGenerator(CodeGenerator):
    """Routes what the sandbox does not intercept through the environment: the iterable of each
    ``{% for %}`` (one step and the body's literal text per item), ``~``, slices and list, tuple
    and dict literals. (Jinja2 allows no custom node types, so the loop's iterable is marked.)"""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._loop_iterables: dict[int, tuple[nodes.Node, int]] = {}

    def visit_For(self, node: nodes.For, frame: Frame) -> None:
        self._loop_iterables[id(node.iter)] = (node.iter, _literal_length(node.body))
        super().visit_For(node, frame)

    def visit(self, node: nodes.Node, *args: Any, **kwargs: Any) -> Any:
        loop = self._loop_iterables.get(id(node))
        if loop is None or loop[0] is not node:
            return super().visit(node, *args, **kwargs)
        del self._loop_iterables[id(node)]
        self.write("environment.budgeted_iter(")
        super().visit(node, *args, **kwargs)
        self.write(f", {loop[1]!r})")
        return None

    def visit_Concat(self, node: nodes.Concat, frame: Frame) -> None:
        self.write("environment.bounded_concat((")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write("))")

    def _literal(self, visit: Callable[[Any, Frame], None], node: nodes.Expr, frame: Frame) -> None:
        self.write("environment.built_literal(")
        visit(node, frame)
        self.write(")")

    def visit_List(self, node: nodes.List, frame: Frame) -> None:
        self._literal(super().visit_List, node, frame)

    def visit_Dict(self, node: nodes.Dict, frame: Frame) -> None:
        self._literal(super().visit_Dict, node, frame)

    def visit_Tuple(self, node: nodes.Tuple, frame: Frame) -> None:
        if node.ctx != "load":  # a target: {% for a, b in ... %}
            super().visit_Tuple(node, frame)
        else:
            self._literal(super().visit_Tuple, node, frame)

    def visit_Getitem(self, node: nodes.Getitem, frame: Frame) -> None:
        if not isinstance(node.arg, nodes.Slice):
            super().visit_Getitem(node, frame)
            return
        self.write("environment.sliced(")
        self.visit(node.node, frame)
        for part in (node.arg.start, node.arg.stop, node.arg.step):
            self.write(", ")
            if part is None:
                self.write("None")
            else:
                self.visit(part, frame)
        self.write(")")


class _MessageSandbox(ImmutableSandboxedEnvironment):
    """The sandbox of written messages: every hook of ``SandboxedEnvironment`` (attribute and
    item reads, calls, operators, ``str.format``) and of our code generator counts a step and
    checks what it is about to build; filters and tests are wrapped likewise; ``finalize``
    measures each output. Only the callables a letter needs may be called."""

    intercepted_binops = frozenset({"+", "-", "*", "/", "//", "%", "**"})
    intercepted_unops = frozenset({"+", "-"})
    code_generator_class = _BudgetedCodeGenerator

    def __init__(self) -> None:
        super().__init__(undefined=jinja2.StrictUndefined, autoescape=False, finalize=self._finalize)
        self.globals = {"range": _bounded_range}  # no lipsum, cycler, namespace...: a letter needs none
        filters = {**self.filters, "join": _do_join, "sum": _do_sum}
        self.filters = {name: _budgeted_filter(name, func) for name, func in filters.items()
                        if name not in _DROPPED_FILTERS}
        self.tests = {name: _budgeted_test(func) for name, func in self.tests.items()}

    @staticmethod
    def _finalize(value: Any) -> Any:
        budget = _budget()
        budget.step()
        budget.charge(budget.length(value))
        return value

    # Called by the compiled template.
    @staticmethod
    def budgeted_iter(iterable: Any, literal: int) -> Iterator[Any]:
        return _budget().counted(iterable, literal)

    @staticmethod
    def built_literal(value: Any) -> Any:
        budget = _budget()
        budget.step()
        return budget.built_value(value)

    @staticmethod
    def bounded_concat(values: tuple) -> str:
        budget = _budget()
        budget.step()
        _check_length(sum(budget.length(v) for v in values))
        return budget.built_value("".join(str(v) for v in values))

    @staticmethod
    def sliced(value: Any, start: Any, stop: Any, step: Any) -> Any:
        budget = _budget()
        budget.step()
        return budget.built_value(value[start:stop:step])

    # The sandbox's hooks.
    def getattr(self, obj: Any, attribute: str) -> Any:
        _budget().step()
        return super().getattr(obj, attribute)

    def getitem(self, obj: Any, argument: Any) -> Any:
        _budget().step()
        return super().getitem(obj, argument)

    def is_safe_attribute(self, obj: Any, attr: str, value: Any) -> bool:
        if not super().is_safe_attribute(obj, attr, value):
            return False
        return not (isinstance(obj, _VALUE_TYPES) and callable(value)) or _method_allowed(obj, attr)

    def wrap_str_format(self, value: Any) -> Any:
        # Called for every attribute or item read, before ``is_safe_attribute``.
        if isinstance(value, types.MethodType | types.BuiltinMethodType) \
                and isinstance(getattr(value, "__self__", None), str) and value.__name__ in _SIZED_STR_METHODS:
            return _SizedStrMethod(self, value)
        return None

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        budget = _budget()
        budget.step()
        if isinstance(__obj, LoopContext) and args:  # {{ loop(children) }} in a recursive loop
            args = (budget.counted(args[0]), *args[1:])
        elif not _may_call(__obj):
            raise SecurityError(f"{getattr(__obj, '__name__', type(__obj).__name__)}() cannot be called in a message")
        with budget.nested_call():
            result = super().call(__context, __obj, *args, **kwargs)
        return budget.built_value(result)

    def call_binop(self, context: Any, op: str, left: Any, right: Any) -> Any:
        budget = _budget()
        budget.step()
        whole = _whole(left) and _whole(right)
        if op == "**":
            if isinstance(right, int | float) and abs(right) > MAX_EXPONENT:
                raise SecurityError(f"an exponent larger than {MAX_EXPONENT}")
            if whole and abs(left).bit_length() * abs(right) > MAX_NUMBER_BITS:
                raise SecurityError("the number would be too large")
        elif op == "*":
            if whole and abs(left).bit_length() + abs(right).bit_length() > MAX_NUMBER_BITS:
                raise SecurityError("the number would be too large")
            for seq, times in ((left, right), (right, left)):
                if isinstance(seq, str | list | tuple) and _whole(times) and times > 0:
                    # Before repeating: a list of long strings is cheap, written out it is not.
                    _check_length(max(len(seq), budget.length(seq)) * times)
        elif op == "+":
            if isinstance(left, str | list | tuple) and isinstance(right, str | list | tuple):
                _check_length(budget.length(left) + budget.length(right))
        elif op == "%" and isinstance(left, str):
            _check_percent(budget, left, right)
        return budget.built_value(self.binop_table[op](left, right))

    def call_unop(self, context: Any, op: str, arg: Any) -> Any:
        _budget().step()
        return self.unop_table[op](arg)


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _may_call(obj: Any) -> bool:
    """What a message may call: its macros and blocks, ``loop.cycle``, ``range`` and the str,
    dict and list methods of ``_METHODS`` (the sized ones through ``_SizedStrMethod``)."""
    if isinstance(obj, Macro | BlockReference | _SizedStrMethod | Undefined) or obj is _bounded_range:
        return True
    if isinstance(obj, types.MethodType | types.BuiltinMethodType):
        owner = getattr(obj, "__self__", None)
        if isinstance(owner, LoopContext):
            return obj.__name__ in ("cycle", "changed")
        return obj.__name__ not in _SIZED_STR_METHODS and _method_allowed(owner, obj.__name__)
    return False


_sandbox = _MessageSandbox()


def _refusal(field: str, shown: str, exc: BaseException) -> ValidationError:
    if isinstance(exc, BudgetExceeded):
        return ValidationError(field, shown, f"exceeds the rendering budget ({exc.kind}): {exc.detail}")
    if isinstance(exc, MemoryError):
        return ValidationError(field, shown, "exceeds the rendering budget (memory): the worker ran out of memory")
    if isinstance(exc, RecursionError):
        return ValidationError(field, shown, "exceeds the rendering budget (depth): nested too deeply")
    if isinstance(exc, jinja2.TemplateSyntaxError):
        return ValidationError(field, shown, f"is not a valid template: {exc.message} (line {exc.lineno})")
    if isinstance(exc, SecurityError):
        return ValidationError(field, shown, f"uses something the sandbox forbids: {exc}")
    if isinstance(exc, jinja2.UndefinedError):
        return ValidationError(field, shown, f"uses an unknown placeholder: {exc}")
    return ValidationError(field, shown, f"cannot be rendered: {type(exc).__name__}: {str(exc)[:200]}")


def render_written(field: str, source: str, context: dict[str, Any], budget: RenderBudget | None = None) -> str:
    """``source`` rendered in the sandbox (no autoescaping: the result is plain text), within
    ``budget`` (a new one by default; give the same one to a message's subject and body).

    Pure: reads no database, so call it with no transaction open. Any failure is a
    ``ValidationError`` naming ``field``, never anything a retry could cure: a syntax error, an
    unknown placeholder, what the sandbox forbids, a breach of the budget ("exceeds the
    rendering budget (steps)"), and a MemoryError or RecursionError met while rendering.
    ``context`` holds plain values (strings, numbers, dicts and lists of them).
    """
    shown = source if len(source) <= 80 else source[:77] + "..."
    budget = budget if budget is not None else RenderBudget()
    if len(source) > MAX_SOURCE_LENGTH:
        raise ValidationError(field, shown, f"is longer than {MAX_SOURCE_LENGTH} characters")
    token = _active.set(budget)
    chunks: list[str] = []
    try:
        budget.check()
        tokens = itertools.islice((t for t in _sandbox.lex(source) if t[1] != "whitespace"), MAX_TEMPLATE_TOKENS + 1)
        if sum(1 for _ in tokens) > MAX_TEMPLATE_TOKENS:
            raise BudgetExceeded("size", f"more than {MAX_TEMPLATE_TOKENS} tokens to compile")
        # Streamed, so that a loop printing a long text stops at the limit instead of building
        # the whole output first.
        stream = _sandbox.from_string(source).generate(context)
        try:
            length = 0
            for chunk in stream:
                length += len(chunk)
                if length > MAX_RENDERED_LENGTH:
                    raise ValidationError(field, shown, f"renders to more than {MAX_RENDERED_LENGTH} characters")
                chunks.append(chunk)
        finally:
            stream.close()
        budget.check()  # a breach some code caught and ignored
        return "".join(chunks)
    except ValidationError:
        raise
    except Exception as exc:  # noqa: BLE001 - all of them: the template is the admin's, not ours
        chunks.clear()
        raise _refusal(field, shown, exc) from None
    finally:
        _active.reset(token)
