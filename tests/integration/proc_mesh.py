"""The mesh as separate processes, for tests that kill, stop and restart its parts.

Every part runs as ``python -m <module>`` with its environment, exactly as a container
runs it (the shape of ``tests/deploy/test_scale_out.py``): Delivery, Notification and
Reporting on fixed ports picked once (so a restarted process comes back at the same
address), and any number of workers. A test can SIGKILL, SIGTERM and restart each part,
and can put a :class:`TcpProxy` between any two parts (``extra_env``) to cut, stall or
restore the network between them.

Usage::

    mesh = ProcMesh(dsns, temporal_address=..., namespace=..., work_dir=tmp_path)
    try:
        await mesh.start_all()
        stub = mesh.reporting()
        ...
        await mesh.kill("worker")
        await mesh.start("worker")
    finally:
        await mesh.stop_all()
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import sys
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from surveymesh.delivery.v1 import delivery_service_pb2_grpc as dgrpc
from surveymesh.embedded import free_port
from surveymesh.notification.v1 import notification_service_pb2_grpc as ngrpc
from surveymesh.reporting.v1 import reporting_service_pb2_grpc as rgrpc
from tests.conftest import TEST_SECRET

SERVICES = {
    "delivery": "delivery_svc",
    "notification": "notification_svc",
    "reporting": "reporting_svc",
}
HOST = "127.0.0.1"


@dataclass
class Proc:
    """One mesh process: ``python -m module`` with ``env``, its output in ``log``."""

    name: str
    module: str
    env: dict[str, str]
    log: Path
    process: asyncio.subprocess.Process | None = None
    starts: int = 0

    @property
    def running(self) -> bool:
        """Whether the process was started and has not exited."""
        return self.process is not None and self.process.returncode is None

    @property
    def pid(self) -> int:
        """The current process id."""
        assert self.process is not None, f"{self.name} was never started"
        return self.process.pid

    async def spawn(self) -> None:
        """Starts the process, appending its output to its log."""
        self.starts += 1
        with self.log.open("ab") as out:
            out.write(f"---- start #{self.starts} at {time.time():.3f}\n".encode())
            out.flush()
            self.process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                self.module,
                env=self.env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=out,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
            )

    async def kill(self) -> None:
        """SIGKILL: the crash of a pod, no clean-up of any kind."""
        if self.running:
            assert self.process is not None
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()
            await self.process.wait()

    async def terminate(self, timeout: float = 30.0) -> int:  # noqa: ASYNC109 - kills on expiry
        """SIGTERM, the graceful path; SIGKILL after ``timeout``. Returns the exit code."""
        assert self.process is not None
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.process.wait(), timeout)
            except TimeoutError:
                self.process.kill()
                await self.process.wait()
        code = self.process.returncode
        assert code is not None
        return code

    def tail(self, lines: int = 60) -> str:
        """The last lines of the log, for assertion messages."""
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


class ProcMesh:
    """Delivery, Notification, Reporting and workers as processes, on one Temporal server.

    Args:
        dsns: Database URL of ``delivery``, ``notification`` and ``reporting`` (the workers
            use Reporting's).
        temporal_address: ``host:port`` of the Temporal frontend.
        namespace: Temporal namespace.
        work_dir: Data dir and logs live here.
        grace: ``SURVEYMESH_GRACE_SECONDS`` of every process.
        extra_env: More variables by role (``delivery``, ``notification``, ``reporting``,
            ``worker``), e.g. a peer address that points at a :class:`TcpProxy`, or a
            ``DATABASE_URL`` through one.
    """

    def __init__(
        self,
        dsns: Mapping[str, str],
        *,
        temporal_address: str,
        namespace: str = "default",
        work_dir: Path,
        grace: float = 3.0,
        extra_env: Mapping[str, Mapping[str, str]] | None = None,
    ) -> None:
        self.dsns = dict(dsns)
        self.ports = {name: free_port() for name in SERVICES}
        self.task_queue_prefix = f"fault-{uuid.uuid4().hex[:8]}-"
        self.work_dir = work_dir
        self.logs = work_dir / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.grace = grace
        self.extra_env = {k: dict(v) for k, v in (extra_env or {}).items()}
        self.procs: dict[str, Proc] = {}
        self._channels: dict[str, grpc.aio.Channel] = {}
        self.base_env = {
            **{
                k: v
                for k, v in os.environ.items()
                if k not in {"DATABASE_URL", "SURVEYMESH_WORKER_QUEUES", "OPENAI_API_KEY"}
                and not k.startswith("SURVEYMESH_TEST_")
            },
            "PYTHONUNBUFFERED": "1",
            "SURVEYMESH_DATA_DIR": str(work_dir / "data"),
            "SURVEYMESH_BIND_HOST": HOST,
            "SURVEYMESH_JWT_SECRET": TEST_SECRET,
            "SURVEYMESH_GRACE_SECONDS": str(grace),
            "SURVEYMESH_LOG_LEVEL": "INFO",
            "SURVEYMESH_RENDER_PROCESSES": "0",
            "SURVEYMESH_DELIVERY_ADDRESS": self.address("delivery"),
            "SURVEYMESH_NOTIFICATION_ADDRESS": self.address("notification"),
            "SURVEYMESH_REPORTING_ADDRESS": self.address("reporting"),
            "SURVEYMESH_DELIVERY_PORT": str(self.ports["delivery"]),
            "SURVEYMESH_NOTIFICATION_PORT": str(self.ports["notification"]),
            "SURVEYMESH_REPORTING_PORT": str(self.ports["reporting"]),
            "SURVEYMESH_WEB_PORT": str(free_port()),
            "TEMPORAL_ADDRESS": temporal_address,
            "TEMPORAL_NAMESPACE": namespace,
            "SURVEYMESH_TASK_QUEUE_PREFIX": self.task_queue_prefix,
            "SURVEYMESH_AI_CONCURRENCY": "2",
            # Webhooks of the fault suite go to a receiver on localhost, and fail fast.
            "SURVEYMESH_ALLOW_PRIVATE_WEBHOOKS": "true",
            "SURVEYMESH_NOTIFY_RETRY_BASE_SECONDS": "0.5",
            "SURVEYMESH_NOTIFY_RETRY_MAX_SECONDS": "2",
            "SURVEYMESH_NOTIFY_POLL_SECONDS": "0.5",
        }

    # -- addresses and clients ---------------------------------------------------------

    def address(self, service: str) -> str:
        """``host:port`` of a service (stable across restarts)."""
        return f"{HOST}:{self.ports[service]}"

    def channel(self, service: str) -> grpc.aio.Channel:
        """A (cached) channel to a service; it reconnects by itself after restarts."""
        if service not in self._channels:
            self._channels[service] = grpc.aio.insecure_channel(self.address(service))
        return self._channels[service]

    def reporting(self) -> rgrpc.ReportingServiceStub:
        """A ReportingService stub."""
        return rgrpc.ReportingServiceStub(self.channel("reporting"))

    def delivery(self) -> dgrpc.DeliveryServiceStub:
        """A DeliveryService stub."""
        return dgrpc.DeliveryServiceStub(self.channel("delivery"))

    def notification(self) -> ngrpc.NotificationServiceStub:
        """A NotificationService stub."""
        return ngrpc.NotificationServiceStub(self.channel("notification"))

    def health(self, service: str) -> health_pb2_grpc.HealthStub:
        """The grpc.health.v1 stub of a service."""
        return health_pb2_grpc.HealthStub(self.channel(service))

    # -- lifecycle -----------------------------------------------------------------------

    def _env(self, role: str, extra: Mapping[str, str]) -> dict[str, str]:
        env = {**self.base_env, **self.extra_env.get(role, {}), **extra}
        if "DATABASE_URL" not in env:
            env["DATABASE_URL"] = self.dsns["reporting" if role == "worker" else role]
        return env

    async def start(
        self, name: str, *, wait: bool = True, env: Mapping[str, str] | None = None
    ) -> Proc:
        """Starts (or restarts) ``name``: a service name, or ``worker``/``worker-<x>``.

        ``env`` adds variables to the process environment of this start only.
        """
        extra_env = env or {}
        role = "worker" if name.startswith("worker") else name
        proc = self.procs.get(name)
        if proc is not None and proc.running:
            raise RuntimeError(f"{name} is already running")
        full_env = self._env(role, extra_env)
        if proc is None:
            module = "worker" if role == "worker" else SERVICES[role]
            proc = Proc(name, module, full_env, self.logs / f"{name}.log")
            self.procs[name] = proc
        else:
            proc.env = full_env
        await proc.spawn()
        if wait:
            await self.wait_ready(name)
        return proc

    async def wait_ready(self, name: str, timeout: float = 60.0) -> None:  # noqa: ASYNC109
        """Waits until a service answers SERVING, or a worker polls its queues."""
        proc = self.procs[name]
        deadline = time.monotonic() + timeout
        if name.startswith("worker"):
            marker = f"---- start #{proc.starts} "
            while True:
                text = proc.log.read_text(errors="replace")
                if "worker running on" in text.rpartition(marker)[2]:
                    return
                self._check_alive(proc, deadline)
                await asyncio.sleep(0.1)
        async with grpc.aio.insecure_channel(self.address(name)) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while True:
                with contextlib.suppress(grpc.aio.AioRpcError):
                    reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                self._check_alive(proc, deadline)
                await asyncio.sleep(0.1)

    @staticmethod
    def _check_alive(proc: Proc, deadline: float) -> None:
        if not proc.running:
            raise RuntimeError(f"{proc.name} exited during start:\n{proc.tail()}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{proc.name} not ready in time:\n{proc.tail()}")

    async def start_all(self, workers: int = 1) -> None:
        """Starts every service, then ``workers`` workers, all ready on return."""
        await asyncio.gather(*(self.start(s, wait=False) for s in SERVICES))
        names = ["worker" if i == 1 else f"worker-{i}" for i in range(1, workers + 1)]
        await asyncio.gather(*(self.start(w, wait=False) for w in names))
        await asyncio.gather(*(self.wait_ready(n) for n in [*SERVICES, *names]))

    async def kill(self, name: str) -> None:
        """SIGKILLs ``name`` and waits for it to be gone."""
        await self.procs[name].kill()

    async def terminate(self, name: str, timeout: float = 30.0) -> int:  # noqa: ASYNC109
        """SIGTERMs ``name``; returns its exit code."""
        return await self.procs[name].terminate(timeout)

    async def restart(self, name: str, *, hard: bool = True) -> None:
        """Kills (or terminates) and starts ``name`` again."""
        if hard:
            await self.kill(name)
        else:
            await self.terminate(name)
        await self.start(name)

    async def stop_all(self) -> None:
        """Terminates every process (killing stragglers) and closes the channels."""
        for channel in self._channels.values():
            await channel.close()
        self._channels.clear()
        running = [p for p in self.procs.values() if p.running]
        await asyncio.gather(*(p.terminate(self.grace + 10) for p in running))

    def logs_tail(self) -> str:
        """Every process's log tail, for a failing assertion."""
        return "\n".join(f"== {p.name}\n{p.tail(30)}" for p in self.procs.values())


# --------------------------------------------------------------------------------------
# A TCP proxy that can cut or stall the network between two parts
# --------------------------------------------------------------------------------------


@dataclass(eq=False)  # identity-hashed: links live in a set
class _Link:
    client: asyncio.StreamWriter
    upstream: asyncio.StreamWriter | None = None
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def abort(self) -> None:
        for w in (self.client, self.upstream):
            if w is not None:
                w.transport.abort()


class TcpProxy:
    """Forwards ``127.0.0.1:<port>`` to ``target``, and breaks that link on demand.

    Modes:
        pass: bytes flow both ways.
        stall: connections stay open but no byte moves (a black-holed network, the case
            that only deadlines detect); bytes are held and delivered on :meth:`heal`.
        refuse: every open connection is reset and new ones are reset on accept (a
            crashed peer or a refused port).

    ``captured`` keeps every byte clients sent while :attr:`capture` is on (the test of
    deadline propagation reads the ``grpc-timeout`` header out of it).
    """

    def __init__(
        self, target_host: str, target_port: int, *, throttle: float | None = None
    ) -> None:
        self.target = (target_host, target_port)
        self.throttle = throttle  # bytes/s towards the client (a slow link), None: full speed
        self.mode = "pass"
        self.port = 0
        self.capture = False
        self.captured = bytearray()
        self.connections = 0
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._links: set[_Link] = set()
        self._server: asyncio.Server | None = None

    @property
    def address(self) -> str:
        """``host:port`` clients connect to."""
        return f"{HOST}:{self.port}"

    async def start(self) -> TcpProxy:
        """Starts listening on a free port."""
        self._server = await asyncio.start_server(self._accept, HOST, 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        """Stops listening and drops every connection."""
        self._flowing.set()
        for link in list(self._links):
            link.abort()
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)

    def stall(self) -> None:
        """Stops every byte, on open and new connections, until :meth:`heal`."""
        self.mode = "stall"
        self._flowing.clear()

    def refuse(self) -> None:
        """Resets open connections and every new one until :meth:`heal`."""
        self.mode = "refuse"
        self._flowing.set()
        for link in list(self._links):
            link.abort()

    def heal(self) -> None:
        """Lets traffic flow again (held bytes are delivered)."""
        self.mode = "pass"
        self._flowing.set()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        if self.mode == "refuse":
            writer.transport.abort()
            return
        link = _Link(writer)
        self._links.add(link)
        try:
            await self._flowing.wait()  # a stalled network does not even connect onwards
            if self.mode == "refuse":
                return
            try:
                up_reader, up_writer = await asyncio.open_connection(*self.target)
            except OSError:
                return
            link.upstream = up_writer
            link.tasks = [
                asyncio.ensure_future(self._pump(reader, up_writer, capture=True)),
                asyncio.ensure_future(self._pump(up_reader, writer, capture=False)),
            ]
            await asyncio.wait(link.tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in link.tasks:
                t.cancel()
            link.abort()
            self._links.discard(link)

    async def _pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, capture: bool
    ) -> None:
        slow = None if capture else self.throttle
        with contextlib.suppress(ConnectionError, OSError):
            while data := await reader.read(4096 if slow else 65536):
                if capture and self.capture:
                    self.captured += data
                await self._flowing.wait()
                if self.mode == "refuse":
                    return
                writer.write(data)
                await writer.drain()
                if slow:
                    await asyncio.sleep(len(data) / slow)


_TIMEOUT_UNITS = {"H": 3600.0, "M": 60.0, "S": 1.0, "m": 1e-3, "u": 1e-6, "n": 1e-9}


def grpc_timeouts(data: bytes) -> list[float]:
    """The ``grpc-timeout`` values (seconds) of the HTTP/2 request headers in ``data``.

    gRPC C-core sends ``grpc-timeout`` as an HPACK literal with a plain (not Huffman-coded)
    value, e.g. ``\\x04499m``; a value that reappears on one connection may instead be an
    index into the dynamic table, which this scan does not resolve.
    """
    out = []
    for m in re.finditer(rb"grpc-timeout", data):
        pos = m.end()
        if pos >= len(data):
            continue
        prefix = data[pos]
        if prefix & 0x80:
            raise AssertionError("grpc-timeout value is Huffman-coded; cannot read it")
        length = prefix & 0x7F
        value = data[pos + 1 : pos + 1 + length].decode("ascii", "replace")
        if len(value) >= 2 and value[:-1].isdigit() and value[-1] in _TIMEOUT_UNITS:
            out.append(int(value[:-1]) * _TIMEOUT_UNITS[value[-1]])
    return out
