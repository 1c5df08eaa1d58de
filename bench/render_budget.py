"""Benchmark: how long, and how much memory, each known attack on admin-written messages takes
until the sandbox refuses it (issue 9, item 1; ``billingworker.domain.messaging.message_sandbox``).

Each attack of ``tests/domain/messaging/test_message_budget.py`` (the same list the tests assert on),
plus a few that only a clock can stop and two legitimate references, goes once through
``render_written`` as the job renders it (a fresh ``RenderBudget``, the same for every field).
Two runs per attack: the first is timed (``time.perf_counter``, nothing else running in the
process); the second measures the peak of Python allocations with ``tracemalloc``, which slows
allocation-heavy code several times, so its time is not the one printed (and a render near the
step limit may be stopped by the clock instead under it).

Run from the repository root::

    .venv/bin/python -m bench.render_budget
    .venv/bin/python bench/render_budget.py --only "map center"

Nothing is asserted on time. The exit status is 1 if an attack is NOT refused, or a reference
letter is.
"""

from __future__ import annotations

import argparse
import sys
import time
import tracemalloc
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make ``tests`` and ``bench`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.domain.messaging.test_message_budget import ATTACKS, LETTER

from billingworker.domain.errors import ValidationError
from billingworker.domain.messaging.message_sandbox import (
    MAX_BUILT_LENGTH,
    MAX_CALL_DEPTH,
    MAX_RENDER_SECONDS,
    MAX_STEPS,
    MAX_TEMPLATE_TOKENS,
    RenderBudget,
    render_written,
)

CONTEXT = {"first_name": "Ada", "last_name": "Lovelace", "company_name": "Analytical Engines",
           "credit_balance": "$12.50 USD", "client": {"first_name": "Ada", "city": "London"},
           "settings": {"company_name": "Example Hosting"}, "n": 42,
           "invoices": [{"number": f"INV-{i:04d}", "total": 10.5 * i, "status": "Paid" if i % 3 else "Unpaid",
                         "items": [{"d": "Hosting", "a": 5.25 * i}, {"d": "Domain", "a": 5.25 * i}]}
                        for i in range(1, 201)]}

#: Attacks that allocate little and take few steps, each slow: only the wall clock stops them.
SLOW = [
    ("comparing two 50,000-item lists 95,000 times", "body",
     "{% set l = ('ab' * 25000)|list %}{% set m = ('ab' * 25000)|list %}{% for i in range(1000) %}"
     "{% for j in range(95) %}{% if l == m %}{% endif %}{% endfor %}{% endfor %}"),
    ("searching a 50,000-item list 95,000 times", "body",
     "{% set l = ('ab' * 25000)|list %}{% for i in range(1000) %}{% for j in range(95) %}{% if 'c' in l %}{% endif %}"
     "{% endfor %}{% endfor %}"),
]
#: Legitimate references, which must render: the long letter of the tests (200 invoices) and the
#: largest template compiled (MAX_TEMPLATE_TOKENS tokens of placeholders).
REFERENCES = [
    ("reference: long letter, 200 invoices", "body", LETTER),
    ("reference: largest template compiled", "body", "{{ first_name }}" * ((MAX_TEMPLATE_TOKENS - 10) // 3)),
]


def run_once(field: str, source: str) -> tuple[str, str]:
    """(``refused`` or ``rendered``, the rule or the length)."""
    try:
        text = render_written(field, source, CONTEXT, RenderBudget())
    except ValidationError as exc:
        return "refused", exc.rule
    return "rendered", f"{len(text)} characters"


def measure(field: str, source: str) -> tuple[str, str, float, float]:
    started = time.perf_counter()
    outcome, detail = run_once(field, source)
    seconds = time.perf_counter() - started
    tracemalloc.start()
    try:
        run_once(field, source)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return outcome, detail, seconds, peak / 2**20


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", help="run only the attacks whose name contains this")
    args = parser.parse_args(argv)

    print(f"budget: {MAX_STEPS} steps, {MAX_BUILT_LENGTH} characters built, {MAX_RENDER_SECONDS:g} s, "
          f"{MAX_CALL_DEPTH} nested calls, {MAX_TEMPLATE_TOKENS} tokens compiled")
    print(f"{'attack':52} {'field':7} {'seconds':>8} {'peak MB':>8}  outcome")
    cases = [(name, field, source, True) for name, field, source, _ in ATTACKS]
    cases += [(name, field, source, True) for name, field, source in SLOW]
    cases += [(name, field, source, False) for name, field, source in REFERENCES]
    failed: list[str] = []
    worst_time: tuple[float, str] | None = None
    worst_peak: tuple[float, str] | None = None
    for name, field, source, attack in cases:
        if args.only and args.only not in name:
            continue
        outcome, detail, seconds, peak = measure(field, source)
        print(f"{name[:52]:52} {field:7} {seconds:8.3f} {peak:8.1f}  {outcome}: {detail[:90]}", flush=True)
        if (outcome == "refused") != attack:
            failed.append(name)
        if attack:
            worst_time = max(worst_time or (0.0, ""), (seconds, name))
            worst_peak = max(worst_peak or (0.0, ""), (peak, name))
    if worst_time is not None and worst_peak is not None:
        print(f"worst time until refusal: {worst_time[0]:.3f} s ({worst_time[1]})")
        print(f"worst peak memory until refusal: {worst_peak[0]:.1f} MB ({worst_peak[1]})")
    for name in failed:
        print(f"FAILED: {name}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
