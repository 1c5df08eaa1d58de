"""The sandbox that renders what an admin writes by hand (SPEC §14): ``render_written``.

Jinja2's ``ImmutableSandboxedEnvironment`` refuses ``{{ ''.__class__ }}`` and friends; on top of
it this module refuses, *before* the text is built, what would make a worker allocate gigabytes
or spin for minutes: huge ``range()`` and exponents, padding and format widths, ``replace`` /
``join`` / ``~`` / repetition producing more than MAX_RENDERED_LENGTH characters. The output is
generated in chunks and stops at that length. Every refusal is a ``ValidationError`` naming the
field, so a bad message is dead-lettered with nothing written.
"""

from __future__ import annotations

import operator
import re
import string
import types
from typing import Any

import jinja2
from jinja2.compiler import CodeGenerator, Frame
from jinja2.exceptions import SecurityError
from jinja2.nodes import Concat
from jinja2.sandbox import ImmutableSandboxedEnvironment

from .errors import ValidationError

#: Longest rendered subject or body, in characters.
MAX_RENDERED_LENGTH = 262_144
#: Largest ``range()`` and exponent a written message may use: enough for any letter, too
#: little to keep a worker busy for minutes.
MAX_RANGE = 1000
MAX_EXPONENT = 64
#: Largest whole number ``*`` and ``**`` may make, in bits (about 1,200 digits).
MAX_NUMBER_BITS = 4096


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _refuse_long(length: int) -> None:
    if length > MAX_RENDERED_LENGTH:
        raise SecurityError(f"the text would be longer than {MAX_RENDERED_LENGTH} characters")


def _ints(values: Any) -> list[int]:
    """The whole numbers among ``values`` (one level into tuples, lists and dicts)."""
    found: list[int] = []
    for value in values:
        inner = value.values() if isinstance(value, dict) else value if isinstance(value, list | tuple) else (value,)
        found.extend(v for v in inner if _whole(v))
    return found


#: A width or precision in a ``%`` or ``format`` spec (``%*d`` and ``{:{w}}`` take it from the arguments).
_PERCENT_SPEC = re.compile(r"%(?:\([^)]*\))?[#0 +-]*(\*|\d*)(?:\.(\*|\d*))?")


def _check_format(fmt: str, args: Any, *, percent: bool) -> None:
    """Refuse a ``%`` or ``str.format`` whose widths could build a huge string (``%999999999s``)."""
    if percent:
        specs = ["".join(m.groups(default="")) for m in _PERCENT_SPEC.finditer(fmt)]
    else:
        try:
            specs = [spec or "" for _, _, spec, _ in string.Formatter().parse(fmt)]
        except ValueError:
            return  # a malformed format fails by itself
    for spec in specs:
        if any(len(d) > 6 or int(d) > MAX_RENDERED_LENGTH for d in re.findall(r"\d+", spec)):
            raise SecurityError(f"a width in the format is larger than {MAX_RENDERED_LENGTH}")
        if ("*" in spec or "{" in spec) and any(abs(n) > MAX_RENDERED_LENGTH for n in _ints(args)):
            raise SecurityError(f"a width given to the format is larger than {MAX_RENDERED_LENGTH}")


def _joined_length(separator: str, items: list[Any]) -> int:
    return sum(len(str(item)) for item in items) + len(separator) * max(len(items) - 1, 0)


