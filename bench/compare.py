"""Benchmark: our generation beside the reference kernel, in one run, on the same PostgreSQL server.

A thin driver over two programs, each on a database of its own on the same server:

- **ours**: ``python -m bench.generate_due_invoices`` (what ``make bench`` runs: recreate, migrate
  and seed 50,000 clients / 200,000 services, generate one day through the domain code with two
  worker processes, check the books), on ``billingworker_bench_compare``;
- **the kernel**: ``../shared/perf/bench_kernel.py --variants set_based --horizon-days 33`` (hand-written
  set-based SQL over 50,000 clients / 200,000 services of its own schema, about 110,000 items: the
  volume ours bills), run from where it lives, on ``billingworker_bench_kernel`` (its seed table is
  built once and reused; every kernel run restores its services from it). Its runs bracket ours:
  half of them before, the rest after, so that a change of load weighs on both sides alike.

Then prints both items/s and the ratio ours / kernel (a ratio holds on a noisy machine, a time does
not), with our statements per client and peak RSS. Run from the repository root::

    .venv/bin/python -m bench.compare                         # what ``make bench-compare`` runs
    .venv/bin/python -m bench.compare --kernel-runs 5 -- --no-email   # after ``--``: options for ours

Exit status 1 when either side fails (our correctness checks included); times are never asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
from sqlalchemy.engine import make_url

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_URL = os.environ.get(
    "BENCH_COMPARE_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/billingworker_bench_compare")
DEFAULT_KERNEL = os.environ.get("BENCH_KERNEL", str(ROOT.parent / "shared" / "perf" / "bench_kernel.py"))
#: The kernel's database (its ``PERF_PG_DB``); the kernel always connects as postgres@127.0.0.1:5432.
DEFAULT_KERNEL_DATABASE = os.environ.get("BENCH_KERNEL_DATABASE", "billingworker_bench_kernel")
#: Where the kernel database is created from, as ``bench.generate_due_invoices`` creates ours.
ADMIN_DSN = "host=127.0.0.1 port=5432 dbname=test user=postgres"
KERNEL_DSN = "host=127.0.0.1 port=5432 user=postgres dbname={}"
#: The kernel's fixed volume (``common.py``): a seed table of this size is reused as it is.
KERNEL_CLIENTS, KERNEL_SERVICES = 50_000, 200_000
#: Databases this driver never touches (nor any whose name says test).
FORBIDDEN = {"test", "postgres", "template0", "template1"}

#: A figure line of ``bench.generate_due_invoices``: ``  <label>  <number>  <note>``.
FIGURE = re.compile(r"^  (?P<label>\S.*?)\s+(?P<value>-?[\d,]+(?:\.\d+)?)(?:\s\s(?P<note>.*))?$")


def _database_of_its_own(name: str | None, what: str) -> str:
    """``name``, unless it is a server's own database or a test database (refused)."""
    if not name or name in FORBIDDEN or "test" in name or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
        raise SystemExit(f"refusing {what} database {name!r}: give it a database of its own (never a test one)")
    return name


@dataclass
class Side:
    ok: bool = False
    figures: dict[str, float] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)
    runs: list[dict] = field(default_factory=list)


