"""Benchmark: the time to log one hostile value, before and after linear masking.

The value is what issue 9 found: ``'password'`` repeated (12,000 times = 96 KB; 131,072 times =
1 MB), logged as a refused value is (``job adjust_credit message m-1 refused: <value>``) through
the handler ``configure_logging()`` installs (JSON lines, here to a null stream).

- **before**: ``src/billingworker/ops/logs.py`` as it was before linear masking (``git show
  REV:...``; REV is ``--before-rev``, by default the parent of the commit that added
  ``domain/redaction.py``, or HEAD while that is uncommitted), loaded into a module of its own
  from a temporary file; it runs in a child process, stopped after ``--before-timeout`` seconds
  (its patterns backtrack quadratically: 1 MB takes about an hour).
- **after**: the working tree's ``billingworker.ops.logs``.

Run from the repository root::

    .venv/bin/python -m bench.log_masking                       # before stopped after 120 s
    .venv/bin/python -m bench.log_masking --before-timeout 0    # wait for the old code, however long

Times are printed, never asserted. The exit status is 1 when a correctness check fails: after,
the message must be bounded (``MAX_MESSAGE``), give the value's length and quote at most
``MAX_ARGUMENT`` characters of it.
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import json
import logging
import multiprocessing
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType

if __package__ in (None, ""):  # run as a script: make the package importable from the source tree
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

ROOT = Path(__file__).resolve().parent.parent
LOGS_PATH = "src/billingworker/ops/logs.py"
#: The module that brought linear masking: the "before" is the commit before the one adding it.
REDACTION_PATH = "src/billingworker/domain/redaction.py"
#: (label, repeats of 'password')
SIZES = [("96 KB", 12_000), ("1 MB", 131_072)]


def git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, check=True, capture_output=True, text=True).stdout


def before_revision() -> str:
    """The parent of the commit that added ``domain/redaction.py``; HEAD while it is uncommitted."""
    added = git("log", "--diff-filter=A", "--format=%H", "--", REDACTION_PATH).split()
    return f"{added[-1]}^" if added else "HEAD"


def load_before(revision: str) -> ModuleType:
    """``ops/logs.py`` at ``revision``, loaded from a temporary copy (the working tree is untouched)."""
    source = git("show", f"{revision}:{LOGS_PATH}")
    directory = Path(tempfile.mkdtemp(prefix="logs_before_"))
    path = directory / "logs_before.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("logs_before", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_after() -> ModuleType:
    from billingworker.ops import logs

    return logs


def time_one(module: ModuleType, repeats: int) -> tuple[float, str]:
    """Seconds to log the value once through the module's handler, and the JSON line written."""
    stream = io.StringIO()
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        module.configure_logging(logging.INFO, fmt="json", stream=stream)
        value = "password" * repeats
        log = logging.getLogger("billingworker.jobs")
        started = time.perf_counter()
        log.warning("job %s message %s refused: %s", "adjust_credit", "m-1", value)
        elapsed = time.perf_counter() - started
    finally:
        root.handlers[:], _ = saved
        root.setLevel(saved[1])
    return elapsed, stream.getvalue()


def _child(revision: str, repeats: int, results) -> None:
    elapsed, line = time_one(load_before(revision), repeats)
    results.put((elapsed, len(line)))


def time_before(revision: str, repeats: int, timeout: float) -> float | None:
    """Seconds the old code takes, in a child process; None if stopped after ``timeout`` (0: no limit)."""
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    child = context.Process(target=_child, args=(revision, repeats, results))
    child.start()
    child.join(timeout or None)
    if child.is_alive():
        child.terminate()
        child.join()
        return None
    if child.exitcode != 0:
        raise RuntimeError(f"the old code's process ended with status {child.exitcode}")
    return results.get(timeout=10)[0]


def check_after(line: str, repeats: int, max_message: int, max_argument: int) -> list[str]:
    problems = []
    data = json.loads(line)
    if len(data["message"]) > max_message:
        problems.append(f"message of {len(data['message'])} characters (more than {max_message})")
    if f"({len('password') * repeats} characters)" not in data["message"]:
        problems.append("the message does not give the value's length")
    if line.count("password") * len("password") > max_argument:
        problems.append("the value is shown beyond its cut")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before-timeout", type=float, default=120.0,
                        help="stop the old code after this many seconds per size (0: no limit; default 120)")
    parser.add_argument("--repeat", type=int, default=5, help="runs of the new code per size (the best is shown)")
    parser.add_argument("--no-before", action="store_true", help="time the new code only")
    parser.add_argument("--before-rev", default=None,
                        help="the git revision of the old code (default: the commit before domain/redaction.py)")
    args = parser.parse_args(argv)
    revision = args.before_rev or before_revision()
    if not args.no_before:
        print(f"before: {LOGS_PATH} at {git('rev-parse', '--short', revision).strip()}; after: the working tree")

    after = load_after()
    problems: list[str] = []
    print(f"{'value':<8} {'before':>14} {'after':>12} {'line after':>12}")
    for label, repeats in SIZES:
        best, line = min(time_one(after, repeats) for _ in range(args.repeat))
        problems += [f"{label}: {p}" for p in check_after(line.strip(), repeats, after.MAX_MESSAGE, after.MAX_ARGUMENT)]
        if args.no_before:
            before = "-"
        else:
            seconds = time_before(revision, repeats, args.before_timeout)
            before = f"> {args.before_timeout:.0f} s (stopped)" if seconds is None else f"{seconds:.3f} s"
        print(f"{label:<8} {before:>14} {best * 1000:>9.3f} ms {len(line.strip()):>7} chars", flush=True)
    for problem in problems:
        print(f"FAILED: {problem}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
