"""A throwaway PostgreSQL server for tests and benchmarks: initdb in a temporary folder, 127.0.0.1, a free port.

Debian's ``postgresql`` package puts its programs in ``/usr/lib/postgresql/<version>/bin``, off the
PATH. ``initdb`` refuses to run as root, so as root the server runs as the ``postgres`` user (the
package creates it) in a folder handed to that user. Password authentication is on, so that the
tests see real passwords travel (and must never see them printed).

Use the ``postgres_server`` fixture (import it into a test module), or :class:`PostgresServer` from
a script. Without PostgreSQL the fixture skips with a plain message; with the environment variable
``CI`` set it fails instead, since CI installs PostgreSQL (``.ci/run``) and must run these tests.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

USER = "tuner"
PASSWORD = "pg-s3cret-7f2c"  # distinctive, so a test can search every output for it


def find_bindir() -> Path | None:
    """Where ``initdb`` and ``pg_ctl`` live: PATH, then Debian's versioned folders (newest first)."""
    on_path = shutil.which("initdb")
    if on_path and shutil.which("pg_ctl"):
        return Path(on_path).parent
    folders = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name) if Path(p).parent.name.isdigit() else 0)
    for folder in reversed(folders):
        if (Path(folder) / "initdb").exists() and (Path(folder) / "pg_ctl").exists():
            return Path(folder)
    return None


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class PostgresServer:
    """A PostgreSQL server of its own, started by :meth:`start` and gone after :meth:`stop`."""

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.host = "127.0.0.1"
        self.port = _free_port()
        self.user = USER
        self.password = PASSWORD
        self.root = Path(tempfile.mkdtemp(prefix="tuner-pg-"))
        self.data = self.root / "data"
        self._as_postgres = os.geteuid() == 0  # initdb refuses root

    def _run(self, *args: str) -> None:
        command = [str(self.bindir / args[0]), *args[1:]]
        if self._as_postgres:
            command = ["runuser", "-u", "postgres", "--", *command]
        done = subprocess.run(command, capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(args[:2])} failed ({done.returncode}): {done.stderr.strip() or done.stdout.strip()}")

    def start(self) -> PostgresServer:
        password_file = self.root / "pwfile"
        password_file.write_text(self.password + "\n")
        if self._as_postgres:
            shutil.chown(self.root, "postgres")
            shutil.chown(password_file, "postgres")
        self._run("initdb", "-D", str(self.data), "-U", self.user, f"--pwfile={password_file}",
                  "--auth=scram-sha-256", "--encoding=UTF8", "--no-sync")
        password_file.unlink()
        # fsync off and a socket in our folder: a fast, private server that leaves nothing behind.
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.root / "server.log"), "-o", self._options(), "-w", "-t", "60", "start")
        return self

    def _options(self) -> str:
        return f"-c listen_addresses={self.host} -p {self.port} -k {self.root} -c fsync=off -c max_connections=100"

    def restart(self) -> None:
        """Restart the server (fast shutdown): every open connection is cut, as by a database failover."""
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.root / "server.log"), "-o", self._options(),
                  "-m", "fast", "-w", "-t", "60", "restart")

    def stop(self) -> None:
        try:
            if (self.data / "postmaster.pid").exists():
                self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def create_database(self, name: str) -> str:
        """A new, empty database; its URL without the password (give that through the environment)."""
        import psycopg

        with psycopg.connect(host=self.host, port=self.port, user=self.user, password=self.password,
                             dbname="postgres", autocommit=True) as connection:
            connection.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def url(self, database: str, *, with_password: bool = False) -> str:
        secret = f":{self.password}" if with_password else ""
        return f"postgresql://{self.user}{secret}@{self.host}:{self.port}/{database}"


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One PostgreSQL server for the test session; each test makes its own database on it."""
    bindir = find_bindir()
    if bindir is None:
        message = ("PostgreSQL is not installed (no initdb/pg_ctl on PATH or in /usr/lib/postgresql/*/bin): "
                   "these tests need a real server; install it with: apt-get install postgresql")
        if os.environ.get("CI"):
            pytest.fail(message + " (CI is set: these tests must run)", pytrace=False)
        pytest.skip(message)
    server = PostgresServer(bindir)
    try:
        server.start()
    except Exception:
        server.stop()
        raise
    try:
        yield server
    finally:
        server.stop()


def wait_until(condition: object, timeout_s: float, interval_s: float = 0.05) -> bool:
    """Poll ``condition()`` until it is true or ``timeout_s`` passed; whether it became true."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return True
        time.sleep(interval_s)
    return False
