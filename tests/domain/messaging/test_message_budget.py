"""The rendering budget of admin-written messages (issue 9, item 1): resource bombs are refused
while the template runs, before they allocate, as a ValidationError naming the field, with
nothing written. Times are measured in bench/render_budget.py, never here."""

from __future__ import annotations

import itertools
import tracemalloc
from datetime import UTC, datetime

import jinja2
import pytest
from jinja2.sandbox import ImmutableSandboxedEnvironment
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from billingworker.domain.errors import ValidationError
from billingworker.domain.messaging import message_sandbox
from billingworker.domain.messaging.client_email import send_client_email
from billingworker.domain.messaging.message_sandbox import (
    MAX_BUILT_LENGTH,
    MAX_CALL_DEPTH,
    MAX_STEPS,
    MAX_TEMPLATE_TOKENS,
    RenderBudget,
    render_written,
)
from billingworker.domain.models import EmailLog, EmailTemplate, JobFailure, OutboxEmail
from tests import factories as f
from tests.factories import ATTACK_IDS, ATTACKS, FORBIDS, STEPS

NOW = datetime(2026, 1, 10, 9, 0, tzinfo=UTC)


def count_rows(session: Session) -> dict[str, int]:
    session.rollback()
    return {model.__tablename__: session.scalar(select(func.count()).select_from(model))
            for model in (OutboxEmail, EmailLog, JobFailure, EmailTemplate)}


@pytest.mark.parametrize("name, field, source, refusal", ATTACKS, ids=ATTACK_IDS)
def test_an_attack_is_refused_naming_the_field_and_nothing_is_written(session, name, field, source, refusal):
    # Given a client and an admin's message carrying the attack
    c = f.client(session)
    session.commit()
    before = count_rows(session)
    message = {"subject": "Hello", "body": "Hello"} | {field: source}
    # When it is sent (and asked to be saved)
    with pytest.raises(ValidationError) as caught:
        send_client_email(session, c.id, dedupe_key="send_client_email:request:1", now=NOW, save_message=True,
                          **message)
    # Then it is refused, naming the field and the rule, and nothing is written
    assert caught.value.field == field
    assert refusal in caught.value.rule, caught.value.rule
    assert count_rows(session) == before


@pytest.mark.parametrize("name, field, source, refusal", ATTACKS, ids=ATTACK_IDS)
def test_an_attack_is_refused_before_it_allocates(name, field, source, refusal):
    """Refused, and the render never held more than a few megabytes (the budget is 4 M
    characters in all): the attack is stopped before its gigabytes, not after."""
    tracemalloc.start()
    try:
        with pytest.raises(ValidationError):
            render_written(field, source, {"first_name": "Ada"})
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 32 * 2**20, f"{peak / 2**20:.1f} MB"


def test_the_time_limit_is_checked_at_every_step():
    # A clock that moves 0.5 s at each reading: the fourth step is past the 2 s limit.
    ticks = itertools.count(step=0.5)
    budget = RenderBudget(clock=lambda: next(ticks))
    with pytest.raises(ValidationError) as caught:
        render_written("body", "{% for i in range(10) %}{{ i }}{% endfor %}", {}, budget)
    assert caught.value.rule.startswith("exceeds the rendering budget (time): still rendering after 2 s")


@pytest.mark.parametrize("error, rule", [
    (MemoryError, "exceeds the rendering budget (memory)"),
    (RecursionError, "exceeds the rendering budget (depth)"),
])
def test_memory_and_recursion_errors_while_rendering_are_refusals(session, monkeypatch, error, rule):
    c = f.client(session)
    session.commit()

    def raise_error(self):
        raise error()

    monkeypatch.setattr(RenderBudget, "step", raise_error)
    with pytest.raises(ValidationError) as caught:
        send_client_email(session, c.id, dedupe_key="k", now=NOW, subject="Hi {{ first_name }}", body="Hi")
    assert caught.value.field == "subject" and caught.value.rule.startswith(rule)
    assert count_rows(session)["email_outbox"] == 0


def test_the_limits_are_those_documented():
    assert (MAX_STEPS, MAX_BUILT_LENGTH, message_sandbox.MAX_RENDER_SECONDS, MAX_CALL_DEPTH, MAX_TEMPLATE_TOKENS) \
        == (100_000, 4_194_304, 2.0, 32, 5_000)


def test_the_subject_and_the_body_share_one_budget():
    budget = RenderBudget(steps=1500)
    loop = "{% for i in range(900) %}{% endfor %}"
    render_written("subject", loop, {}, budget)
    with pytest.raises(ValidationError) as caught:
        render_written("body", loop, {}, budget)
    assert caught.value.field == "body" and caught.value.rule.startswith(STEPS)


def test_a_breach_that_the_template_swallowed_still_refuses():
    budget = RenderBudget(steps=10)
    with pytest.raises(ValidationError, match="rendering budget"):
        render_written("body", "{% for i in range(100) %}{% endfor %}", {}, budget)
    with pytest.raises(ValidationError, match="rendering budget"):
        render_written("body", "Hello", {}, budget)


