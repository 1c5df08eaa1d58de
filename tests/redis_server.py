"""A Redis server of the test run's own, so that two runs on one machine never flush each other.

The first call starts ``redis-server`` on a free loopback port (no persistence, its files in a
temporary folder) and stops it when the test process exits; later calls return the same server.
``TEST_REDIS_URL`` / ``TEST_OPS_REDIS_URL`` still point a run at a server of one's choice.
Tests that restart Redis under a worker start yet another one with ``RedisServer.start()``.
"""

from __future__ import annotations

import atexit
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

#: Seconds a starting server may take to answer.
START_TIMEOUT = 15.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as conn:
            conn.sendall(b"PING\r\n")
            return conn.recv(16).startswith(b"+PONG")
    except OSError:
        return False


@dataclass
class RedisServer:
    """One ``redis-server`` process on 127.0.0.1:``port``; ``stop``/``restart`` keep the port."""

    port: int
    folder: Path
    proc: subprocess.Popen | None = field(default=None, repr=False)

    @classmethod
    def start(cls, port: int | None = None) -> RedisServer:
        if shutil.which("redis-server") is None:
            raise RuntimeError("redis-server is not installed: the tests start Redis servers of their own "
                               "(apt-get install redis-server)")
        server = cls(port or free_port(), Path(tempfile.mkdtemp(prefix="billingworker-redis-")))
        server._spawn()
        return server

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def _spawn(self) -> None:
        log = (self.folder / "redis.log").open("ab")
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.folder)],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()
        deadline = time.monotonic() + START_TIMEOUT
        while not _answers(self.port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server on port {self.port} did not start:\n"
                                   f"{(self.folder / 'redis.log').read_text(errors='replace')}")
            time.sleep(0.05)

    def stop(self, *, kill: bool = False) -> None:
        if self.proc is not None and self.proc.poll() is None:
            (self.proc.kill if kill else self.proc.terminate)()
            self.proc.wait(10)
        self.proc = None

    def restart(self) -> None:
        """Stop the server (its data is gone: nothing is persisted) and start it again on the same port."""
        self.stop(kill=True)
        self._spawn()

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.folder, ignore_errors=True)


_run_server: RedisServer | None = None


def run_redis_url(db: int) -> str:
    """A database of this test run's own Redis server (started on first use)."""
    global _run_server
    if _run_server is None:
        _run_server = RedisServer.start()
        atexit.register(_run_server.close)
    return _run_server.url(db)
