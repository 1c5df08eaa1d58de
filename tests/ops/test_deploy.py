"""What ships under deploy/ works with what the code exports and runs.

- Every metric (and label) the Grafana dashboard and the alert rules name is one our exporters
  produce: ``billingworker metrics --once`` scraped against rows in the database and messages in
  a real Redis, and Dramatiq's Prometheus middleware (the worker's, ``worker_metrics()``)
  exercised in a process of its own. Renaming a metric or a label value fails here.
- The dashboard is an importable dashboard; the rules pass ``promtool check rules`` and their
  unit tests (``deploy/prometheus/alerts_test.yml``: each alert firing and not firing).
- The Procfile runs under honcho as written, and the systemd units run the same commands.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections import defaultdict
from datetime import date
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from billingworker.db import unit_of_work
from billingworker.domain.models import DailyRun, Setting
from billingworker.domain.reports.reconciliation import reconcile, record_reconciliation

from .conftest import REDIS_URL, add_parked_client, add_run, cli, db_url, kill, message

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
DASHBOARD = DEPLOY / "grafana" / "billingworker.json"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
ALERT_TESTS = DEPLOY / "prometheus" / "alerts_test.yml"
PROMETHEUS_CONFIG = DEPLOY / "prometheus" / "prometheus.yml"
SYSTEMD = DEPLOY / "systemd"
VENV_BIN = Path(sys.executable).parent

# A metric of ours in a PromQL expression (Grafana's $__rate_interval and the like never match).
METRIC = re.compile(r"\b(?:billingworker|dramatiq)_[a-z0-9_]+\b")
SELECTOR = re.compile(r"\b((?:billingworker|dramatiq)_[a-z0-9_]+)\s*\{([^}]*)\}")
MATCHER = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*"([^"]*)"')
GROUPING = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")
# Labels Prometheus itself adds to every scraped series, and the histogram bucket label.
SCRAPE_LABELS = {"instance", "job", "le"}


# --- what the exporters produce ----------------------------------------------------------------

class Exposition:
    """Sample names, their label names and the label values seen, from Prometheus text."""

    def __init__(self) -> None:
        self.labels: dict[str, set[str]] = defaultdict(set)
        self.values: dict[tuple[str, str], set[str]] = defaultdict(set)

    def add(self, text: str) -> Exposition:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                self.labels[sample.name].update(sample.labels)
                for label, value in sample.labels.items():
                    self.values[sample.name, label].add(value)
        return self

    def problems(self, expr: str) -> list[str]:
        """What ``expr`` names that is not produced: metrics, labels, label values."""
        found = []
        names = set(METRIC.findall(expr))
        if not names:
            found.append(f"names no billingworker_/dramatiq_ metric: {expr}")
        for name in sorted(names - set(self.labels)):
            found.append(f"metric {name} is not exported")
        for name, matchers in SELECTOR.findall(expr):
            for label, op, value in MATCHER.findall(matchers):
                if label not in self.labels.get(name, set()):
                    found.append(f"{name} has no label {label}")
                elif op == "=" and value not in self.values[name, label]:
                    found.append(f"{name}{{{label}={value!r}}} is never exported "
                                 f"(values: {sorted(self.values[name, label])})")
        labels_of_expr = set().union(*(self.labels.get(n, set()) for n in names)) | SCRAPE_LABELS
        for grouping in GROUPING.findall(expr):
            for label in filter(None, (part.strip() for part in grouping.split(","))):
                if label not in labels_of_expr:
                    found.append(f"grouping label {label} is on none of {sorted(names)}")
        return found


def ops_exposition(engine) -> str:
    """``billingworker metrics --once`` with every gauge present: a waiting, a delayed and a dead
    message in Redis, a finished run with its tasks, a parked client, the daily_run_time setting."""
    return cli(engine, "metrics", "--once").output


DRAMATIQ_SCRAPE = textwrap.dedent("""
    import os, sys
    os.environ["dramatiq_prom_db"] = sys.argv[1]
    os.environ["PROMETHEUS_PORT"] = "9191"
    from dramatiq import Message
    from billingworker.ops.metrics import worker_metrics

    middleware = worker_metrics()  # the worker's middleware, as broker.make_broker adds it
    middleware.after_process_boot(None)
    msg = Message(queue_name="billing", actor_name="apply_payment", args=(), kwargs={}, options={})
    middleware.before_delay_message(None, msg)
    middleware.before_process_message(None, msg)
    middleware.after_process_message(None, msg, exception=RuntimeError("boom"))
    middleware.after_enqueue(None, msg.copy(options={"retries": 1}), 1000)
    middleware.after_nack(None, msg)

    from prometheus_client import CollectorRegistry, generate_latest, multiprocess
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=sys.argv[1])
    sys.stdout.write(generate_latest(registry).decode())