def _run(cmd: list[str], on_line: Callable[[str], None], *, env: dict[str, str] | None = None,
         cwd: Path | str = ROOT) -> int:
    """Run ``cmd`` (stderr into stdout), hand each output line to ``on_line``; the exit status."""
    with subprocess.Popen(cmd, cwd=cwd, env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            on_line(line.rstrip("\n"))
    return proc.returncode


# --------------------------------------------------------------------------- ours

def run_ours(url: str, extra: list[str]) -> Side:
    """``bench.generate_due_invoices`` as ``make bench`` runs it, on ``url``; its printed figures parsed."""
    side = Side()
    cmd = [sys.executable, "-m", "bench.generate_due_invoices", "--database-url", url, *extra]
    print(f"\n== ours: {' '.join(cmd[1:])}", flush=True)
    in_figures = False

    def on_line(line: str) -> None:
        nonlocal in_figures
        print(f"  ours | {line}", flush=True)
        if line.startswith("generate due invoices, as of"):
            in_figures = True
        elif not line.startswith("  "):
            in_figures = False
        elif in_figures and (match := FIGURE.match(line)):
            label = match["label"].strip()
            if label not in side.figures:
                side.figures[label] = float(match["value"].replace(",", ""))
                side.notes[label] = (match["note"] or "").strip()

    status = _run(cmd, on_line)
    side.ok = status == 0
    if status:
        print(f"ours: exit status {status} (a failed check, or it could not run)", flush=True)
    return side


# --------------------------------------------------------------------------- the kernel

def _kernel_seeded(database: str) -> bool:
    """Create the kernel database if absent; True when its seed tables are there and full."""
    with psycopg.connect(ADMIN_DSN, autocommit=True) as admin:
        if admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,)).fetchone() is None:
            admin.execute(f'CREATE DATABASE "{database}"')
            print(f"kernel: database {database} created", flush=True)
            return False
    with psycopg.connect(KERNEL_DSN.format(database)) as conn:
        if conn.execute("SELECT to_regclass('services_seed') IS NULL OR to_regclass('clients') IS NULL"
                        " OR to_regclass('k_invoice_items') IS NULL").fetchone()[0]:
            return False
        seeded, clients = conn.execute(
            "SELECT (SELECT count(*) FROM services_seed), (SELECT count(*) FROM clients)").fetchone()
    return seeded == KERNEL_SERVICES and clients == KERNEL_CLIENTS


def run_kernel(kernel: Path, database: str, *, runs: int, horizon_days: int, setup: bool) -> Side:
    """The kernel's ``set_based`` variant, ``runs`` times, run from where it lives (never copied here)."""
    side = Side()
    reused = not setup and _kernel_seeded(database)
    records: list[dict] = []

    def on_line(line: str) -> None:
        try:
            record = json.loads(line)
        except ValueError:
            print(f"  kernel | {line}", flush=True)
            return
        if record.get("kind") == "kernel":
            records.append(record)
            checksum = record["checksum"]
            print(f"  kernel | {record['seconds']:.2f} s, {checksum['items']:,} items on "
                  f"{checksum['invoices']:,} invoices, {record['items_s']:,.0f} items/s"
                  f"{'' if record['complete'] else ' (INCOMPLETE)'}", flush=True)

    with tempfile.TemporaryDirectory(prefix="bench-compare-") as tmp:  # the kernel writes its --out there
        cmd = [sys.executable, str(kernel), "--variants", "set_based", "--runs", str(runs),
               "--horizon-days", str(horizon_days), "--out", str(Path(tmp) / "kernel.jsonl"),
               "--tag", "bench-compare", *([] if reused else ["--setup"])]
        print(f"\n== kernel: PERF_PG_DB={database} {' '.join(cmd[1:])}"
              f"{'  (its seed table reused)' if reused else ''}", flush=True)
        status = _run(cmd, on_line, env={"PERF_PG_DB": database}, cwd=tmp)
    if status:
        print(f"kernel: exit status {status}", flush=True)
    side.ok = status == 0 and bool(records) and all(r["complete"] for r in records)
    side.runs = records
    return side


def kernel_figures(sides: list[Side]) -> Side:
    """The kernel runs of every call as one side: the median items/s, and the range."""
    records = [r for side in sides for r in side.runs]
    total = Side(ok=bool(sides) and all(side.ok for side in sides), runs=records)
    if records:
        rates = [r["items_s"] for r in records]
        total.figures = {"items/s": statistics.median(rates), "min": min(rates), "max": max(rates),
                         "items": records[0]["checksum"]["items"], "runs": len(records)}
    return total


# --------------------------------------------------------------------------- main

def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(
        prog="python -m bench.compare",
        description="Our generation and the reference kernel side by side: items/s and the ratio. "
                    "Arguments after -- go to bench.generate_due_invoices.")
    parser.add_argument("--database-url", default=DEFAULT_URL,
                        help="our bench database, DROPPED and recreated (default $BENCH_COMPARE_DATABASE_URL "
                             "or %(default)s)")
    parser.add_argument("--kernel", type=Path, default=Path(DEFAULT_KERNEL),
                        help="the kernel script (default $BENCH_KERNEL or %(default)s)")
    parser.add_argument("--kernel-database", default=DEFAULT_KERNEL_DATABASE,
                        help="the kernel's database on 127.0.0.1:5432, created if absent "
                             "(default $BENCH_KERNEL_DATABASE or %(default)s)")
    parser.add_argument("--kernel-runs", type=int, default=3, help="kernel runs; the median counts (default 3)")
    parser.add_argument("--horizon-days", type=int, default=33,
                        help="the kernel bills what is due within this many days (default 33: ~110,000 "
                             "items, the volume ours bills)")
    parser.add_argument("--kernel-setup", action="store_true",
                        help="rebuild the kernel's seed table even when it is already there")
    argv = sys.argv[1:] if argv is None else argv
    extra: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, extra = argv[:cut], argv[cut + 1:]
    args = parser.parse_args(argv)
    if args.kernel_runs < 1:
        parser.error("--kernel-runs must be at least 1")
    return args, extra


