"""Benchmark of NotificationService on one process.

Measures, against a real embedded PostgreSQL and a real HTTP receiver on loopback:

* webhook delivery latency: ``SendNotification`` called → signed POST received, p50/p99,
  over ``--count`` notifications sent one after another;
* ``SendNotification`` throughput (in-app only) with ``--concurrency`` concurrent callers,
  against a raw baseline: the same concurrency of one-row asyncpg INSERT transactions.

Run: ``python -m bench.bench_notifications [--count 500] [--throughput-count 3000]``.
``DATABASE_URL`` selects an existing database; otherwise an embedded server is started in
a temporary directory. The service runs as ``python -m notification_svc`` (one process,
default delivery policy). Prints one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import orjson

from surveymesh.auth import TokenAuthority, bearer_metadata
from surveymesh.embedded import EmbeddedPostgres, free_port
from surveymesh.notification.v1 import (
    notification_pb2 as npb,
)
from surveymesh.notification.v1 import (
    notification_service_pb2 as pb,
)
from surveymesh.notification.v1 import (
    notification_service_pb2_grpc as pb_grpc,
)

SECRET = "bench-secret-0123456789abcdef0123456789"


class Receiver:
    """Minimal HTTP/1.1 keep-alive server recording when each notification arrived."""

    def __init__(self) -> None:
        self.arrivals: dict[str, float] = {}
        self.expected = 0
        self.all_arrived = asyncio.Event()
        self.port = 0
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while await reader.readline():
                length = 0
                while (h := await reader.readline()) not in (b"\r\n", b"\n", b""):
                    name, _, value = h.decode().partition(":")
                    if name.strip().lower() == "content-length":
                        length = int(value)
                body = await reader.readexactly(length)
                now = time.perf_counter()
                self.arrivals.setdefault(orjson.loads(body)["data"]["notification_id"], now)
                if len(self.arrivals) >= self.expected:
                    self.all_arrived.set()
                writer.write(b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\n\r\n")
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def _latency(stub: Any, meta: Any, rx: Receiver, count: int) -> dict[str, Any]:
    sent: dict[str, float] = {}
    rx.expected = count
    for i in range(count):
        began = time.perf_counter()
        resp = await stub.SendNotification(
            pb.SendNotificationRequest(
                user_id="bob",
                type="report.completed",
                title="Report ready",
                link=f"/reports/r-{i}",
                metadata={"report_id": f"r-{i}", "state": "COMPLETED"},
                channels=[npb.CHANNEL_WEBHOOK],
                idempotency_key=f"lat-{i}-{uuid.uuid4().hex}",
            ),
            metadata=meta,
            timeout=10,
        )
        sent[resp.notification.id] = began
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(rx.all_arrived.wait(), 60)
    ms = [(rx.arrivals[nid] - t) * 1000 for nid, t in sent.items() if nid in rx.arrivals]
    return {
        "notifications": count,
        "received": len(ms),
        "p50_ms": round(_pct(ms, 0.50), 2),
        "p99_ms": round(_pct(ms, 0.99), 2),
        "max_ms": round(max(ms), 2),
        "mean_ms": round(statistics.fmean(ms), 2),
    }


async def _throughput(stub: Any, meta: Any, count: int, concurrency: int) -> float:
    queue = iter(range(count))

    async def caller() -> None:
        for i in queue:
            await stub.SendNotification(
                pb.SendNotificationRequest(
                    user_id=f"user-{i % 50}",
                    type="report.completed",
                    title="Report ready",
                    link="/reports/r",
                    metadata={"report_id": f"r-{i}"},
                    channels=[npb.CHANNEL_IN_APP],
                    idempotency_key=f"tp-{i}-{uuid.uuid4().hex}",
                ),
                metadata=meta,
                timeout=10,
            )

    began = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(concurrency)))
    return count / (time.perf_counter() - began)


async def _baseline(dsn: str, count: int, concurrency: int) -> float:
    """Raw asyncpg: one-row INSERT transactions of a similar row, same concurrency."""
    pool = await asyncpg.create_pool(dsn, min_size=concurrency, max_size=concurrency)
    assert pool is not None
    try:
        await pool.execute(
            "CREATE TABLE IF NOT EXISTS bench_raw (id uuid PRIMARY KEY, org_id text, user_id text,"
            " title text, metadata jsonb, key text, UNIQUE (org_id, key))"
        )
        queue = iter(range(count))

        async def caller() -> None:
            async with pool.acquire() as conn:
                for i in queue:
                    async with conn.transaction():
                        await conn.execute(
                            "INSERT INTO bench_raw VALUES ($1, 'o', $2, 'Report ready', $3, $4)",
                            uuid.uuid4(),
                            f"user-{i % 50}",
                            json.dumps({"report_id": f"r-{i}"}),
                            uuid.uuid4().hex,
                        )

        began = time.perf_counter()
        await asyncio.gather(*(caller() for _ in range(concurrency)))
        return count / (time.perf_counter() - began)
    finally:
        await pool.execute("DROP TABLE IF EXISTS bench_raw")
        await pool.close()


async def run(count: int, throughput_count: int, concurrency: int) -> dict[str, Any]:
    """Runs both measurements and returns the figures."""
    tmp = Path(tempfile.mkdtemp(prefix="bench-notifications-"))
    pg: EmbeddedPostgres | None = None
    dsn = os.environ.get("DATABASE_URL", "")
    if not dsn:
        pg = EmbeddedPostgres(tmp / "pg", port=free_port())
        await pg.start()
        name = f"bench_notification_{uuid.uuid4().hex[:8]}"
        await pg.ensure_database(name)
        dsn = pg.dsn(name)
    authority = TokenAuthority(SECRET)
    port = free_port()
    # The service runs as its own process, as deployed, so the benchmark client does not
    # share its event loop (or its CPU) with the server.
    env = {
        **os.environ,
        "DATABASE_URL": dsn,
        "SURVEYMESH_JWT_SECRET": SECRET,
        "SURVEYMESH_NOTIFICATION_PORT": str(port),
        "SURVEYMESH_DATA_DIR": str(tmp),
        "SURVEYMESH_DB_POOL_MAX": "20",
        "SURVEYMESH_LOG_LEVEL": "WARNING",
    }
    service = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "notification_svc", env=env
    )
    rx = Receiver()
    await rx.start()
    org = f"bench-{uuid.uuid4().hex[:8]}"
    meta = bearer_metadata(authority.mint(org=org, user="worker", roles=["service", "admin"]))
    try:
        async with grpc.aio.insecure_channel(f"localhost:{port}") as channel:
            await asyncio.wait_for(channel.channel_ready(), 60)
            stub = pb_grpc.NotificationServiceStub(channel)
            await stub.CreateWebhookEndpoint(
                pb.CreateWebhookEndpointRequest(url=f"http://127.0.0.1:{rx.port}/hook"),
                metadata=meta,
                timeout=10,
            )
            latency = await _latency(stub, meta, rx, count)
            send_rate = await _throughput(stub, meta, throughput_count, concurrency)
        raw_rate = await _baseline(dsn, throughput_count, concurrency)
    finally:
        await rx.stop()
        service.send_signal(signal.SIGTERM)
        await asyncio.wait_for(service.wait(), 30)
        if pg is not None:
            await pg.stop()
    return {
        "benchmark": "notifications",
        "webhook_latency_send_to_received": latency,
        "send_in_app": {
            "notifications": throughput_count,
            "concurrency": concurrency,
            "per_second": round(send_rate, 1),
            "baseline_raw_asyncpg_insert_per_second": round(raw_rate, 1),
            "ratio_to_baseline": round(send_rate / raw_rate, 3),
        },
        "cpu_count": os.cpu_count(),
    }


def main() -> None:
    """Command-line entry: prints the figures as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=500, help="webhook notifications timed")
    parser.add_argument("--throughput-count", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args()
    result = asyncio.run(run(args.count, args.throughput_count, args.concurrency))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
