"""Tax (SPEC §7): two levels by country and state, level 2 optionally compound, prices
exclusive or inclusive of tax, rounding half-up on each tax total of the invoice (never per
line), so that the lines plus the taxes always add up to the total."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal

from sqlalchemy import select
from sqlalchemy.orm import Session

from ..models import TaxRule
from ..money import ZERO, round_money

HUNDRED = Decimal(100)


@dataclass(slots=True)  # hot path: plain slots are ~5x faster to build than frozen
class Rate:
    name: str
    percent: Decimal  # 20 means 20 %


@dataclass(frozen=True)
class TaxRules:
    """All tax rules of the installation, loaded once per batch (the table is small)."""

    rules: tuple[tuple[int, str, str, str, Decimal], ...]  # (level, name, country, state, rate)

    @classmethod
    def load(cls, session: Session) -> TaxRules:
        rows = session.execute(
            select(TaxRule.level, TaxRule.name, TaxRule.country, TaxRule.state, TaxRule.rate).order_by(TaxRule.id)
        ).all()
        return cls(tuple((r.level, r.name, r.country or "", r.state or "", Decimal(r.rate)) for r in rows))

    def rate_for(self, level: int, country: str, state: str) -> Rate | None:
        """The most specific rule of ``level``: country+state, then country, then everywhere."""
        best: tuple[int, Rate] | None = None
        state_key = (state or "").strip().lower()
        for lvl, name, r_country, r_state, rate in self.rules:
            if lvl != level:
                continue
            if r_country and r_country.upper() != (country or "").upper():
                continue
            if r_state and r_state.strip().lower() != state_key:
                continue
            score = (2 if r_country else 0) + (1 if r_state else 0)
            if best is None or score > best[0]:
                best = (score, Rate(name, rate))
        return best[1] if best else None

    def rates_for(self, country: str, state: str, *, exempt: bool) -> tuple[Rate | None, Rate | None]:
        if exempt:
            return None, None
        return self.rate_for(1, country, state), self.rate_for(2, country, state)


@dataclass(slots=True)  # hot path: plain slots are ~5x faster to build than frozen
class Totals:
    subtotal: Decimal
    tax1: Decimal
    tax2: Decimal
    total: Decimal
    rate1: Decimal = ZERO
    rate2: Decimal = ZERO
    name1: str = ""
    name2: str = ""


def compute_totals(
    lines: Iterable[tuple[Decimal, bool]],
    rate1: Rate | None,
    rate2: Rate | None,
    *,
    inclusive: bool = False,
    compound: bool = False,
    minor_units: int = 2,
) -> Totals:
    """Totals of an invoice from its ``(amount, taxed)`` lines (amounts already rounded).

    Exclusive prices: subtotal = sum of lines; tax1 = round(taxed x r1); tax2 = round(taxed x r2),
    or round((taxed + tax1) x r2) when compound; total = subtotal + tax1 + tax2.
    Inclusive prices: the lines already contain the tax, total = sum of lines, the taxes are
    taken out of the taxed part, and subtotal = total - tax1 - tax2.
    """
    lines = list(lines)
    gross = sum((amount for amount, _ in lines), ZERO)
    taxed = sum((amount for amount, is_taxed in lines if is_taxed), ZERO)
    r1 = rate1.percent / HUNDRED if rate1 else ZERO
    r2 = rate2.percent / HUNDRED if rate2 else ZERO
    if inclusive:
        divisor = (1 + r1) * (1 + r2) if compound else 1 + r1 + r2
        net = taxed / divisor
        tax1 = round_money(net * r1, minor_units)
        tax2 = round_money((net + net * r1 if compound else net) * r2, minor_units)
        total = gross
        subtotal = total - tax1 - tax2
    else:
        tax1 = round_money(taxed * r1, minor_units)
        tax2 = round_money((taxed + tax1 if compound else taxed) * r2, minor_units)
        subtotal = gross
        total = subtotal + tax1 + tax2
    return Totals(
        subtotal=subtotal,
        tax1=tax1,
        tax2=tax2,
        total=total,
        rate1=rate1.percent if rate1 else ZERO,
        rate2=rate2.percent if rate2 else ZERO,
        name1=rate1.name if rate1 else "",
        name2=rate2.name if rate2 else "",
    )

