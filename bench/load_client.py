"""Load-generating client processes of the suite (kept out of the measured servers' CPU).

``python -m bench.load_client qps TARGET METHOD --request HEX``: unary calls with
``--concurrency`` calls in flight for ``--seconds`` (after a warm-up); requests and
responses stay bytes, so the client's cost is the same whichever server answers. Prints
``{"calls", "seconds", "qps"}``.

``python -m bench.load_client echo --size N``: the raw baseline server, a bare grpc.aio
server whose one generic unary method answers every call with ``N`` fixed bytes. Prints
its port, serves until stdin closes.

``python -m bench.load_client watch TARGET --reports ID,... --per-report K``: ``K``
WatchReport streams per report (from sequence 0); prints ``READY`` once every stream has
seen its first event, then records ``(report, sequence, CLOCK_MONOTONIC)`` of every event
until each stream ends (terminal event). With ``--listen-dsn`` it also LISTENs on the
events channel with a bare asyncpg connection (the raw baseline) in the same process.
Prints the receipts as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from typing import Any

import grpc

from surveymesh.reporting.v1 import reporting_service_pb2 as rpb
from surveymesh.reporting.v1 import reporting_service_pb2_grpc as rgrpc

ECHO_METHOD = "/bench.Echo/Call"


def _metadata() -> tuple[tuple[str, str], ...]:
    token = os.environ.get("BENCH_TOKEN", "")
    return (("authorization", f"Bearer {token}"),) if token else ()


async def qps(args: argparse.Namespace) -> dict[str, Any]:
    request = bytes.fromhex(args.request)
    channels = [grpc.aio.insecure_channel(args.target) for _ in range(args.channels)]
    calls = [
        ch.unary_unary(args.method, request_serializer=None, response_deserializer=None)
        for ch in channels
    ]
    meta = _metadata()
    counting = False
    count = 0
    stop = False

    async def loop(i: int) -> None:
        nonlocal count
        call = calls[i % len(calls)]
        while not stop:
            await call(request, metadata=meta, timeout=30)
            if counting:
                count += 1

    tasks = [asyncio.create_task(loop(i)) for i in range(args.concurrency)]
    await asyncio.sleep(args.warmup)
    counting = True
    began = time.perf_counter()
    await asyncio.sleep(args.seconds)
    counting = False
    elapsed = time.perf_counter() - began
    stop = True
    await asyncio.gather(*tasks)
    for ch in channels:
        await ch.close()
    return {"calls": count, "seconds": elapsed, "qps": count / elapsed}


async def echo(args: argparse.Namespace) -> None:
    payload = b"\x00" * args.size

    async def call(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return payload

    handler = grpc.method_handlers_generic_handler(
        "bench.Echo",
        {"Call": grpc.unary_unary_rpc_method_handler(call)},
    )
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("localhost:0")
    await server.start()
    print(port, flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    await server.stop(0)


async def watch(args: argparse.Namespace) -> dict[str, Any]:
    reports = args.reports.split(",")
    channels = [grpc.aio.insecure_channel(args.target) for _ in range(args.channels)]
    stubs = [rgrpc.ReportingServiceStub(ch) for ch in channels]
    meta = _metadata()
    receipts: list[tuple[str, int, float]] = []
    raw: list[tuple[str, float]] = []
    total = len(reports) * args.per_report
    first_seen = 0
    all_ready = asyncio.Event()

    async def stream(i: int, report_id: str) -> None:
        nonlocal first_seen
        call = stubs[i % len(stubs)].WatchReport(
            rpb.WatchReportRequest(report_id=report_id), metadata=meta, timeout=3600
        )
        first = True
        async for msg in call:
            now = time.monotonic()
            if first:
                first = False
                first_seen += 1
                if first_seen == total:
                    all_ready.set()
                continue
            receipts.append((report_id, msg.event.sequence, now))

    conn = None
    if args.listen_dsn:
        import asyncpg

        conn = await asyncpg.connect(args.listen_dsn)
        await conn.add_listener(
            args.channel, lambda _c, _p, _ch, payload: raw.append((payload, time.monotonic()))
        )
    tasks = [
        asyncio.create_task(stream(i * len(reports) + j, rid))
        for i in range(args.per_report)
        for j, rid in enumerate(reports)
    ]
    await asyncio.wait_for(all_ready.wait(), 120)
    print("READY", flush=True)
    await asyncio.gather(*tasks)
    if conn is not None:
        await conn.close()
    for ch in channels:
        await ch.close()
    return {"receipts": receipts, "raw": raw}


def main() -> None:
    """Command-line entry (see the module docstring)."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    q = sub.add_parser("qps")
    q.add_argument("target")
    q.add_argument("method")
    q.add_argument("--request", default="")
    q.add_argument("--concurrency", type=int, default=16)
    q.add_argument("--channels", type=int, default=2)
    q.add_argument("--seconds", type=float, default=3.0)
    q.add_argument("--warmup", type=float, default=0.5)
    e = sub.add_parser("echo")
    e.add_argument("--size", type=int, required=True)
    w = sub.add_parser("watch")
    w.add_argument("target")
    w.add_argument("--reports", required=True)
    w.add_argument("--per-report", type=int, default=1)
    w.add_argument("--channels", type=int, default=10)
    w.add_argument("--listen-dsn", default="")
    w.add_argument("--channel", default="surveymesh_report_events")
    args = parser.parse_args()
    if args.mode == "qps":
        print(json.dumps(asyncio.run(qps(args))))
    elif args.mode == "echo":
        asyncio.run(echo(args))
    else:
        print(json.dumps(asyncio.run(watch(args))))


if __name__ == "__main__":
    main()
