"""A private PostgreSQL for tests: its own cluster in a temp dir, on a free loopback
port, stopped by PID.

`initdb` and `postgres` come from Debian's `postgresql` package (found under
/usr/lib/postgresql/*/bin; `scripts/bootstrap` installs it). PostgreSQL refuses to run
as root, so as root the cluster belongs to the package's `postgres` user and the
server runs as that user (`subprocess.Popen(user=...)`). Durability is off (fsync,
synchronous commit, full-page writes): the cluster lives for one test session.

Fixtures: `postgres` (session-scoped, one cluster however many modules use it) and
`db_url` (each test: a fresh SQLite file, then a fresh PostgreSQL database). Import both
into a test module that touches SQL.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from itertools import count
from pathlib import Path

import psycopg
import pytest

from pbx.procs import free_port

SUPERUSER = "kefu"


def postgres_bin() -> Path:
    """The newest installed PostgreSQL's bin directory."""
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/postgres"), key=lambda p: int(p.split("/")[4])
    )
    if not found:
        raise FileNotFoundError(
            "PostgreSQL is not installed (/usr/lib/postgresql/*/bin/postgres): "
            "run scripts/bootstrap"
        )
    return Path(found[-1]).parent


class PostgresCluster:
    """initdb + postgres in the foreground (we hold its PID); `stop()` is a fast shutdown."""

    def __init__(self) -> None:
        self.bin = postgres_bin()
        self.user: str | None = "postgres" if os.geteuid() == 0 else None
        self.root = Path(tempfile.mkdtemp(prefix="kefu-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "postgres.log"
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self._names = count(1)
        if self.user is not None:
            entry = pwd.getpwnam(self.user)
            os.chown(self.root, entry.pw_uid, entry.pw_gid)

    def start(self) -> PostgresCluster:
        self._run(
            [str(self.bin / "initdb"), "-D", str(self.data), "-U", SUPERUSER, "-A", "trust",
             "-E", "UTF8", "--locale=C", "--no-sync", "--no-instructions"]
        )  # fmt: skip
        for attempt in range(3):  # the free port can be taken before postgres binds it
            self.port = free_port()
            log = open(self.log, "ab")
            try:
                self.proc = subprocess.Popen(
                    [str(self.bin / "postgres"), "-D", str(self.data), "-p", str(self.port),
                     "-h", "127.0.0.1", "-k", "", "-c", "fsync=off",
                     "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
                     "-c", "max_connections=60", "-c", "shared_buffers=16MB"],
                    stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                    user=self.user, cwd=self.root, start_new_session=True,
                )  # fmt: skip
            finally:
                log.close()
            if self._wait_ready(30):
                return self
            self.stop()
            if attempt == 2:
                raise RuntimeError(f"PostgreSQL did not start:\n{self.log_tail()}")
        return self

    def _run(self, argv: list[str]) -> None:
        done = subprocess.run(argv, capture_output=True, user=self.user, cwd=self.root, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"{argv[0]} failed: {done.stdout!r} {done.stderr!r}")

    def _wait_ready(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                return False
            try:
                with psycopg.connect(self.dsn("postgres"), connect_timeout=2):
                    return True
            except psycopg.OperationalError:
                time.sleep(0.05)
        return False

    def dsn(self, database: str) -> str:
        return f"host=127.0.0.1 port={self.port} user={SUPERUSER} dbname={database}"

    def url(self, database: str) -> str:
        """SQLAlchemy URL (psycopg 3 driver)."""
        return f"postgresql+psycopg://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def create_database(self) -> str:
        name = f"kefu_test_{next(self._names)}"
        with psycopg.connect(self.dsn("postgres"), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return name

    def drop_database(self, name: str) -> None:
        with psycopg.connect(self.dsn("postgres"), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def stop(self) -> int | None:
        """SIGINT (fast shutdown: running transactions are rolled back), SIGKILL if it
        lingers; by PID, never by name."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGINT)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        return self.proc.returncode

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


_shared: PostgresCluster | None = None
_users = 0


@contextlib.contextmanager
def shared_cluster() -> Iterator[PostgresCluster]:
    """One cluster for the whole session, however many test modules import the
    fixture (each import is its own session fixture): the last user stops it."""
    global _shared, _users
    if _shared is None:
        _shared = PostgresCluster().start()
    _users += 1
    try:
        yield _shared
    finally:
        _users -= 1
        if _users == 0:
            cluster, _shared = _shared, None
            code = cluster.stop()
            cluster.remove()
            assert code == 0, f"postgres exited with {code}"


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresCluster]:
    """A private PostgreSQL cluster for the test session (see the module docstring)."""
    with shared_cluster() as cluster:
        yield cluster


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database: a SQLite file, then a fresh database on the private
    PostgreSQL (dropped afterwards, its connections forced closed)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'kefu.sqlite3'}"
        return
    cluster: PostgresCluster = request.getfixturevalue("postgres")
    name = cluster.create_database()
    try:
        yield cluster.url(name)
    finally:
        cluster.drop_database(name)