""")


def dramatiq_exposition(tmp_path: Path) -> str:
    """What the workers' exposition process serves of Dramatiq's metrics, after one message went
    through every hook (a process of its own: the middleware sets PROMETHEUS_MULTIPROC_DIR)."""
    folder = tmp_path / "prom"
    folder.mkdir()
    done = subprocess.run([sys.executable, "-c", DRAMATIQ_SCRAPE, str(folder)], capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.fixture
def exported(engine, redis_broker, tmp_path) -> Exposition:
    kill(redis_broker, message())
    redis_broker.enqueue(message(age_s=30))
    redis_broker.enqueue(message("deliver_email", "emails"), delay=60_000)
    run_id = add_run(engine, status="failed", failures=1, invoices=3)
    add_parked_client(engine)
    with unit_of_work(engine) as session:
        session.add(Setting(name="daily_run_time", value='"09:00"'))
        # The reconciliation the run recorded when it finished (billingworker_books_clean...)
        record_reconciliation(session, run_id, reconcile(session, date(2026, 1, 10)))
        session.commit()
    text = ops_exposition(engine)
    assert "billingworker_daily_run_due_succeeded" in text, text
    return Exposition().add(text).add(dramatiq_exposition(tmp_path))


# --- the dashboard and the rules ---------------------------------------------------------------

def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def dashboard_exprs() -> list[tuple[str, str]]:
    return [(panel["title"], target["expr"]) for panel in dashboard()["panels"]
            for target in panel.get("targets", [])]


def alert_rules() -> list[dict]:
    return [rule for group in yaml.safe_load(ALERTS.read_text())["groups"] for rule in group["rules"]]


def test_every_metric_of_the_dashboard_and_the_alerts_is_exported(exported):
    exprs = dashboard_exprs() + [(rule["alert"], rule["expr"]) for rule in alert_rules()]

    problems = [f"{where}: {problem}" for where, expr in exprs for problem in exported.problems(expr)]

    assert problems == []
    used = {name for _, expr in exprs for name in METRIC.findall(expr)}
    # The panels the operator asked for are there (a name dropped from the dashboard fails too).
    assert {"billingworker_queue_messages", "billingworker_dead_letters",
            "billingworker_queue_oldest_message_age_seconds", "billingworker_live_workers",
            "billingworker_daily_run_last_status", "billingworker_daily_run_last_count",
            "billingworker_daily_run_due_succeeded", "billingworker_parked_clients", "dramatiq_messages_total",
            "dramatiq_message_errors_total", "dramatiq_message_duration_milliseconds_bucket"} <= used


def test_the_check_catches_a_renamed_metric_a_missing_label_and_an_unknown_value(exported):
    assert exported.problems("max(billingworker_parked_client)") == [
        "metric billingworker_parked_client is not exported"]
    assert exported.problems('max by (queue) (billingworker_dead_letters{kind="x"})') == [
        "billingworker_dead_letters has no label kind"]
    assert exported.problems('billingworker_queue_messages{state="queued"}') == [
        "billingworker_queue_messages{state='queued'} is never exported "
        "(values: ['delayed', 'in_progress', 'waiting'])"]
    assert exported.problems("sum by (actor) (rate(dramatiq_messages_total[5m]))") == [
        "grouping label actor is on none of ['dramatiq_messages_total']"]
    assert exported.problems("sum(rate(dramatiq_messages_total[5m]))") == []


def test_the_dashboard_is_an_importable_grafana_dashboard():
    board = dashboard()

    assert board["uid"] == "billingworker" and board["title"]
    assert [i["name"] for i in board["__inputs"]] == ["DS_PROMETHEUS"]
    panels = board["panels"]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    graphs = [p for p in panels if p["type"] != "row"]
    assert len(graphs) >= 15
    for panel in graphs:
        assert panel["title"] and panel["targets"], panel
        assert panel["datasource"] == {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}, panel["title"]
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24, panel["title"]
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]
        for target in panel["targets"]:
            assert target["expr"].strip() and target["datasource"]["uid"] == "${DS_PROMETHEUS}"


def promtool(*args: str) -> subprocess.CompletedProcess:
    exe = shutil.which("promtool")
    if exe is None:
        raise RuntimeError("promtool is not installed: apt-get install -y prometheus (Debian's, for promtool)")
    return subprocess.run([exe, *args], capture_output=True, text=True, timeout=120, check=False)


def test_promtool_accepts_the_rules_and_the_example_configuration():
    for args in (("check", "rules", str(ALERTS)), ("check", "config", str(PROMETHEUS_CONFIG))):
        done = promtool(*args)
        assert done.returncode == 0, done.stdout + done.stderr


def test_every_dashboard_expression_is_valid_promql(tmp_path):
    # promtool parses recording rules: one per panel target, Grafana's variables given a value.
    rules = [{"record": f"dashboard:target_{n}", "expr": expr.replace("$__rate_interval", "5m")}
             for n, (_, expr) in enumerate(dashboard_exprs())]
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))

    done = promtool("check", "rules", str(path))

    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(rules)} rules found" in done.stdout


def test_each_alert_fires_and_stays_quiet_in_promtool_unit_tests():
    tests = yaml.safe_load(ALERT_TESTS.read_text())["tests"]
    cases = [case for test in tests for case in test["alert_rule_test"]]

    done = promtool("test", "rules", str(ALERT_TESTS))

    assert done.returncode == 0, done.stdout + done.stderr
    # Every alert is shown both firing and quiet.
    for rule in alert_rules():
        mine = [case for case in cases if case["alertname"] == rule["alert"]]
        assert any(case["exp_alerts"] for case in mine), f"{rule['alert']} is never shown firing"
        assert any(not case["exp_alerts"] for case in mine), f"{rule['alert']} is never shown quiet"


# --- running the processes: honcho and systemd ---------------------------------------------------

def procfile() -> dict[str, str]:
    lines = (ROOT / "Procfile").read_text().splitlines()
    return dict(line.split(":", 1) for line in lines if line.strip() and not line.startswith("#"))


def split_env(command: str) -> tuple[dict[str, str], list[str]]:
    """``env A=1 prog args`` -> ({A: 1}, [prog, args...])."""
    argv = shlex.split(command)
    env = {}
    if argv and argv[0] == "env":
        argv.pop(0)
        while argv and "=" in argv[0]:
            key, value = argv.pop(0).split("=", 1)
            env[key] = value
    return env, argv


def unit(name: str) -> dict[str, dict[str, list[str]]]:
    """A unit file as {section: {key: [values...]}}: systemd keys repeat (Environment=)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] = {}
    for line in (SYSTEMD / f"billingworker-{name}.service").read_text().splitlines():
        line = line.strip()
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
        elif line and not line.startswith(("#", ";")):
            key, value = line.split("=", 1)
            current.setdefault(key.strip(), []).append(value.strip())
    return sections


