"""The ``surveymesh`` client commands against the whole real mesh.

The README's CSV → report flow runs as real processes (what a user types); the other
commands run in-process through the same argument parser, for speed.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from pypdf import PdfReader

from surveymesh.cli import build_parser, run_client_command
from surveymesh.config import Settings
from surveymesh.embedded import free_port
from tests.integration.mesh_stack import MeshStack, whole_mesh

pytestmark = pytest.mark.integration

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "csv"


@pytest.fixture(scope="module")
async def mesh(
    new_database: Callable[[str], Awaitable[str]],
    temporal_env: Any,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[MeshStack]:
    async with whole_mesh(new_database, temporal_env.client, tmp_path_factory.mktemp("cli")) as m:
        yield m


async def surveymesh(env: dict[str, str], *args: str) -> tuple[int, str, str]:
    """Runs the real command in a child process (without blocking the mesh's event loop)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "surveymesh.cli",
        *args,
        env={"PATH": "/usr/bin:/bin", **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 100)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


class Cli:
    """Runs client commands in-process as one user of one organization."""

    def __init__(self, mesh: MeshStack, org: str, capsys: pytest.CaptureFixture[str]) -> None:
        self.mesh, self.org, self.capsys = mesh, org, capsys

    async def __call__(
        self, *argv: str, role: str = "analyst", user: str = "alice"
    ) -> tuple[int, str, str]:
        env = self.mesh.env(self.org, role=role, user=user)
        args = build_parser().parse_args([*argv, "--token", env["SURVEYMESH_TOKEN"]])
        self.capsys.readouterr()
        code = await run_client_command(args, Settings.from_env(env))
        captured = self.capsys.readouterr()
        return code, captured.out, captured.err

    async def json(self, *argv: str, **kw: str) -> Any:
        code, out, err = await self(*argv, "--output", "json", **kw)
        assert code == 0, err
        return json.loads(out)


@pytest.fixture
def cli(mesh: MeshStack, org: str, capsys: pytest.CaptureFixture[str]) -> Cli:
    return Cli(mesh, org, capsys)


async def test_csv_to_rendered_report_in_three_commands(
    mesh: MeshStack, org: str, tmp_path: Path
) -> None:
    """The README's flow, command for command: CSV export in, PDF report out."""
    env = mesh.env(org)
    code, out, err = await surveymesh(
        env, "survey", "import", "--from-csv", str(FIXTURES / "google_forms.csv"), "--create",
        "--output", "json",
    )  # fmt: skip
    assert code == 0, err
    imported = json.loads(out)
    assert imported["created"] is True and imported["layout"] == "google_forms"
    assert (imported["accepted"], imported["rejected"]) == (7, 1)
    assert [(r["line"], r["reason"]) for r in imported["rejections"]] == [(8, "NOT_AN_INTEGER")]

    code, out, err = await surveymesh(env, "report", "generate", imported["survey_id"], "--watch")
    assert code == 0, err
    report_id, state = out.split()[:2]
    assert state == "COMPLETED"

    target = tmp_path / "report.pdf"
    code, out, err = await surveymesh(
        env, "report", "render", report_id, "--format", "pdf", "-o", str(target)
    )
    assert code == 0, err
    assert out.startswith(str(target))
    assert target.read_bytes().startswith(b"%PDF-")
    text = " ".join(page.extract_text() for page in PdfReader(target).pages)
    assert "satisfied" in text  # a question of the CSV made it into the PDF


async def test_survey_commands(cli: Cli, tmp_path: Path) -> None:
    spec = tmp_path / "survey.json"
    spec.write_text(
        json.dumps(
            {
                "title": "Pulse",
                "questions": [
                    {"id": "nps", "text": "Would you recommend us?", "type": "nps"},
                    {"id": "sat", "text": "How satisfied are you overall?", "type": "rating"},
                ],
            }
        )
    )
    created = await cli.json("survey", "create", "--from-file", str(spec))
    survey_id = created["survey"]["id"]
    assert [q["type"] for q in created["survey"]["questions"]] == [
        "QUESTION_TYPE_NPS",
        "QUESTION_TYPE_RATING",
    ]

    # Import a Google Forms export into it: the mapping names the NPS column's question.
    mapping = tmp_path / "map.json"
    mapping.write_text(
        json.dumps(
            {"questions": {"How likely are you to recommend Acme to a friend?": {"id": "nps"}}}
        )
    )
    code, out, err = await cli(
        "survey", "import", survey_id, "--from-csv", str(FIXTURES / "google_forms.csv"),
        "--mapping", str(mapping),
    )  # fmt: skip
    assert code == 0, err
    assert out.startswith(f"{survey_id}  imported 7, duplicates 0, rejected 1")
    assert "line 8: How satisfied are you overall?: NOT_AN_INTEGER" in out
    assert "matches no question" in err  # the plan/feature columns are not in this survey
    # Importing the same file again stores nothing twice.
    again = await cli.json(
        "survey", "import", survey_id, "--from-csv", str(FIXTURES / "google_forms.csv"),
        "--mapping", str(mapping),
    )  # fmt: skip
    assert (again["accepted"], again["duplicates"]) == (0, 7)

    listed = await cli.json("survey", "list")
    assert [s["id"] for s in listed["surveys"]] == [survey_id]
    got = await cli.json("survey", "get", survey_id)
    assert got["survey"]["response_count"] == "7"

    dry = await cli.json(
        "survey", "import", "--create", "--dry-run", "--from-csv", str(FIXTURES / "qualtrics.csv")
    )
    assert dry["layout"] == "qualtrics"
    assert [q["type"] for q in dry["questions"]] == [
        "nps",
        "rating",
        "multiple_choice",
        "number",
        "free_text",
    ]
    assert (await cli.json("survey", "list"))["surveys"][0]["id"] == survey_id  # nothing created


async def test_report_commands_and_exit_codes(cli: Cli, mesh: MeshStack, tmp_path: Path) -> None:
    imported = await cli.json(
        "survey", "import", "--create", "--from-csv", str(FIXTURES / "typeform.csv")
    )
    survey_id = imported["survey_id"]

    code, out, err = await cli("report", "generate", survey_id, "--watch", "--output", "json")
    assert code == 0, err
    lines = [json.loads(line) for line in out.splitlines()]
    events, final = [x["event"] for x in lines[:-1]], lines[-1]["report"]
    assert [int(e["sequence"]) for e in events] == list(range(1, len(events) + 1))
    assert events[-1]["type"] == "REPORT_EVENT_TYPE_COMPLETED"
    report_id = final["id"]
    assert final["state"] == "REPORT_STATE_COMPLETED"

    full = await cli.json("report", "get", report_id, "--view", "full")
    summary = next(c for c in full["report"]["components"] if c["type"] == "summary")
    assert isinstance(summary["data"], dict)  # inlined as JSON, not base64
    listed = await cli.json("report", "list", "--survey", survey_id, "--state", "completed")
    assert [r["id"] for r in listed["reports"]] == [report_id]

    # Exit codes and one-line errors from the gRPC status.
    code, _, err = await cli("report", "get", "00000000-0000-4000-8000-000000000000")
    assert code == 3 and err.startswith("surveymesh: NOT_FOUND REPORT_NOT_FOUND")
    code, _, err = await cli("report", "cancel", report_id)
    assert code == 6 and "FAILED_PRECONDITION REPORT_ALREADY_FINISHED" in err
    code, _, err = await cli("report", "generate", survey_id, role="viewer")
    assert code == 4 and "PERMISSION_DENIED" in err
    code, _, err = await cli(
        "report",
        "render",
        report_id,
        "--format",
        "json",
        "-o",
        str(tmp_path / "missing" / "x.json"),
    )
    assert code == 2
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"title": "", "questions": []}))
    code, _, err = await cli("survey", "create", "--from-file", str(bad))
    assert code == 2 and "INVALID_ARGUMENT INVALID_SURVEY" in err and "survey.title" in err
    assert len(err.strip().splitlines()) == 1
    code, _, err = await cli(
        "survey", "import", "--create", "--from-csv", str(tmp_path / "nope.csv")
    )
    assert code == 2

    rendered = await cli.json(
        "report", "render", report_id, "--format", "json", "-o", str(tmp_path / "r.json")
    )
    assert rendered["size"] == (tmp_path / "r.json").stat().st_size > 0
    assert rendered["content_type"].startswith("application/json")


