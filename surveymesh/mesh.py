"""``surveymesh up``: the whole mesh on one machine as supervised child processes.

Start order: PostgreSQL and the Temporal dev server (embedded unless ``DATABASE_URL`` /
``TEMPORAL_ADDRESS`` point elsewhere), then DeliveryService, NotificationService,
ReportingService and one worker polling every task queue. Each service child is
restarted if it dies; Ctrl-C / SIGTERM stops everything in reverse order. All state lives
in the data dir, so a second ``up`` resumes in-flight reports.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from surveymesh.codec import payload_keys_for_mesh
from surveymesh.config import Settings
from surveymesh.embedded import EmbeddedPostgres, EmbeddedTemporal
from surveymesh.workflow_contract import SEARCH_ATTRIBUTES

log = logging.getLogger(__name__)

# (name, module, port attribute of Settings, database) in start order.
SERVICES = (
    ("delivery", "delivery_svc", "delivery_port", "surveymesh_delivery"),
    ("notification", "notification_svc", "notification_port", "surveymesh_notification"),
    ("reporting", "reporting_svc", "reporting_port", "surveymesh_reporting"),
    ("worker", "worker", None, "surveymesh_reporting"),
)
MAX_RESTARTS_PER_MINUTE = 5


def metrics_ports(settings: Settings) -> dict[str, int]:
    """The Prometheus port of each child of ``up``: ``SURVEYMESH_METRICS_PORT`` plus the
    child's place in :data:`SERVICES`, then the worker's Temporal SDK metrics
    (``temporal-sdk``). Empty when ``SURVEYMESH_METRICS_PORT=0``."""
    base = settings.metrics_port
    if base <= 0:
        return {}
    ports = {name: base + i for i, (name, *_) in enumerate(SERVICES)}
    ports["temporal-sdk"] = base + len(SERVICES)
    return ports


@dataclass
class Child:
    """A supervised service process."""

    name: str
    module: str
    env: dict[str, str]
    log_path: Path
    health_port: int | None
    process: asyncio.subprocess.Process | None = None
    restarts: list[float] = field(default_factory=list)
    stopping: bool = False

    async def spawn(self) -> None:
        """Starts the process, appending its output to its log file."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as out:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                self.module,
                env=self.env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=out,
                stderr=asyncio.subprocess.STDOUT,
                # Own session: Ctrl-C reaches only the supervisor, which stops children in order.
                start_new_session=True,
            )
        log.info("started %s (pid %d), log %s", self.name, self.process.pid, self.log_path)

    async def stop(self, grace: float) -> None:
        """SIGTERM (the services' graceful path), SIGKILL after ``grace`` + a margin."""
        self.stopping = True
        proc = self.process
        if proc is None or proc.returncode is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), grace + 5)
        except TimeoutError:
            log.warning("%s did not stop within %.0fs; killing it", self.name, grace + 5)
            proc.kill()
            await proc.wait()

    def log_tail(self, lines: int = 30) -> str:
        """The last lines of the child's log, for error messages."""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


async def wait_healthy(address: str, timeout: float, child: Child | None = None) -> None:  # noqa: ASYNC109
    """Polls ``grpc.health.v1`` at ``address`` until SERVING (or the child dies)."""
    deadline = time.monotonic() + timeout
    async with grpc.aio.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            if child and child.process and child.process.returncode is not None:
                raise RuntimeError(
                    f"{child.name} exited with code {child.process.returncode}:\n{child.log_tail()}"
                )
            try:
                reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.aio.AioRpcError:
                pass
            if time.monotonic() > deadline:
                tail = child.log_tail() if child else ""
                raise RuntimeError(f"{address} not healthy after {timeout:.0f}s\n{tail}")
            await asyncio.sleep(0.2)