def test_every_procfile_process_has_a_systemd_unit_running_the_same_command():
    processes = procfile()
    units = sorted(p.name.removeprefix("billingworker-").removesuffix(".service") for p in SYSTEMD.glob("*.service"))

    assert units == sorted(processes)
    for name, command in processes.items():
        env, argv = split_env(command)
        service = unit(name)["Service"]
        [exec_start] = [shlex.split(line) for line in service["ExecStart"]]
        assert Path(exec_start[0]).name == argv[0] and exec_start[1:] == argv[1:], name
        unit_env = dict(e.split("=", 1) for e in service.get("Environment", []))
        assert env.items() <= unit_env.items(), name


def test_systemd_analyze_verifies_the_units(tmp_path):
    exe = shutil.which("systemd-analyze")
    if exe is None:
        raise RuntimeError("systemd-analyze is not installed: apt-get install -y systemd")
    for path in SYSTEMD.glob("*.service"):
        # The units name the installation's venv; point them at this one so the commands exist.
        text = path.read_text().replace("/opt/billingworker/.venv/bin", str(VENV_BIN))
        (tmp_path / path.name).write_text(text)

    done = subprocess.run([exe, "verify", *sorted(map(str, tmp_path.glob("*.service")))], capture_output=True,
                          text=True, timeout=120, check=False)

    assert done.returncode == 0 and done.stderr.strip() == "", done.stderr


def honcho(*args: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([str(VENV_BIN / "honcho"), "--no-colour", "-f", str(ROOT / "Procfile"),
                             "-d", str(ROOT), *args], **kwargs)


def test_honcho_accepts_the_procfile():
    done = honcho("check", stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    assert done.wait(timeout=60) == 0, done.stdout.read()


def test_honcho_runs_the_procfile_scheduler_as_written(pg_engine, redis_client, tmp_path):
    # Given a database whose daily run was due at midnight, and no run yet
    with unit_of_work(pg_engine) as session:
        session.add(Setting(name="daily_run_time", value='"00:00"'))
        session.commit()
    env = {**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}", "DATABASE_URL": db_url(pg_engine),
           "BROKER_URL": REDIS_URL, "LOG_LEVEL": "INFO", "LOG_FORMAT": "text"}
    # honcho reads .env of the app root by default; an empty one of ours keeps a developer's out.
    (tmp_path / ".env").write_text("")

    # When `honcho start scheduler` runs the Procfile's line
    proc = honcho("-e", str(tmp_path / ".env"), "start", "scheduler", env=env, stdout=subprocess.PIPE,
                  stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        started = None
        deadline = time.monotonic() + 90
        while started is None and time.monotonic() < deadline and proc.poll() is None:
            with unit_of_work(pg_engine) as session:
                started = session.query(DailyRun).filter_by(trigger="scheduler").first()
            time.sleep(0.5)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        output = proc.communicate(timeout=60)[0]

    # Then the scheduler honcho started fired today's run
    assert started is not None, output
    assert "scheduler.1 started" in output, output
