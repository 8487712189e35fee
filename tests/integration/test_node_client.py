"""Cross-language check: a Node.js client built from proto/ talks to the real DeliveryService."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from surveymesh.auth import TokenAuthority
from surveymesh.config import Settings
from tests.conftest import TEST_SECRET

NODE_DIR = Path(__file__).resolve().parents[1] / "node"
pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def node_client() -> Path:
    """The Node project with its dependencies installed from the npm registry."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if not node or not npm:
        pytest.fail("Node.js and npm are required for the cross-language check")
    if not (NODE_DIR / "node_modules" / "@grpc" / "grpc-js").exists():
        subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund"], cwd=NODE_DIR, check=True, capture_output=True
        )
    return NODE_DIR / "delivery_roundtrip.mjs"


async def test_node_client_imports_and_streams_back(
    node_client: Path, new_database, authority: TokenAuthority, org: str
) -> None:
    from delivery_svc.server import create_server

    settings = Settings(database_url=await new_database("node"), jwt_secret=TEST_SECRET)
    service = await create_server(settings, address="localhost:0")
    try:
        token = authority.mint(org=org, user="node", roles=["analyst"])
        proc = await asyncio.create_subprocess_exec(
            "node",
            str(node_client),
            env={
                "PATH": shutil.which("node").rsplit("/", 1)[0],  # type: ignore[union-attr]
                "DELIVERY_ADDRESS": f"localhost:{service.port}",
                "TOKEN": token,
                "RESPONSES": "25",
            },
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode == 0, err.decode()
        seen = json.loads(out.decode().strip().splitlines()[-1])
    finally:
        await service.stop()

    assert seen["accepted"] == 25
    assert seen["rejected"] == 1
    assert seen["rejection_reasons"] == ["ANSWER_OUT_OF_RANGE"]
    assert seen["streamed_ids"] == [f"node-{i:04d}" for i in range(25)]