class Mesh:
    """Starts, supervises and stops every part of a one-machine mesh."""

    def __init__(self, settings: Settings, env: dict[str, str] | None = None) -> None:
        self.settings = settings
        self.env = dict(os.environ if env is None else env)
        self.data_dir = settings.data_dir.resolve()
        self.postgres: EmbeddedPostgres | None = None
        self.temporal: EmbeddedTemporal | None = None
        self.children: list[Child] = []
        self.temporal_address = self.env.get("TEMPORAL_ADDRESS", "")
        self.started_at = 0.0
        self.ready_seconds = 0.0

    async def start(self) -> None:
        """Brings every part up and waits until the services report SERVING."""
        self.started_at = time.monotonic()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.settings.signing_secret()  # create the dev secret once, before children race for it
        databases = await self._start_postgres()
        await self._start_temporal()
        base = {
            **self.env,
            "SURVEYMESH_DATA_DIR": str(self.data_dir),
            "TEMPORAL_ADDRESS": self.temporal_address,
            "TEMPORAL_NAMESPACE": self.settings.temporal_namespace,
            "PYTHONUNBUFFERED": "1",
            # Reporting and the worker encrypt Temporal payloads with the same keys.
            "SURVEYMESH_PAYLOAD_KEYS": payload_keys_for_mesh(self.settings),
            # A one-machine mesh is a development mesh: the viewer accepts ?token= links.
            "SURVEYMESH_DEV_MODE": self.env.get("SURVEYMESH_DEV_MODE", "true"),
        }
        for name, module, port_attr, database in SERVICES:
            child = Child(
                name=name,
                module=module,
                env={**base, "DATABASE_URL": databases[database], **self._metrics_env(name)},
                log_path=self.data_dir / "logs" / f"{name}.log",
                health_port=getattr(self.settings, port_attr) if port_attr else None,
            )
            self.children.append(child)
            await child.spawn()
        # Temporal's remote codec: operators read the encrypted histories through it.
        codec = Child(
            name="codec",
            module="surveymesh.codec_server",
            env=base,
            log_path=self.data_dir / "logs" / "codec.log",
            health_port=None,
        )
        self.children.append(codec)
        await codec.spawn()
        await asyncio.gather(
            *(
                wait_healthy(f"localhost:{c.health_port}", 60, c)
                for c in self.children
                if c.health_port
            )
        )
        self.ready_seconds = time.monotonic() - self.started_at

    async def _start_postgres(self) -> dict[str, str]:
        external = self.env.get("DATABASE_URL")
        names = sorted({db for *_, db in SERVICES})
        if external:
            # One external database: every service keeps its tables in its own schema.
            return dict.fromkeys(names, external)
        self.postgres = EmbeddedPostgres(
            self.data_dir / "postgres", port=self.settings.postgres_port
        )
        await self.postgres.start()
        for name in names:
            await self.postgres.ensure_database(name)
        return {name: self.postgres.dsn(name) for name in names}

    async def _start_temporal(self) -> None:
        if self.temporal_address:
            return
        self.temporal = EmbeddedTemporal(
            self.data_dir / "temporal",
            port=self.settings.temporal_port,
            ui_port=self.settings.temporal_ui_port or None,
            namespace=self.settings.temporal_namespace,
            search_attributes=SEARCH_ATTRIBUTES,
        )
        await self.temporal.start()
        self.temporal_address = self.temporal.address

    def _metrics_env(self, child: str) -> dict[str, str]:
        ports = metrics_ports(self.settings)
        env = {"SURVEYMESH_METRICS_PORT": str(ports.get(child, 0))}
        if child == "worker":
            env["SURVEYMESH_TEMPORAL_METRICS_PORT"] = str(ports.get("temporal-sdk", 0))
        return env

    def trace_output(self) -> str:
        """Where the children's spans go (the same rule as :mod:`surveymesh.telemetry`)."""
        from surveymesh.telemetry import trace_destination

        dev = self.env.get("SURVEYMESH_DEV_MODE", "true").lower() in {"1", "true", "yes", "on"}
        settings = dataclasses.replace(self.settings, dev_mode=dev, data_dir=self.data_dir)
        where = trace_destination(settings, "SERVICE", self.env)
        return where.replace("SERVICE.jsonl", "<service>.jsonl (JSON lines)")

    def endpoints(self) -> list[tuple[str, str]]:
        """What a user can connect to, as (what, where) pairs."""
        s = self.settings
        rows = [
            ("ReportingService (gRPC)", f"localhost:{s.reporting_port}"),
            ("DeliveryService (gRPC)", f"localhost:{s.delivery_port}"),
            ("NotificationService (gRPC)", f"localhost:{s.notification_port}"),
            ("Report viewer (HTTP)", s.viewer_url),
            ("Temporal frontend", self.temporal_address),
            ("Temporal payload codec", f"http://localhost:{s.codec_port} (admin token)"),
        ]
        if self.temporal and self.temporal.ui_url:
            rows.append(("Temporal Web UI", self.temporal.ui_url))
        if self.postgres:
            rows.append(("PostgreSQL", self.postgres.dsn("<db>")))
        for name, port in metrics_ports(s).items():
            what = "Temporal SDK metrics" if name == "temporal-sdk" else f"Metrics ({name})"
            rows.append((what, f"http://localhost:{port}/metrics"))
        rows.append(("Traces", self.trace_output()))
        rows.append(("Logs", str(self.data_dir / "logs")))
        return rows

    async def supervise(self, stop: asyncio.Event) -> None:
        """Restarts children that die, until ``stop`` is set."""
        while not stop.is_set():
            waits = {
                asyncio.ensure_future(c.process.wait()): c
                for c in self.children
                if c.process and c.process.returncode is None
            }
            stopper = asyncio.ensure_future(stop.wait())
            done, _ = await asyncio.wait({stopper, *waits}, return_when=asyncio.FIRST_COMPLETED)
            for fut in waits:
                fut.cancel()
            stopper.cancel()
            if stop.is_set():
                return
            for fut in done:
                child = waits.get(fut)
                if child is None or child.stopping:
                    continue
                now = time.monotonic()
                child.restarts = [t for t in child.restarts if now - t < 60] + [now]
                if len(child.restarts) > MAX_RESTARTS_PER_MINUTE:
                    log.error("%s keeps crashing; giving up:\n%s", child.name, child.log_tail())
                    stop.set()
                    return
                log.warning(
                    "%s exited with code %s; restarting",
                    child.name,
                    child.process and child.process.returncode,
                )
                await asyncio.sleep(min(5.0, 0.5 * len(child.restarts)))
                await child.spawn()

    async def stop(self) -> None:
        """Stops everything in reverse start order."""
        grace = self.settings.grace_seconds
        for child in reversed(self.children):
            await child.stop(grace)
        if self.temporal:
            await self.temporal.stop()
        if self.postgres:
            await self.postgres.stop()


def install_stop_signals(stop: asyncio.Event) -> Callable[[], None]:
    """Sets ``stop`` on SIGINT/SIGTERM; returns a function that removes the handlers."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    def remove() -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(Exception):
                loop.remove_signal_handler(sig)

    return remove