def _load_average() -> str:
    try:
        one, five, _ = os.getloadavg()
    except OSError:
        return "n/a"
    return f"{one:.2f} / {five:.2f}"


def _row(label: str, value: str, note: str = "") -> None:
    print(f"  {label:<22} {value:>10}  {note}".rstrip(), flush=True)


def print_summary(ours: Side, kernel: Side, *, seconds: float, load_before: str) -> None:
    mine, theirs = ours.figures.get("items/s"), kernel.figures.get("items/s")
    print("\nbench-compare: ours against the reference kernel (same PostgreSQL server, in turn)")
    if mine is not None:
        _row("ours items/s", f"{mine:,.0f}", f"{ours.figures.get('items invoiced', 0):,.0f} items in "
             f"{ours.figures.get('seconds', float('nan')):.2f} s of generation, all the rules")
    else:
        _row("ours items/s", "n/a", "bench.generate_due_invoices printed no figures")
    if theirs is not None:
        _row("kernel items/s", f"{theirs:,.0f}", f"median of {kernel.figures['runs']} run(s) "
             f"({kernel.figures['min']:,.0f} to {kernel.figures['max']:,.0f}); {kernel.figures['items']:,.0f} "
             "items, three set-based statements")
    else:
        _row("kernel items/s", "n/a", "the kernel printed no run")
    if mine is not None and theirs:
        _row("ratio ours / kernel", f"{mine / theirs:.2f}x",
             f"{mine / kernel.figures['max']:.2f}x to {mine / kernel.figures['min']:.2f}x over the kernel's runs "
             "(aim: 0.5x or more)")
    for label in ("statements per client", "peak RSS MB"):
        if label in ours.figures:
            _row(label, f"{ours.figures[label]:,.2f}" if label.startswith("statements") else
                 f"{ours.figures[label]:,.1f}", ours.notes.get(label, ""))
    _row("our checks", "ok" if ours.ok else "FAIL", "" if ours.ok else "see the ours | lines above")
    _row("kernel", "ok" if kernel.ok else "FAIL", "" if kernel.ok else "see the kernel | lines above")
    _row("machine", f"{os.cpu_count()} cores", f"load average (1 / 5 min) {load_before} before, "
         f"{_load_average()} after: other work on the machine slows both sides")
    _row("wall time", f"{seconds:,.1f} s", "the whole comparison, seeding included")


def main(argv: list[str] | None = None) -> int:
    args, extra = parse_args(argv)
    ours_database = _database_of_its_own(make_url(args.database_url).database, "our")
    kernel_database = _database_of_its_own(args.kernel_database, "the kernel's")
    if not args.kernel.is_file():
        raise SystemExit(f"the reference kernel {args.kernel} is not there: give --kernel or $BENCH_KERNEL")
    if ours_database == kernel_database:
        raise SystemExit("ours and the kernel need two databases: give --kernel-database another name")
    started, load_before = time.perf_counter(), _load_average()
    # The kernel's runs bracket ours (half before, half after), so that a change of load on the
    # machine during the comparison weighs on both sides alike.
    before = (args.kernel_runs + 1) // 2
    options = {"horizon_days": args.horizon_days}
    kernel = [run_kernel(args.kernel, kernel_database, runs=before, setup=args.kernel_setup, **options)]
    ours = run_ours(args.database_url, extra)
    if args.kernel_runs > before and kernel[0].ok:
        kernel.append(run_kernel(args.kernel, kernel_database, runs=args.kernel_runs - before, setup=False,
                                 **options))
    both = kernel_figures(kernel)
    print_summary(ours, both, seconds=time.perf_counter() - started, load_before=load_before)
    return 0 if ours.ok and both.ok else 1


if __name__ == "__main__":
    sys.exit(main())
