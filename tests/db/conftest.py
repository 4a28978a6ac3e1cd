"""A throwaway PostgreSQL server for the db tests: its own cluster in a temp folder, on 127.0.0.1 and a unix
socket there, trust auth, stopped and removed at the end of the session. Skipped where the server binaries
are absent (scripts/install.sh installs Debian's `postgresql` when run as root)."""

from __future__ import annotations

import glob
import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
import uuid
from pathlib import Path

import pytest

SUPERUSER = "postgres"
START_TIMEOUT_S = 30


def _pg_bindir() -> Path | None:
    """Debian keeps the server binaries off PATH, under /usr/lib/postgresql/<major>/bin: take the newest."""

    def major(d: str) -> int:
        m = re.search(r"/postgresql/(\d+)/bin$", d)
        return int(m.group(1)) if m else -1

    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=major, reverse=True)
    if (initdb := shutil.which("initdb")) is not None:
        candidates.append(str(Path(initdb).resolve().parent))
    for d in candidates:
        if all(os.access(Path(d, b), os.X_OK) for b in ("initdb", "pg_ctl", "postgres")):
            return Path(d)
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Cluster:
    def __init__(self, bindir: Path, root: Path, as_user: str | None):
        self.bindir, self.root, self.as_user = bindir, root, as_user
        self.data, self.log = root / "data", root / "server.log"
        self.port = _free_port()

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        cmd = [str(self.bindir / args[0]), *args[1:]]
        if self.as_user:  # PostgreSQL refuses to run as root
            cmd = ["runuser", "-u", self.as_user, "--", *cmd]
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env.update(LC_ALL="C", TZ="UTC")
        # cwd: the server user must be able to enter it (it cannot enter /root or a 0700 work tree).
        return subprocess.run(
            cmd, cwd=self.root, env=env, check=check, capture_output=True, text=True, timeout=60
        )

    def start(self) -> None:
        self.run(
            "initdb",
            "-D",
            str(self.data),
            "-U",
            SUPERUSER,
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
            "--no-instructions",
        )
        opts = (
            f"-c listen_addresses=127.0.0.1 -p {self.port} -c unix_socket_directories={self.root} "
            # A throwaway cluster: durability is not under test, speed is welcome.
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=100"
        )
        r = self.run(
            "pg_ctl",
            "-D",
            str(self.data),
            "-l",
            str(self.log),
            "-o",
            opts,
            "-w",
            "-t",
            str(START_TIMEOUT_S),
            "start",
            check=False,
        )
        if r.returncode != 0:
            log = self.log.read_text(errors="replace") if self.log.exists() else ""
            raise RuntimeError(f"pg_ctl start failed ({r.returncode}): {r.stdout}{r.stderr}\n{log}")

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            self.run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop", check=False)

    def url(self, database: str) -> str:
        return f"postgresql+psycopg://{SUPERUSER}@127.0.0.1:{self.port}/{database}"


def _admin(url: str, *statements: str) -> None:
    import psycopg

    conninfo = url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(conninfo, autocommit=True) as conn:
        for sql in statements:
            conn.execute(sql)


@pytest.fixture(scope="session")
def pg_server():
    pytest.importorskip("psycopg", reason="psycopg is not installed (pip install -r requirements.lock)")
    bindir = _pg_bindir()
    if bindir is None:
        pytest.skip(
            "PostgreSQL server binaries (initdb, pg_ctl) not found in /usr/lib/postgresql/*/bin or "
            "on PATH: run scripts/install.sh as root, or apt-get install postgresql"
        )
    as_user = None
    if os.geteuid() == 0:
        try:
            pw = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no `postgres` system user to run the server as")
        if shutil.which("runuser") is None:
            pytest.skip("running as root and `runuser` (util-linux) is missing")
        as_user = "postgres"
    # Not pytest's tmp_path: that lives under a 0700 folder that the server user cannot enter.
    root = Path(tempfile.mkdtemp(prefix="cxr-pg-", dir="/tmp" if as_user else None))
    if as_user:
        os.chown(root, pw.pw_uid, pw.pw_gid)
    cluster = _Cluster(bindir, root, as_user)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_url(pg_server) -> str:
    """A `postgresql+psycopg://` URL to a database made for this test session on the throwaway server."""
    _admin(pg_server.url("postgres"), "CREATE DATABASE cxr_review")
    return pg_server.url("cxr_review")


@pytest.fixture
def pg_db_url(pg_server, pg_url) -> str:
    """A fresh, empty database of this test alone on the same server; dropped afterwards."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    _admin(pg_url, f'CREATE DATABASE "{name}"')
    yield pg_server.url(name)
    # FORCE ends the connections that the test's engines still hold in their pools.
    _admin(pg_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
