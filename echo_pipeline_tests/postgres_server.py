"""A real PostgreSQL server for tests: a throw-away cluster, as a team's database server.

The binaries come from Debian's ``postgresql`` package (``.ci/run`` installs it, as it installs
Chromium). The cluster is made by ``initdb`` in a temporary folder and run by ``pg_ctl`` as an
unprivileged user (``postgres`` when the tests run as root, since PostgreSQL refuses to run as
root), on a free port of 127.0.0.1 only, with no Unix socket, and password authentication
(scram-sha-256) for a superuser ``echo`` with a random password: the same connection a team's
``dagster.yaml`` and ``mlflow server`` make. ``fsync`` is off: the tests restart the server
cleanly, they never pull its plug. :meth:`PostgresServer.stop` stops it and removes the folder;
:meth:`PostgresServer.survivors` says whether any process of it outlived that.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import secrets
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from echo_pipeline.operations.servers import free_port

SUPERUSER = "echo"
#: Where Debian puts each major version's server binaries (not on PATH by default).
DEBIAN_BIN_GLOB = "/usr/lib/postgresql/*/bin"


def postgres_binaries() -> Path | None:
    """The folder holding ``initdb`` and ``pg_ctl``: from PATH, else Debian's newest version."""
    on_path = shutil.which("initdb")
    if on_path and shutil.which("pg_ctl"):
        return Path(on_path).resolve().parent
    candidates = sorted(
        Path("/").glob(DEBIAN_BIN_GLOB.lstrip("/")),
        key=lambda p: [int(n) for n in p.parent.name.split(".") if n.isdigit()],
    )
    for folder in reversed(candidates):
        if (folder / "initdb").exists() and (folder / "pg_ctl").exists():
            return folder
    return None