def _check_str_call(text: str, name: str, args: tuple, kwargs: dict) -> tuple:
    """Refuse a call of a ``str`` method that would build a string over the length limit,
    before it is built; returns ``args`` (``join`` needs its iterable as a list)."""
    if name in ("ljust", "rjust", "center", "zfill"):
        _refuse_long(max([len(text), *(abs(n) for n in _ints([*args, *kwargs.values()]))]))
    elif name == "expandtabs":
        size = max([8, *(abs(n) for n in _ints([*args, *kwargs.values()]))])
        _refuse_long(len(text) + text.count("\t") * size)
    elif name == "replace" and len(args) >= 2 and isinstance(args[0], str) and isinstance(args[1], str):
        old, new = args[0], args[1]
        found = len(text) + 1 if old == "" else text.count(old)
        if len(args) > 2 and _whole(args[2]) and args[2] >= 0:
            found = min(found, args[2])
        _refuse_long(len(text) + found * max(len(new) - len(old), 0))
    elif name == "join" and args:
        items = list(args[0])
        _refuse_long(_joined_length(text, items))
        return (items, *args[1:])
    elif name in ("format", "format_map"):
        _check_format(text, [*args, *kwargs.values()], percent=False)
    return args


class _BoundedConcat(CodeGenerator):
    """``a ~ b ~ c`` through ``environment.bounded_concat``: the length is checked before the join."""

    def visit_Concat(self, node: Concat, frame: Frame) -> None:
        self.write("environment.bounded_concat((")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write("))")


_SIZED_STR_METHODS = frozenset({"ljust", "rjust", "center", "zfill", "expandtabs", "replace", "join", "format",
                                "format_map"})


class _MessageSandbox(ImmutableSandboxedEnvironment):
    """The sandbox, with everything that can build a huge string or number bounded before it
    does: ``*`` and ``**`` (``{{ 'x' * 10**9 }}``, a number of a million digits), ``%`` and
    ``format`` widths, the padding, ``replace`` and ``join`` methods and filters. Each is refused
    (``SecurityError``) instead of eating the worker's memory and time: the length check after
    rendering comes too late for a gigabyte."""

    intercepted_binops = frozenset({"*", "**", "%", "+"})
    code_generator_class = _BoundedConcat

    @staticmethod
    def bounded_concat(values: tuple) -> str:
        parts = [str(v) for v in values]
        _refuse_long(sum(len(p) for p in parts))
        return "".join(parts)

    def wrap_str_format(self, value: Any) -> Any:
        # Called by the sandbox for every attribute or item read: wrap the str methods that size
        # their result from an argument (format and format_map also keep the sandbox's own checks).
        if not isinstance(value, types.MethodType | types.BuiltinMethodType) \
                or not isinstance(getattr(value, "__self__", None), str) or value.__name__ not in _SIZED_STR_METHODS:
            return super().wrap_str_format(value)
        method = super().wrap_str_format(value) or value
        text, name = value.__self__, value.__name__

        def bounded(*args: Any, **kwargs: Any) -> Any:
            return method(*_check_str_call(text, name, args, kwargs), **kwargs)

        return bounded

    def call_binop(self, context: Any, op: str, left: Any, right: Any) -> Any:
        if op == "**":
            if isinstance(right, int | float) and abs(right) > MAX_EXPONENT:
                raise SecurityError(f"exponent {right} is larger than {MAX_EXPONENT}")
            if _whole(left) and _whole(right) and abs(left).bit_length() * abs(right) > MAX_NUMBER_BITS:
                raise SecurityError("the number would be too large")
            return operator.pow(left, right)
        if op == "*":
            if _whole(left) and _whole(right) and abs(left).bit_length() + abs(right).bit_length() > MAX_NUMBER_BITS:
                raise SecurityError("the number would be too large")
            for seq, times in ((left, right), (right, left)):
                if isinstance(seq, str | list | tuple) and _whole(times) and len(seq) * times > MAX_RENDERED_LENGTH:
                    raise SecurityError("the repeated text would be too long")
                # A list of long strings repeated is cheap, but joined or printed it is not.
                if isinstance(seq, list | tuple) and _whole(times) \
                        and sum(len(x) for x in seq if isinstance(x, str)) * times > MAX_RENDERED_LENGTH:
                    raise SecurityError("the repeated text would be too long")
            return operator.mul(left, right)
        if op == "%" and isinstance(left, str):
            _check_format(left, [right], percent=True)
        if op == "+" and isinstance(left, str | list | tuple) and isinstance(right, str | list | tuple):
            _refuse_long(len(left) + len(right))
        return super().call_binop(context, op, left, right)


