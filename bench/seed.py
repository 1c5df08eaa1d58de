"""Fill an empty, migrated PostgreSQL or MySQL/MariaDB database with a realistic book of clients, fast.

Rows go in through psycopg 3 ``COPY ... FROM STDIN`` (MySQL/MariaDB: multi-row INSERTs through
PyMySQL's ``executemany``) on the engine's raw connection, in one transaction: 50,000 clients
and 200,000 services take seconds, where ORM inserts would take minutes. The data is
deterministic for a given ``seed``: two runs build the same book.

What the book holds (SPEC §1, §2, §7):

- 2 currencies (USD, EUR, both with 2 minor units); tax rules for GB, DE, FR, NL (level 1), a
  US state (TX), Canada (GST, level 1) and Quebec (QST, level 2, compound via the
  ``tax_l2_compound`` setting); every other setting keeps its default.
- clients: Active, countries mixed, ~5 % tax exempt, ~3 % separate invoices, ~10 % with credit
  (each balance with its opening credit-history line).
- services: ~4 per client; ~75 % Monthly, 20 % Annually, 5 % Quarterly / Semi-Annually /
  Biennially, plus a few One Time / Free ones that must never be invoiced; mostly Active;
  ``next_due_date`` uniform over [as_of - 15 days, as_of + 45 days] and
  ``next_invoice_date = next_due_date``; ~1 % of Active services have a cancellation request.
- addons on ~10 % of services (usually due with their parent); one Annually domain for ~25 %
  of clients (half of them due with one of the client's services); billable items for a few
  clients (mostly ``due_date``, some ``dont_invoice``).
"""

from __future__ import annotations

import random
import time
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date, timedelta

from sqlalchemy import Engine

#: Days before / after ``as_of`` over which next due dates are spread (a 60-day window).
DUE_WINDOW_BEFORE = 15
DUE_WINDOW_AFTER = 45

#: Print a progress line every this many rows of a large table.
PROGRESS_EVERY = 50_000

CURRENCIES = [
    # id, code, prefix, suffix, minor_units, rate, is_default
    (1, "USD", "$", " USD", 2, "1", True),
    (2, "EUR", "€", " EUR", 2, "0.920000", False),
]
USD, EUR = 1, 2

TAX_RULES = [
    # id, level, name, country, state, rate (percent)
    (1, 1, "VAT", "GB", "", "20"),
    (2, 1, "MwSt", "DE", "", "19"),
    (3, 1, "TVA", "FR", "", "20"),
    (4, 1, "BTW", "NL", "", "21"),
    (5, 1, "Sales Tax", "US", "TX", "6.25"),
    (6, 1, "GST", "CA", "", "5"),
    (7, 2, "QST", "CA", "QC", "9.975"),
]

#: Settings rows (name, JSON value); everything else keeps its default (SPEC §2).
SETTINGS = [("tax_l2_compound", "true")]

#: (country, states, currency, cumulative weight out of 100)
COUNTRIES = [
    ("US", ("TX", "CA", "NY", "FL", "WA"), USD, 35),
    ("GB", ("",), USD, 50),
    ("DE", ("",), EUR, 65),
    ("CA", ("QC", "ON", "BC"), USD, 75),
    ("FR", ("",), EUR, 83),
    ("NL", ("",), EUR, 90),
    ("AU", ("NSW", "VIC"), USD, 95),
    ("JP", ("",), USD, 100),
]

