"""``surveymesh up``: the README's first command, on a fresh data dir, then resumed."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import sys
from pathlib import Path
from typing import Any

import httpx
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
        SURVEYMESH_METRICS_PORT=str(_free_port_range(5)),
        SURVEYMESH_CODEC_PORT=str(free_port()),
    )
    temporal_port = free_port()
    env["SURVEYMESH_TEMPORAL_PORT"] = str(temporal_port)
    return env


def _free_port_range(count: int) -> int:
    """The first of ``count`` consecutive free ports (`up` gives each child its own)."""
    for _ in range(50):
        base = free_port()
        try:
            with contextlib.ExitStack() as stack:
                for port in range(base, base + count):
                    sock = stack.enter_context(socket.socket())
                    sock.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
    raise RuntimeError(f"no {count} consecutive free ports")


def _spans(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


async def _scrape(url: str, expect: str, timeout: float = 60) -> str:  # noqa: ASYNC109
    """The text at ``url`` once it answers 200 and contains ``expect`` (a child that just
    started serves its endpoint before it has recorded the metric)."""
    deadline = asyncio.get_running_loop().time() + timeout
    text = ""
    async with httpx.AsyncClient(timeout=5) as http:
        while True:
            try:
                response = await http.get(url)
                if response.status_code == 200:
                    text = response.text
                    if expect in text:
                        return text
            except httpx.HTTPError:
                pass
            assert asyncio.get_running_loop().time() < deadline, f"{url}: no {expect!r} in {text!r}"
            await asyncio.sleep(0.5)


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


async def _shell(command: str, env: dict[str, str]) -> str:
    proc = await asyncio.create_subprocess_shell(
        command, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, out.decode()
    return out.decode()


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
    assert "Metrics (worker)" in text and "Temporal SDK metrics" in text and "Traces" in text

    # The demo report is one trace across processes (development: JSON lines in the data
    # dir): Reporting's GenerateReport and the worker's activities (the notification may
    # still be pending when --exit-after-demo stops the mesh).
    traces = tmp_path / "data" / "traces"
    generate = [
        s
        for s in _spans(traces / "reporting.jsonl")
        if s["name"] == "/surveymesh.reporting.v1.ReportingService/GenerateReport"
        and s["kind"] == "SpanKind.SERVER"
    ]
    assert len(generate) == 1
    trace_id = generate[0]["context"]["trace_id"]
    worker = {
        s["name"] for s in _spans(traces / "worker.jsonl") if s["context"]["trace_id"] == trace_id
    }
    assert {"RunActivity:report.snapshot", "RunActivity:report.compile"} <= worker

    # A second `up` on the same data dir resumes (no re-init) and stops cleanly on SIGTERM.
    second = await _run(env)
    try:
        assert second.stdout is not None
        seen = ""
        while "Press Ctrl-C" not in seen:
            line = await asyncio.wait_for(second.stdout.readline(), 120)
            assert line, seen
            seen += line.decode()
        children = _descendants_alive(second.pid)

        # The history of the demo's workflow, through the codec endpoint `up` runs: exactly the
        # command the first run printed (its payloads are encrypted without the codec).
        show = next(line.strip() for line in text.splitlines() if "temporal workflow show" in line)
        path = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        shell = {**env, "PATH": path}
        decoded = await _shell(show, shell)
        raw = await _shell(show.split(" --codec-endpoint")[0], shell)
        assert '"state":"completed"' in decoded and "json/plain" in decoded, decoded
        assert '"state":"completed"' not in raw and "binary/encrypted" in raw, raw
        # Each child serves its metrics; the worker also the Temporal SDK's.
        base = int(env["SURVEYMESH_METRICS_PORT"])
        await _scrape(f"http://localhost:{base + 2}/metrics", "surveymesh_rpc_server_handled_total")
        await _scrape(f"http://localhost:{base + 4}/metrics", "temporal_")
        assert len(children) >= 6  # postgres, temporal, 3 services, worker (plus their helpers)
    except BaseException:
        # Stop the mesh of a failed check too: its children must not outlive the test.
        second.send_signal(signal.SIGTERM)
        await asyncio.wait_for(second.communicate(), 120)
        raise
    second.send_signal(signal.SIGTERM)
    rest, _ = await asyncio.wait_for(second.communicate(), 120)
    assert second.returncode == 0, seen + rest.decode()
    await asyncio.sleep(0.5)
    assert [p for p in children if p.is_running() and p.status() != psutil.STATUS_ZOMBIE] == []


async def test_up_stops_its_children_when_its_output_is_gone(tmp_path: Path) -> None:
    """A terminal closed under `up` (its stdout a broken pipe) must not leave the mesh
    running: printing "Stopping" fails, the children are stopped all the same."""
    env = _env(tmp_path / "data")
    read_end, write_end = os.pipe()
    up = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "surveymesh.cli", "up", env=env, stdout=write_end, stderr=write_end
    )
    os.close(write_end)
    loop = asyncio.get_running_loop()
    seen = b""
    try:
        while b"Press Ctrl-C" not in seen:
            chunk = await asyncio.wait_for(loop.run_in_executor(None, os.read, read_end, 4096), 120)
            assert chunk, seen.decode()
            seen += chunk
        children = _descendants_alive(up.pid)
        assert len(children) >= 6, seen.decode()
    finally:
        os.close(read_end)  # from here on, every write of `up` fails with EPIPE
    up.send_signal(signal.SIGTERM)
    await asyncio.wait_for(up.wait(), 120)
    await asyncio.sleep(0.5)
    assert [p for p in children if p.is_running() and p.status() != psutil.STATUS_ZOMBIE] == []