#: A long letter using what letters use: macros, call blocks, loops with filters and else,
#: loop.cycle, a recursive loop, sort/groupby/selectattr/sum/batch/dictsort, formats of every kind.
LETTER = """{% macro row(inv, sep=' | ') -%}
{{ inv.number }}{{ sep }}{{ '%10.2f'|format(inv.total) }}{{ sep }}{{ inv.status|upper }}
{%- endmacro %}
{% macro box(title) %}[{{ title|center(20) }}]{{ caller() }}{% endmacro %}
Dear {{ first_name|title }} {{ last_name }} of {{ company_name|default('your company') }},
{% call box('Invoices') %}{{ invoices|length }} invoices{% endcall %}
{% for inv in invoices|sort(attribute='total', reverse=true) if inv.status == 'Unpaid' -%}
{{ loop.index }}. {{ row(inv) }} {{ loop.cycle('odd', 'even') }}{% if not loop.last %},{% endif %}
  {% for it in inv['items'] %}- {{ '{:<10} {:>8.2f}'.format(it.d, it.a) }}{% endfor %}
{% else %}none{% endfor %}
Total unpaid: {{ invoices|selectattr('status', 'equalto', 'Unpaid')|sum(attribute='total')|round(2) }}
Paid: {{ invoices|selectattr('status', 'eq', 'Paid')|map(attribute='number')|join(', ')|truncate(60) }}
{% for status, group in invoices|groupby('status') %}{{ status }}: {{ group|length }} {% endfor %}
{% for row in invoices[:10]|batch(3, '-') %}{{ row|map(attribute='number', default='-')|join(' ') }};{% endfor %}
{% for k, v in client|dictsort %}{{ k }}={{ v }} {% endfor %}{% for k, v in client.items() %}{{ k }}{% endfor %}
{{ client.get('city', 'x') }} {{ client['first_name'] ~ '!' }} {{ 'a b c'.split()|reverse|join }} {{ (n * 2) // 3 }}
{{ -n }} {{ n is divisibleby 3 }} {{ "Hello %s, you owe %.2f" % (first_name, 12.5) }} {{ "%(a)s" % {'a': 1} }}
{{ "{name} {0}".format(1, name=first_name) }} {{ credit_balance|replace('$', 'USD ') }}
{{ ('line one\\nline two')|indent(2) }} {{ ('word ' * 20)|wordwrap(30) }} {{ 'x'.ljust(5) }}| {{ 'ab'.zfill(5) }}
{{ [1, 2, 3]|max }} {{ range(5)|list }} {{ range(3)|map('string')|join('-') }} {{ 'abc'[::-1] }} {{ (1, 2)|first }}
{{ '1,2'.replace(',', ';') }} {{ ';'.join(['a', 'b']) }} {% for x in [3, 1, 2]|sort %}{{ x }}{% endfor %}
{{ invoices|map(attribute='total')|list|sum|int }} {{ first_name|lower is lower }} {{ settings.company_name|e }}
{%- for x in [[1, [2]], [3]] recursive %}<{{ x if x is number else loop(x) }}>{% endfor %}
"""


def test_a_long_ordinary_letter_renders_as_plain_jinja_would():
    invoices = [{"number": f"INV-{i:04d}", "total": 10.5 * i, "status": "Paid" if i % 3 else "Unpaid",
                 "items": [{"d": "Hosting", "a": 5.25 * i}, {"d": "Domain", "a": 5.25 * i}]} for i in range(1, 201)]
    context = {"first_name": "ada", "last_name": "Lovelace", "company_name": "Engines", "n": 42,
               "credit_balance": "$12.50 USD", "client": {"first_name": "Ada", "city": "London"},
               "settings": {"company_name": "Example & Co"}, "invoices": invoices}
    budget = RenderBudget()
    text = render_written("body", LETTER, context, budget)
    plain = ImmutableSandboxedEnvironment(undefined=jinja2.StrictUndefined).from_string(LETTER).render(context)
    assert text == plain
    assert "66. INV-0003 |      31.50 | UNPAID even" in text and "Total unpaid: 69646.5" in text
    assert "INV-0001 INV-0002 INV-0003;" in text and "INV-0010 - -;" in text and "<<1><<2>>><<3>>" in text
    assert budget.steps < MAX_STEPS // 10 and budget.built < MAX_BUILT_LENGTH // 10


@pytest.mark.parametrize("source", [
    "{{ 'x'.encode() }}",  # bytes have their own ljust...
    "{{ ''.maketrans({}) }}",
    "{{ (1).to_bytes(4, 'big') }}",
    "{{ [1].copy() }}",
    "{{ lipsum() }}",
    "{{ namespace() }}",
])
def test_only_the_methods_a_letter_needs_can_be_called(source):
    with pytest.raises(ValidationError) as caught:
        render_written("body", source, {})
    assert FORBIDS in caught.value.rule or "unknown placeholder" in caught.value.rule, caught.value.rule
