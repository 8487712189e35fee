"""``surveymesh up``: the README's first command, on a fresh data dir, then resumed."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import psutil
import pytest

from surveymesh.embedded import free_port

pytestmark = [pytest.mark.integration, pytest.mark.timeout(420)]


def _env(data_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "TEMPORAL_ADDRESS"}}
    env.update(
        SURVEYMESH_DATA_DIR=str(data_dir),
        SURVEYMESH_REPORTING_PORT=str(free_port()),
        SURVEYMESH_DELIVERY_PORT=str(free_port()),
        SURVEYMESH_NOTIFICATION_PORT=str(free_port()),
        SURVEYMESH_POSTGRES_PORT=str(free_port()),
        SURVEYMESH_TEMPORAL_UI_PORT="0",
        SURVEYMESH_WEB_PORT=str(free_port()),
        SURVEYMESH_GRACE_SECONDS="3",
    )
    temporal_port = free_port()
    env["SURVEYMESH_TEMPORAL_PORT"] = str(temporal_port)
    return env


async def _run(env: dict[str, str], *args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "surveymesh.cli",
        "up",
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )


def _descendants_alive(pid: int) -> list[psutil.Process]:
    try:
        return [p for p in psutil.Process(pid).children(recursive=True) if p.is_running()]
    except psutil.NoSuchProcess:
        return []


async def test_up_runs_the_demo_then_resumes_and_stops_cleanly(tmp_path: Path) -> None:
    env = _env(tmp_path / "data")

    first = await _run(env, "--demo", "--demo-responses", "400", "--exit-after-demo")
    out, _ = await asyncio.wait_for(first.communicate(), 360)
    text = out.decode()
    assert first.returncode == 0, text
    assert "SurveyMesh is up" in text
    assert "is ready" in text and "grpcurl -plaintext" in text

    # A second `up` on the same data dir resumes (no re-init) and stops cleanly on SIGTERM.
    second = await _run(env)
    assert second.stdout is not None
    seen = ""
    while "Press Ctrl-C" not in seen:
        line = await asyncio.wait_for(second.stdout.readline(), 120)
        assert line, seen
        seen += line.decode()
    children = _descendants_alive(second.pid)
    assert len(children) >= 6  # postgres, temporal, 3 services, worker (plus their helpers)
    second.send_signal(signal.SIGTERM)
    rest, _ = await asyncio.wait_for(second.communicate(), 120)
    assert second.returncode == 0, seen + rest.decode()
    await asyncio.sleep(0.5)
    assert [p for p in children if p.is_running() and p.status() != psutil.STATUS_ZOMBIE] == []