PRODUCTS = [
    # id, name, group, module
    (1, "Shared Hosting Starter", "Shared Hosting", "cpanel"),
    (2, "Shared Hosting Plus", "Shared Hosting", "cpanel"),
    (3, "Shared Hosting Pro", "Shared Hosting", "cpanel"),
    (4, "Reseller Hosting", "Reseller", "cpanel"),
    (5, "VPS 1 GB", "VPS", "virtualizor"),
    (6, "VPS 4 GB", "VPS", "virtualizor"),
    (7, "Managed WordPress", "WordPress", "plesk"),
    (8, "Email Hosting", "Email", ""),
    (9, "Backup Storage 100 GB", "Storage", ""),
    (10, "SSL Certificate", "Security", ""),
]
ADDON_NAMES = ("Dedicated IP", "Daily Backups", "Extra Storage 10 GB", "Priority Support")
TLDS = ("com", "net", "org", "io", "de", "co.uk")
FIRST_NAMES = ("Ada", "Alan", "Grace", "Linus", "Margaret", "Ken", "Barbara", "Dennis", "Frances", "Guido")
LAST_NAMES = ("Lovelace", "Turing", "Hopper", "Torvalds", "Hamilton", "Thompson", "Liskov", "Ritchie")

#: (cycle, cumulative weight out of 1000)
CYCLES = [
    ("Monthly", 750),
    ("Annually", 950),
    ("Quarterly", 970),
    ("Semi-Annually", 985),
    ("Biennially", 995),
    ("One Time", 998),  # never invoiced again (SPEC §3)
    ("Free", 1000),
]
#: (status, cumulative weight out of 100)
SERVICE_STATUSES = [("Active", 88), ("Suspended", 93), ("Pending", 96), ("Cancelled", 99), ("Terminated", 100)]
DOMAIN_STATUSES = [("Active", 95), ("Expired", 97), ("Cancelled", 99), ("Pending", 100)]

SERVICE_COLUMNS = (
    "id, client_id, product_id, name, domain, username, status, amount, first_payment_amount, "
    "billing_cycle, payment_method, registration_date, next_due_date, next_invoice_date, due_day, taxed"
)
ADDON_COLUMNS = (
    "id, client_id, service_id, name, status, amount, billing_cycle, payment_method, "
    "registration_date, next_due_date, next_invoice_date, due_day, taxed"
)
DOMAIN_COLUMNS = (
    "id, client_id, domain, type, registrar, registration_period, expiry_date, status, amount, "
    "first_payment_amount, billing_cycle, payment_method, registration_date, next_due_date, "
    "next_invoice_date, due_day, taxed"
)
BILLABLE_COLUMNS = "id, client_id, description, amount, invoice_action, due_date, payment_method, taxed"
CLIENT_COLUMNS = (
    "id, first_name, last_name, company_name, email, address1, city, state, postcode, country, "
    "phone_number, currency_id, status, credit_balance, signup_date, tax_exempt, separate_invoices, "
    "auto_cc_processing"
)

#: Tables whose ``id`` sequence is moved past the copied ids.
SERIAL_TABLES = (
    "currencies", "tax_rules", "products", "clients", "services", "addons", "domains",
    "billable_items", "cancel_requests",
)


class SeedError(RuntimeError):
    """The database cannot be seeded (not PostgreSQL, or not empty)."""


@dataclass(frozen=True)
class SeedSummary:
    clients: int
    services: int
    addons: int
    domains: int
    billable_items: int
    cancel_requests: int
    #: Sum of the credit balances given to clients, as a string ("12345.00").
    credit_total: str
    seconds: float

    @property
    def rows(self) -> int:
        return (self.clients + self.services + self.addons + self.domains + self.billable_items
                + self.cancel_requests)


def _pick(rng: random.Random, table: list, scale: int):
    """The first entry whose cumulative weight exceeds a random draw in [0, scale)."""
    draw = rng.randrange(scale)
    for entry in table:
        if draw < entry[-1]:
            return entry
    return table[-1]  # pragma: no cover - the last weight equals scale


def _price(rng: random.Random, low_cents: int = 499, high_cents: int = 4999) -> str:
    cents = rng.randint(low_cents, high_cents)
    return f"{cents // 100}.{cents % 100:02d}"