async def test_unauthenticated_and_unavailable_exit_codes(mesh: MeshStack, org: str) -> None:
    env = mesh.env(org)
    env["SURVEYMESH_TOKEN"] = "not-a-token"
    code, _, err = await surveymesh(env, "survey", "list")
    assert code == 4 and err.startswith("surveymesh: UNAUTHENTICATED")
    env = mesh.env(org)
    env["SURVEYMESH_DELIVERY_ADDRESS"] = f"localhost:{free_port()}"
    code, _, err = await surveymesh(env, "survey", "list", "--timeout", "2")
    assert code == 5 and err.startswith("surveymesh: UNAVAILABLE")
    code, out, _ = await surveymesh(
        env, "token", "--org", org, "--user", "me", "--role", "viewer", "--output", "json"
    )
    assert code == 0 and json.loads(out)["roles"] == ["viewer"]


async def test_notifications_and_webhooks(cli: Cli) -> None:
    imported = await cli.json(
        "survey", "import", "--create", "--from-csv", str(FIXTURES / "qualtrics.csv"), user="carol"
    )
    code, _, err = await cli("report", "generate", imported["survey_id"], "--watch", user="carol")
    assert code == 0, err

    watched = await asyncio.wait_for(
        cli.json("notifications", "watch", "--count", "1", user="carol"), 30
    )
    note = watched["notification"]
    unread = await cli.json("notifications", "list", "--unread", user="carol")
    assert [n["id"] for n in unread["notifications"]] == [note["id"]]
    assert (await cli.json("notifications", "read", note["id"], user="carol"))["notification"][
        "read"
    ]
    assert (await cli.json("notifications", "list", "--unread", user="carol"))[
        "notifications"
    ] == []

    added = await cli.json(
        "webhooks", "add", "http://localhost:9/hook", "--event", "report.completed", role="admin"
    )
    endpoint_id = added["endpoint"]["id"]
    assert added["secret"]
    assert [e["id"] for e in (await cli.json("webhooks", "list", role="admin"))["endpoints"]] == [
        endpoint_id
    ]
    assert (await cli.json("webhooks", "rm", endpoint_id, role="admin")) == {"deleted": endpoint_id}
    code, _, err = await cli("webhooks", "rm", endpoint_id, role="admin")
    assert code == 3
