"""The built-in gRPC health probe (``python -m surveymesh.healthcheck``) that compose uses.

It runs as a real subprocess against a real server started by the shared bootstrap, exactly
as Docker runs it inside the container.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator

import pytest
from grpc_health.v1 import health_pb2

from surveymesh.auth import TokenAuthority
from surveymesh.embedded import free_port
from surveymesh.grpcserver import ServerHandle, start_server
from surveymesh.healthcheck import (
    EXIT_NOT_SERVING,
    EXIT_SERVING,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    main,
)

SERVICE = "surveymesh.delivery.v1.DeliveryService"


async def probe(*args: str) -> tuple[int, str]:
    """Runs the probe as its own process, as a container healthcheck does."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "surveymesh.healthcheck",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode()


@pytest.fixture
async def server(authority: TokenAuthority) -> AsyncIterator[ServerHandle]:
    handle = await start_server([], authority=authority, domain="test", address="localhost:0")
    # The bootstrap marks the server ("") SERVING; register a named service as a service does.
    await handle.health.set(SERVICE, health_pb2.HealthCheckResponse.SERVING)
    yield handle
    await handle.server.stop(0)


async def test_serving_server_exits_zero(server: ServerHandle) -> None:
    code, out = await probe(f"localhost:{server.port}")
    assert code == EXIT_SERVING, out
    assert "SERVING" in out


async def test_named_service_serving_and_unknown(server: ServerHandle) -> None:
    code, out = await probe(f"localhost:{server.port}", "--service", SERVICE)
    assert code == EXIT_SERVING, out
    code, out = await probe(f"localhost:{server.port}", "--service", "no.such.Service")
    assert code == EXIT_NOT_SERVING, out


async def test_not_serving_during_graceful_shutdown_exits_one(server: ServerHandle) -> None:
    # What a SIGTERMed service does first: every status goes NOT_SERVING, so probes fail
    # while in-flight calls still finish.
    await server.health.enter_graceful_shutdown()
    code, out = await probe(f"localhost:{server.port}", "--service", SERVICE)
    assert code == EXIT_NOT_SERVING, out
    code, out = await probe(f"localhost:{server.port}")
    assert code == EXIT_NOT_SERVING, out


async def test_unreachable_exits_two() -> None:
    code, out = await probe(f"127.0.0.1:{free_port()}", "--timeout", "0.5")
    assert code == EXIT_UNREACHABLE, out


def test_bad_arguments_exit_usage() -> None:
    assert main([]) == EXIT_USAGE
    assert main(["localhost:1", "--timeout", "0"]) == EXIT_USAGE
    assert main(["localhost:1", "--timeout", "soon"]) == EXIT_USAGE