class _Progress:
    """Prints ``table: n / total rows (rate rows/s)`` every PROGRESS_EVERY rows, then a summary."""

    def __init__(self, table: str, total: int | None, enabled: bool) -> None:
        self.table, self.total, self.enabled = table, total, enabled
        self.count = 0
        self.started = time.perf_counter()

    def tick(self) -> None:
        self.count += 1
        if self.enabled and self.count % PROGRESS_EVERY == 0 and self.count != self.total:
            self._print(final=False)

    def done(self) -> float:
        if self.enabled:
            self._print(final=True)
        return time.perf_counter() - self.started

    def _print(self, *, final: bool) -> None:
        elapsed = time.perf_counter() - self.started
        rate = self.count / elapsed if elapsed > 0 else 0.0
        of = f" / {self.total:,}" if self.total is not None and not final else ""
        mark = "copied" if final else "sent ..."
        print(f"  {self.table:<16} {self.count:>10,}{of} rows {mark} ({rate:,.0f} rows/s, {elapsed:.1f} s)",
              flush=True)


def _services_per_client(rng: random.Random, clients: int, services: int) -> list[int]:
    """How many services each client has: at least one each (when there are enough), the rest
    spread at random, so the average is ``services / clients`` with a natural spread."""
    counts = [0] * clients
    base = 1 if services >= clients else 0
    if base:
        counts = [1] * clients
    for _ in range(services - base * clients):
        counts[rng.randrange(clients)] += 1
    return counts


#: MySQL/MariaDB: rows per executemany (PyMySQL packs them into statements of up to ~1 MB).
MYSQL_ROWS_PER_INSERT = 5000


class _MySQLCopy:
    """``copy.write_row(row)`` as on psycopg's COPY, as multi-row INSERTs."""

    def __init__(self, cur, table: str, columns: str) -> None:
        names = [c.strip() for c in columns.split(",")]
        self.cur, self.rows = cur, []
        self.statement = f"INSERT INTO {table} ({', '.join(names)}) VALUES ({', '.join(['%s'] * len(names))})"

    def write_row(self, row) -> None:
        self.rows.append(tuple(row))
        if len(self.rows) >= MYSQL_ROWS_PER_INSERT:
            self.flush()

    def flush(self) -> None:
        if self.rows:
            self.cur.executemany(self.statement, self.rows)
            self.rows = []


@contextmanager
def _copy(cur, mysql: bool, table: str, columns: str):
    """COPY ``table`` (``columns``) FROM STDIN, or its MySQL form."""
    if not mysql:
        with cur.copy(f"COPY {table} ({columns}) FROM STDIN") as copy:
            yield copy
        return
    copy = _MySQLCopy(cur, table, columns)
    yield copy
    copy.flush()