def _server_user() -> pwd.struct_passwd | None:
    """Who runs the cluster: None (this user) unless this is root, which PostgreSQL refuses."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    raise RuntimeError("running as root and neither a 'postgres' nor a 'nobody' user exists")


@dataclass
class PostgresServer:
    root: Path
    port: int
    password: str
    binaries: Path
    user: pwd.struct_passwd | None

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def log(self) -> Path:
        return self.root / "server.log"

    def url(self, database: str) -> str:
        """SQLAlchemy URL of ``database``, as MLflow's ``--backend-store-uri`` takes it. The
        driver is named: SQLAlchemy 2.1 reads a bare ``postgresql://`` as psycopg 3, and the
        team extra installs psycopg2 (which dagster-postgres uses)."""
        return f"postgresql+psycopg2://{SUPERUSER}:{self.password}@127.0.0.1:{self.port}/{database}"

    def dagster_env(self, database: str) -> dict[str, str]:
        """The variables deploy/dagster.yaml reads for ``database``."""
        return {
            "DAGSTER_PG_HOST": "127.0.0.1",
            "DAGSTER_PG_PORT": str(self.port),
            "DAGSTER_PG_DB": database,
            "DAGSTER_PG_USER": SUPERUSER,
            "DAGSTER_PG_PASSWORD": self.password,
        }

    def connect(self, database: str = "postgres"):
        import psycopg2

        return psycopg2.connect(
            host="127.0.0.1",
            port=self.port,
            user=SUPERUSER,
            password=self.password,
            dbname=database,
            connect_timeout=10,
        )

    def create_database(self, name: str) -> str:
        """A new, empty database ``name`` (letters, digits and underscores only)."""
        if not name.replace("_", "").isalnum():
            raise ValueError(f"not a plain database name: {name!r}")
        connection = self.connect()
        try:
            connection.autocommit = True  # CREATE DATABASE cannot run in a transaction
            with connection.cursor() as cursor:
                cursor.execute(f"CREATE DATABASE {name}")
        finally:
            connection.close()
        return name

    def query(self, database: str, sql: str, *params: object) -> list[tuple]:
        connection = self.connect(database)
        try:
            with connection, connection.cursor() as cursor:
                cursor.execute(sql, params or None)
                return cursor.fetchall()
        finally:
            connection.close()

    def pg_ctl(self, *args: str, timeout_s: float = 120.0) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), *args, timeout_s=timeout_s)

    def start(self) -> None:
        self.pg_ctl("start", "-w", "-t", "60")

    def shutdown(self) -> None:
        """Fast shutdown: every session is cut, as in a failover; :meth:`start` brings it back
        with its data."""
        self.pg_ctl("stop", "-m", "fast", "-w", "-t", "60")

    def postmaster_pid(self) -> int | None:
        try:
            return int((self.data / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def survivors(self) -> list[str]:
        """Live processes of this cluster (its postmaster, found by its folder, and the
        postmaster's children): pid and command."""
        commands: dict[int, tuple[int, str]] = {}  # pid -> (parent pid, command)
        for stat in Path("/proc").glob("[0-9]*/stat"):
            with contextlib.suppress(OSError, ValueError, IndexError):
                text = stat.read_text()
                fields = text[text.rindex(")") + 2 :].split()  # state, ppid, ...
                if fields[0] != "Z":
                    cmdline = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ")
                    commands[int(stat.parent.name)] = (
                        int(fields[1]),
                        cmdline.decode("utf-8", "replace"),
                    )
        postmasters = {pid for pid, (_, command) in commands.items() if str(self.data) in command}
        return [
            f"{pid} {command.strip()}"
            for pid, (parent, command) in sorted(commands.items())
            if pid in postmasters or parent in postmasters
        ]

    def stop(self) -> None:
        """Stop the server (fast shutdown) and remove its folder."""
        with contextlib.suppress(subprocess.SubprocessError, RuntimeError):
            if self.postmaster_pid() is not None:
                self.shutdown()
        shutil.rmtree(self.root, ignore_errors=True)

    def _run(self, program: str, *args: str, timeout_s: float = 120.0) -> None:
        user = self.user
        done = subprocess.run(
            [str(self.binaries / program), *args],
            cwd=self.root,
            user=user.pw_uid if user else None,
            group=user.pw_gid if user else None,
            extra_groups=[] if user else None,
            env={"PATH": os.environ.get("PATH", ""), "LC_ALL": "C", "TZ": "UTC"},
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout_s,
        )
        if done.returncode != 0:
            log = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
            raise RuntimeError(
                f"{program} {' '.join(args[:1])} failed ({done.returncode}): "
                f"{(done.stdout + done.stderr).strip()[-2000:]}\n{log}"
            )


def start_postgres() -> PostgresServer:
    """A new cluster in a temporary folder, started and answering on 127.0.0.1."""
    binaries = postgres_binaries()
    if binaries is None:
        raise RuntimeError("PostgreSQL server binaries (initdb, pg_ctl) not found")
    user = _server_user()
    # Not under pytest's tmp_path: its root is private to this user, and the server's user
    # must reach its folder.
    root = Path(tempfile.mkdtemp(prefix="echo-postgres-"))
    if user:
        os.chown(root, user.pw_uid, user.pw_gid)
    server = PostgresServer(root, free_port(), secrets.token_hex(16), binaries, user)
    try:
        password_file = root / "password"
        password_file.write_text(server.password + "\n")
        if user:
            os.chown(password_file, user.pw_uid, user.pw_gid)
        server._run(
            "initdb",
            *("-D", str(server.data), "-U", SUPERUSER, "--pwfile", str(password_file)),
            *("--auth", "scram-sha-256", "--encoding", "UTF8", "--locale", "C", "--no-sync"),
        )
        password_file.unlink()
        settings = {
            "listen_addresses": "'127.0.0.1'",
            "port": str(server.port),
            "unix_socket_directories": "''",
            "fsync": "off",
            "full_page_writes": "off",
            "synchronous_commit": "off",
        }
        with open(server.data / "postgresql.conf", "a", encoding="utf-8") as conf:
            conf.writelines(f"{key} = {value}\n" for key, value in settings.items())
        server.start()
    except BaseException:
        server.stop()
        raise
    return server
