"""Peer channels balance calls over every address of a name with ``round_robin``.

Two real grpc.aio servers answer the standard health service; each reports a different
status for one service name, so the answers show which server took each call. The target
``ipv4:127.0.0.1:A,127.0.0.1:B`` stands for a name that resolves to two replicas (what a
Kubernetes headless Service's DNS name returns).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from surveymesh.channels import open_channel
from surveymesh.config import ConfigError, Settings

pytestmark = pytest.mark.integration

SERVING, NOT_SERVING = (
    health_pb2.HealthCheckResponse.SERVING,
    health_pb2.HealthCheckResponse.NOT_SERVING,
)


@pytest.fixture
async def replicas() -> AsyncIterator[str]:
    """Two servers; the target naming both."""
    servers, ports = [], []
    for status in (SERVING, NOT_SERVING):
        server = grpc.aio.server()
        servicer = health.aio.HealthServicer()
        await servicer.set("replica", status)
        health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
        ports.append(server.add_insecure_port("127.0.0.1:0"))
        await server.start()
        servers.append(server)
    yield "ipv4:" + ",".join(f"127.0.0.1:{p}" for p in ports)
    for server in servers:
        await server.stop(None)


async def _answers(settings: Settings, target: str, calls: int) -> Counter[int]:
    channel = open_channel(settings, target)
    try:
        stub = health_pb2_grpc.HealthStub(channel)
        await channel.channel_ready()
        request = health_pb2.HealthCheckRequest(service="replica")
        return Counter([(await stub.Check(request, timeout=5)).status for _ in range(calls)])
    finally:
        await channel.close()


async def test_round_robin_spreads_calls_over_every_replica(replicas: str) -> None:
    answers = await _answers(Settings(peer_load_balancing="round_robin"), replicas, 40)
    # round_robin takes the replicas in turn once both are connected.
    assert answers[SERVING] >= 15 and answers[NOT_SERVING] >= 15, answers


async def test_pick_first_keeps_one_connection(replicas: str) -> None:
    answers = await _answers(Settings(), replicas, 20)
    assert answers == Counter({SERVING: 20})


def test_unknown_policy_is_refused() -> None:
    with pytest.raises(ConfigError, match="SURVEYMESH_PEER_LOAD_BALANCING"):
        Settings.from_env({"SURVEYMESH_PEER_LOAD_BALANCING": "random"})
    env = {"SURVEYMESH_PEER_LOAD_BALANCING": "round_robin"}
    assert Settings.from_env(env).peer_load_balancing == "round_robin"