def _bounded_range(*args: int) -> range:
    numbers = range(*args)
    if len(numbers) > MAX_RANGE:
        raise SecurityError(f"range() of more than {MAX_RANGE} numbers")
    return numbers


_sandbox = _MessageSandbox(undefined=jinja2.StrictUndefined, autoescape=False)
_sandbox.globals = {"range": _bounded_range}  # no lipsum, cycler...: a letter needs none


def _bounded_filters(env: jinja2.Environment) -> None:
    """The filters that size their result from an argument, checked like the str methods."""
    center, indent, replace, join, fmt = (env.filters[n] for n in ("center", "indent", "replace", "join", "format"))

    def do_center(value: Any, width: int = 80) -> str:
        _refuse_long(max(len(str(value)), abs(width) if _whole(width) else 0))
        return center(value, width)

    def do_indent(value: Any, width: Any = 4, first: bool = False, blank: bool = False) -> str:
        text = str(value)
        size = len(width) if isinstance(width, str) else abs(width) if _whole(width) else 0
        _refuse_long(len(text) + (text.count("\n") + 1) * size)
        return indent(value, width, first, blank)

    @jinja2.pass_eval_context
    def do_replace(eval_ctx: Any, value: Any, old: Any, new: Any, count: int | None = None) -> str:
        _check_str_call(str(value), "replace", (str(old), str(new), -1 if count is None else count), {})
        return replace(eval_ctx, value, old, new, count)

    @jinja2.pass_eval_context
    def do_join(eval_ctx: Any, value: Any, d: str = "", attribute: Any = None) -> str:
        items = list(value) if attribute is None else [env.getattr(item, attribute) for item in value]
        _refuse_long(_joined_length(str(d), items))
        return join(eval_ctx, items, d)

    def do_format(value: Any, *args: Any, **kwargs: Any) -> str:
        _check_format(str(value), [kwargs or args], percent=True)
        return fmt(value, *args, **kwargs)

    env.filters.update(center=do_center, indent=do_indent, replace=do_replace, join=do_join, format=do_format)


_bounded_filters(_sandbox)


def render_written(field: str, source: str, context: dict[str, Any]) -> str:
    """``source`` rendered in the sandbox (no autoescaping: the result is plain text).

    A syntax error, an unknown placeholder, anything the sandbox forbids or any error while
    rendering is a ``ValidationError`` naming ``field``.
    """
    shown = source if len(source) <= 80 else source[:77] + "..."
    try:
        # Streamed, so that a loop printing a long text a million times stops at the limit
        # instead of building the whole output first.
        chunks, length = [], 0
        for chunk in _sandbox.from_string(source).generate(context):
            length += len(chunk)
            if length > MAX_RENDERED_LENGTH:
                raise ValidationError(field, shown, f"renders to more than {MAX_RENDERED_LENGTH} characters")
            chunks.append(chunk)
        text = "".join(chunks)
    except jinja2.TemplateSyntaxError as exc:
        raise ValidationError(field, shown, f"is not a valid template: {exc.message} (line {exc.lineno})") from None
    except SecurityError as exc:
        raise ValidationError(field, shown, f"uses something the sandbox forbids: {exc}") from None
    except jinja2.UndefinedError as exc:
        raise ValidationError(field, shown, f"uses an unknown placeholder: {exc}") from None
    except (jinja2.TemplateError, ArithmeticError, TypeError, ValueError, LookupError, AttributeError,
            RecursionError) as exc:
        raise ValidationError(field, shown, f"cannot be rendered: {type(exc).__name__}: {exc}") from None
    if len(text) > MAX_RENDERED_LENGTH:
        raise ValidationError(field, shown, f"renders to more than {MAX_RENDERED_LENGTH} characters")
    return text
