"""The README's first command: `make demo` (`billingworker demo`) bills the demo day on SQLite
with the in-process broker and no server, through the real actors and a worker thread pool."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def test_the_demo_bills_the_day_without_any_server(tmp_path):
    # Given no broker or database server named (a broker URL that could not be reached)
    env = {**os.environ, "BROKER_URL": "redis://127.0.0.1:1/0", "DATABASE_URL": "sqlite:///nowhere/never.sqlite3"}
    cli = Path(sys.executable).with_name("billingworker")
    # When the demo runs
    done = subprocess.run([str(cli), "demo", "--database", str(tmp_path / "demo.sqlite3"),
                           "--mail-dir", str(tmp_path / "mail")], capture_output=True, text=True, timeout=120,
                          env=env, cwd=tmp_path)
    # Then it invoiced the demo clients on its own database and wrote their emails
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Totals: EUR 336.26, GBP 67.77, USD 156.77" in done.stdout
    assert len(list((tmp_path / "mail").glob("*.eml"))) == 11