def seed(engine: Engine, *, clients: int = 50_000, services: int = 200_000, as_of: date, seed: int = 42,
         progress: bool = True) -> SeedSummary:
    """Fill the EMPTY, migrated PostgreSQL database behind ``engine`` (one transaction).

    Deterministic for a given ``seed``; ids are dense from 1 and every id sequence is set past
    them, so the application's own inserts continue after the seeded rows. Raises ``SeedError``
    if the database is not PostgreSQL or already holds clients or things.
    """
    mysql = engine.dialect.name in ("mysql", "mariadb")
    if engine.dialect.name != "postgresql" and not mysql:
        raise SeedError(f"seeding needs PostgreSQL or MySQL/MariaDB, not {engine.dialect.name}")
    if clients < 1 or services < 0:
        raise SeedError(f"need clients >= 1 and services >= 0 (got {clients}, {services})")
    rng = random.Random(seed)
    started = time.perf_counter()
    window = [as_of + timedelta(days=d) for d in range(-DUE_WINDOW_BEFORE, DUE_WINDOW_AFTER + 1)]
    window_text = [(d.isoformat(), d.day) for d in window]

    def say(message: str) -> None:
        if progress:
            print(message, flush=True)

    raw = engine.raw_connection()
    try:
        conn = raw.driver_connection
        with conn.cursor() as cur:
            cur.execute(
                "SELECT EXISTS (SELECT 1 FROM clients) OR EXISTS (SELECT 1 FROM services) "
                "OR EXISTS (SELECT 1 FROM invoices) OR EXISTS (SELECT 1 FROM currencies)"
            )
            if cur.fetchone()[0]:
                raise SeedError("seed() needs an empty database: it already holds clients, things or invoices")
            # The bench data is disposable: don't wait for the WAL flush on commit.
            if not mysql:
                cur.execute("SET LOCAL synchronous_commit = off")
            say(f"seeding {clients:,} clients / {services:,} services (as of {as_of}, seed {seed})")

            # Reference data.
            with _copy(cur, mysql, "currencies", "id, code, prefix, suffix, minor_units, rate, is_default") as copy:
                for row in CURRENCIES:
                    copy.write_row(row)
            with _copy(cur, mysql, "tax_rules", "id, level, name, country, state, rate") as copy:
                for row in TAX_RULES:
                    copy.write_row(row)
            with _copy(cur, mysql, "settings", "name, value") as copy:
                for row in SETTINGS:
                    copy.write_row(row)
            with _copy(cur, mysql, "products", "id, name, group_name, module") as copy:
                for row in PRODUCTS:
                    copy.write_row(row)

            # Clients: remember what their things need (gateway, signup date).
            gateways: list[str] = [""] * (clients + 1)
            signups: list[str] = [""] * (clients + 1)
            credit_cents = 0
            tick = _Progress("clients", clients, progress)
            with _copy(cur, mysql, "clients", CLIENT_COLUMNS) as copy:
                for cid in range(1, clients + 1):
                    country, states, currency, _ = _pick(rng, COUNTRIES, 100)
                    state = states[rng.randrange(len(states))]
                    credit = "0"
                    if rng.random() < 0.10:
                        cents = rng.choice((500, 500, 1000, 2500, 199))
                        credit_cents += cents
                        credit = f"{cents // 100}.{cents % 100:02d}"
                    signup = as_of - timedelta(days=rng.randint(30, 3000))
                    signups[cid] = signup.isoformat()
                    gateways[cid] = "stripe" if rng.random() < 0.85 else "paypal"
                    company = f"Company {cid} Ltd" if rng.random() < 0.3 else ""
                    copy.write_row((
                        cid, FIRST_NAMES[cid % len(FIRST_NAMES)], LAST_NAMES[cid % len(LAST_NAMES)], company,
                        f"client{cid}@example.test", f"{cid} Main Street", "Springfield", state,
                        f"{10000 + cid % 89999}", country, "", currency, "Active", credit,
                        signups[cid], rng.random() < 0.05, rng.random() < 0.03, False,
                    ))
                    tick.tick()
            tick.done()
            # A balance has its history (SPEC §1; the reconciliation checks they agree).
            cur.execute("INSERT INTO credit_history (client_id, date, description, amount, balance_after, source) "
                        "SELECT id, signup_date, 'Opening balance', credit_balance, credit_balance, 'bench' "
                        "FROM clients WHERE credit_balance > 0")

            # Services, streamed; addons, domains, billable items and cancellation requests are
            # decided alongside (they need the parent's due date) and copied afterwards.
            counts = _services_per_client(rng, clients, services)
            addons: list[tuple] = []
            domains: list[tuple] = []
            billables: list[tuple] = []
            cancels: list[tuple] = []
            sid = 0
            tick = _Progress("services", services, progress)
            with _copy(cur, mysql, "services", SERVICE_COLUMNS) as copy:
                for cid in range(1, clients + 1):
                    gateway = gateways[cid]
                    client_dues: list[int] = []
                    for _ in range(counts[cid - 1]):
                        sid += 1
                        product = PRODUCTS[rng.randrange(len(PRODUCTS))]
                        cycle = _pick(rng, CYCLES, 1000)[0]
                        status = _pick(rng, SERVICE_STATUSES, 100)[0]
                        due_index = rng.randrange(len(window_text))
                        client_dues.append(due_index)
                        due, day = window_text[due_index]
                        amount = _price(rng) if cycle != "Free" else "0.00"
                        method = gateway if rng.random() < 0.95 else ("paypal" if gateway == "stripe" else "stripe")
                        copy.write_row((
                            sid, cid, product[0], product[1], f"site{sid}.example.test", f"user{sid}", status,
                            amount, amount, cycle, method, signups[cid], due, due, day, True,
                        ))
                        tick.tick()
                        if rng.random() < 0.10:
                            addon_index = due_index if rng.random() < 0.9 else rng.randrange(len(window_text))
                            addon_status = status if status != "Active" else (
                                "Active" if rng.random() < 0.97 else "Suspended")
                            addon_due, addon_day = window_text[addon_index]
                            addons.append((
                                len(addons) + 1, cid, sid, ADDON_NAMES[rng.randrange(len(ADDON_NAMES))],
                                addon_status, _price(rng, 100, 999), cycle, method, signups[cid],
                                addon_due, addon_due, addon_day, True,
                            ))
                        if status == "Active" and rng.random() < 0.01:
                            cancels.append((len(cancels) + 1, sid, "End of Billing Period", "bench"))
                    if rng.random() < 0.25:
                        if client_dues and rng.random() < 0.5:
                            domain_index = client_dues[rng.randrange(len(client_dues))]
                        else:
                            domain_index = rng.randrange(len(window_text))
                        domain_due, domain_day = window_text[domain_index]
                        did = len(domains) + 1
                        price = _price(rng, 899, 2999)
                        domains.append((
                            did, cid, f"client{cid}-{did}.{TLDS[did % len(TLDS)]}", "Register", "enom", 1,
                            domain_due, _pick(rng, DOMAIN_STATUSES, 100)[0], price, price, "Annually", gateway,
                            signups[cid], domain_due, domain_due, domain_day, True,
                        ))
                    draw = rng.random()
                    if draw < 0.03:
                        action = "due_date" if draw < 0.02 else "dont_invoice"
                        billables.append((
                            len(billables) + 1, cid, "Consulting (1 hour)", _price(rng, 2500, 12000), action,
                            window_text[rng.randrange(len(window_text))][0], gateway, rng.random() < 0.5,
                        ))
            tick.done()

            for table, columns, rows in (
                ("addons", ADDON_COLUMNS, addons),
                ("domains", DOMAIN_COLUMNS, domains),
                ("billable_items", BILLABLE_COLUMNS, billables),
                ("cancel_requests", "id, service_id, type, reason", cancels),
            ):
                tick = _Progress(table, len(rows), progress)
                with _copy(cur, mysql, table, columns) as copy:
                    for row in rows:
                        copy.write_row(row)
                        tick.tick()
                tick.done()

            for table in () if mysql else SERIAL_TABLES:  # MySQL: AUTO_INCREMENT follows explicit ids
                cur.execute(
                    f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                    f"COALESCE((SELECT max(id) FROM {table}), 1), (SELECT count(*) > 0 FROM {table}))"
                )
        conn.commit()
        # Fresh statistics, so the benchmark's queries are planned for the real row counts.
        analyze_started = time.perf_counter()
        with conn.cursor() as cur:
            if mysql:
                cur.execute("ANALYZE TABLE " + ", ".join(("clients", "services", "addons", "domains",
                                                          "billable_items", "cancel_requests")))
                cur.fetchall()
            else:
                cur.execute("ANALYZE")
        conn.commit()
        say(f"  {'analyze':<16} {time.perf_counter() - analyze_started:>10.1f} s")
    except BaseException:
        raw.driver_connection.rollback()
        raise
    finally:
        raw.close()

    summary = SeedSummary(
        clients=clients, services=sid, addons=len(addons), domains=len(domains),
        billable_items=len(billables), cancel_requests=len(cancels),
        credit_total=f"{credit_cents // 100}.{credit_cents % 100:02d}",
        seconds=time.perf_counter() - started,
    )
    say(f"seeded {summary.rows:,} rows in {summary.seconds:.1f} s "
        f"({summary.rows / summary.seconds:,.0f} rows/s): {summary.clients:,} clients, "
        f"{summary.services:,} services, {summary.addons:,} addons, {summary.domains:,} domains, "
        f"{summary.billable_items:,} billable items, {summary.cancel_requests:,} cancellation requests")
    return summary
