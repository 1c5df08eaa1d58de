"""Database servers of a test's own, on free loopback ports, for tests that crash the database
under a worker (the shared servers on 5432 and 3306 are never stopped by a test).

``PostgresServer`` runs ``initdb`` and ``pg_ctl`` (as the ``postgres`` user when the tests run as
root, which initdb refuses); ``MariaDBServer`` runs ``mariadb-install-db`` and ``mariadbd``. Both
keep their files in a temporary folder, removed by ``close``. ``crash`` stops the server the way
a power cut or an OOM kill would (no checkpoint, every connection dropped: recovery on the next
start) and ``start`` brings it back on the same port with the same data.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import create_engine, text

from tests.redis_server import free_port

#: Seconds a starting server may take to answer (MariaDB's crash recovery included).
START_TIMEOUT = 60.0
#: The database each server is given for the worker.
DATABASE = "billing"
#: The user MariaDB's files and process belong to: root when the tests run as root (CI), else ours.
_MARIADB_USER = pwd.getpwuid(os.geteuid()).pw_name


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def _create_database(admin_url: str, quoted_name: str) -> None:
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f"CREATE DATABASE {quoted_name}"))
    finally:
        admin.dispose()


def _postgres_bin(name: str) -> str:
    found = shutil.which(name)
    if found:
        return found
    try:
        bindir = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        bindir = ""
    if bindir and (Path(bindir) / name).exists():
        return str(Path(bindir) / name)
    raise RuntimeError(f"{name} is not installed: the database-crash tests start a PostgreSQL server of their "
                       "own (apt-get install postgresql)")


@dataclass
class PostgresServer:
    """A PostgreSQL cluster of the test's own on 127.0.0.1:``port`` (trust authentication)."""

    port: int
    folder: Path

    @property
    def data(self) -> Path:
        return self.folder / "data"

    @classmethod
    def create(cls) -> PostgresServer:
        server = cls(free_port(), Path(tempfile.mkdtemp(prefix="billingworker-pg-")))
        try:
            if os.geteuid() == 0:  # initdb refuses root: the cluster is the postgres user's
                shutil.chown(server.folder, "postgres", "postgres")
            server._run(_postgres_bin("initdb"), "-D", str(server.data), "-A", "trust", "-U", "postgres",
                        "--no-sync", "-E", "UTF8", "--locale", "C")
            server.start()
            _create_database(server.url("postgres"), f'"{DATABASE}"')
        except BaseException:
            server.close()
            raise
        return server

    def url(self, database: str = DATABASE) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def _run(self, *command: str) -> str:
        if os.geteuid() == 0:  # initdb and postgres refuse to run as root
            command = ("runuser", "-u", "postgres", "--", *command)
        done = subprocess.run(command, capture_output=True, text=True, timeout=START_TIMEOUT + 30)
        if done.returncode:
            raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}):\n{done.stdout}{done.stderr}\n"
                               f"{self.log()}")
        return done.stdout

    def log(self) -> str:
        path = self.folder / "server.log"
        return path.read_text(errors="replace")[-5000:] if path.exists() else ""

    def start(self) -> None:
        options = (f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 -c fsync=off "
                   "-c max_connections=100")
        self._run(_postgres_bin("pg_ctl"), "-D", str(self.data), "-l", str(self.folder / "server.log"), "-o",
                  options, "-w", "-t", str(int(START_TIMEOUT)), "start")

    def crash(self) -> None:
        """Stop at once, as a crash would: every backend dropped, no checkpoint (the next start
        replays the write-ahead log)."""
        self._run(_postgres_bin("pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop")

    def close(self) -> None:
        if (self.data / "postmaster.pid").exists():
            try:
                self._run(_postgres_bin("pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop")
            except RuntimeError:
                pass
        shutil.rmtree(self.folder, ignore_errors=True)


@dataclass
class MariaDBServer:
    """A MariaDB server of the test's own on 127.0.0.1:``port`` (``root`` with no password)."""

    port: int
    folder: Path
    proc: subprocess.Popen | None = field(default=None, repr=False)

    @property
    def socket_path(self) -> Path:
        return self.folder / "mariadb.sock"

    @classmethod
    def create(cls) -> MariaDBServer:
        for tool in ("mariadb-install-db", "mariadbd"):
            if shutil.which(tool) is None:
                raise RuntimeError(f"{tool} is not installed: the database-crash tests start a MariaDB server "
                                   "of their own (apt-get install mariadb-server)")
        server = cls(free_port(), Path(tempfile.mkdtemp(prefix="billingworker-mariadb-")))
        try:
            server._install()
        except BaseException:
            server.close()
            raise
        return server

    def _install(self) -> None:
        subprocess.run(["mariadb-install-db", "--no-defaults", f"--datadir={self.folder / 'data'}",
                        f"--user={_MARIADB_USER}", "--auth-root-authentication-method=normal", "--skip-test-db"],
                       capture_output=True, check=True, timeout=120)
        self.start()  # (install-db made root@127.0.0.1 too, with no password: the worker's TCP login)
        _create_database(self.url("mysql"), f"`{DATABASE}`")

    def url(self, database: str = DATABASE) -> str:
        return f"mysql+pymysql://root@127.0.0.1:{self.port}/{database}"

    def log(self) -> str:
        path = self.folder / "server.log"
        return path.read_text(errors="replace")[-5000:] if path.exists() else ""

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["mariadbd", "--no-defaults", f"--datadir={self.folder / 'data'}", f"--port={self.port}",
             "--bind-address=127.0.0.1", f"--socket={self.socket_path}", f"--pid-file={self.folder / 'mariadb.pid'}",
             f"--log-error={self.folder / 'server.log'}", f"--user={_MARIADB_USER}", "--skip-log-bin",
             "--innodb-buffer-pool-size=128M", "--innodb-flush-log-at-trx-commit=2", "--max-connections=200"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + START_TIMEOUT
        while not (_listening(self.port) and self.socket_path.exists()):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"mariadbd on port {self.port} did not start:\n{self.log()}")
            time.sleep(0.1)

    def crash(self) -> None:
        """SIGKILL the server: every connection dropped, InnoDB's crash recovery on the next start."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(30)
        self.proc = None
        deadline = time.monotonic() + 30
        while _listening(self.port) and time.monotonic() < deadline:
            time.sleep(0.1)

    def close(self) -> None:
        self.crash()
        shutil.rmtree(self.folder, ignore_errors=True)
