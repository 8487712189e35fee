"""The generated TypeScript client (buf + protoc-gen-es + Connect-ES) against the real mesh.

The test does what an integrator does: installs the npm packages of tests/ts_client (from
its lock file), generates the client from proto/ with ``buf generate --template
buf.gen.yaml`` (a local plugin, no network), type-checks and compiles it with ``tsc``, and
runs a program that creates a survey, imports responses, generates a report, follows
WatchReport to the end and fetches the report.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from tests.integration.mesh_stack import MeshStack, whole_mesh

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

ROOT = Path(__file__).resolve().parents[2]
TS_DIR = ROOT / "tests" / "ts_client"


async def _run(*cmd: str, cwd: Path, env: dict[str, str] | None = None) -> str:
    """Runs a build step without blocking the event loop the mesh runs on."""
    proc = await asyncio.create_subprocess_exec(
        *cmd,
        cwd=cwd,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 240)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{out.decode()}"
    return out.decode()


@pytest.fixture(scope="module")
async def ts_program() -> Path:
    """The compiled end-to-end program, built from a freshly generated client."""
    npm = shutil.which("npm")
    if not npm or not shutil.which("node"):
        pytest.fail("Node.js (20 or later) and npm are required for the TypeScript client test")
    if not (TS_DIR / "node_modules" / ".bin" / "protoc-gen-es").exists():
        await _run(npm, "ci", "--no-audit", "--no-fund", cwd=TS_DIR)
    buf = Path(sys.executable).parent / "buf"
    await _run(
        str(buf if buf.exists() else "buf"), "generate", "--template", "buf.gen.yaml", cwd=ROOT
    )
    generated = sorted(
        p.relative_to(TS_DIR / "gen").as_posix() for p in (TS_DIR / "gen").rglob("*.ts")
    )
    assert "surveymesh/reporting/v1/reporting_service_pb.ts" in generated
    assert len(generated) == 7, generated
    await _run(str(TS_DIR / "node_modules" / ".bin" / "tsc"), "-p", "tsconfig.json", cwd=TS_DIR)
    return TS_DIR / "dist" / "src" / "e2e.js"


@pytest.fixture(scope="module")
async def mesh(
    new_database: Callable[[str], Awaitable[str]],
    temporal_env: Any,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[MeshStack]:
    async with whole_mesh(new_database, temporal_env.client, tmp_path_factory.mktemp("ts")) as m:
        yield m


async def test_typescript_client_end_to_end(ts_program: Path, mesh: MeshStack, org: str) -> None:
    node = shutil.which("node")
    assert node
    out = await _run(
        node,
        str(ts_program),
        cwd=TS_DIR,
        env={
            "PATH": str(Path(node).parent),
            "DELIVERY_ADDRESS": mesh.addresses["delivery"],
            "REPORTING_ADDRESS": mesh.addresses["reporting"],
            "TOKEN": mesh.token(org, user="ts", role="analyst"),
            "RESPONSES": "40",
        },
    )
    seen = json.loads(out.strip().splitlines()[-1])
    assert (seen["accepted"], seen["rejected"]) == (40, 0)
    assert seen["sequences"] == list(range(1, len(seen["sequences"]) + 1))
    assert seen["terminal"] == "COMPLETED"
    assert seen["state"] == "COMPLETED"
    assert seen["response_count"] == 40
    assert set(seen["components"]) >= {"basic_stats", "nps", "csat", "summary"}
    assert seen["rendered_bytes"] > 0 and seen["content_type"].startswith("application/json")
    assert seen["missing_code"] == "NotFound"

    # What the TypeScript program created is visible to the Python side: one contract.
    async with mesh.client(org) as client:
        report = await client.get_report(seen["report_id"])
        assert report.survey_id == seen["survey_id"]
        assert report.creator == "ts"
