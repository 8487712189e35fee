"""The ``surveymesh`` command line.

``surveymesh up [--demo]`` runs the whole mesh on this machine; ``surveymesh token`` mints
a development token signed with the data dir's secret (for grpcurl and scripts). The other
commands (``survey``, ``report``, ``notifications``, ``webhooks``) are clients of a running
mesh, built on :class:`surveymesh.client.SurveyMeshClient`: addresses come from
``SURVEYMESH_*_ADDRESS`` (default: the local ports), the token from ``SURVEYMESH_TOKEN`` or
``--token``. Every command takes ``--output json`` for scripts.

Exit codes: 0 success; 1 other failure (also a watched report that FAILED or was CANCELLED);
2 bad input (INVALID_ARGUMENT, an unreadable file or CSV); 3 NOT_FOUND; 4 UNAUTHENTICATED or
PERMISSION_DENIED; 5 UNAVAILABLE, DEADLINE_EXCEEDED or RESOURCE_EXHAUSTED (try again);
6 FAILED_PRECONDITION, ALREADY_EXISTS or ABORTED (wrong state).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import sys
import uuid
from pathlib import Path

from surveymesh.auth import ROLES, TokenAuthority
from surveymesh.config import ConfigError, Settings
from surveymesh.logs import configure_logging

DEMO_ORG = "demo"
DEMO_USER = "demo-analyst"


def _authority(settings: Settings) -> TokenAuthority:
    return TokenAuthority(
        settings.signing_secret(), audience=settings.jwt_audience, issuer=settings.jwt_issuer
    )


def cmd_token(args: argparse.Namespace, settings: Settings) -> int:
    """Prints a signed development token."""
    token = _authority(settings).mint(
        org=args.org, user=args.user, roles=args.role, ttl_seconds=args.ttl
    )
    if getattr(args, "output", "text") == "json":
        print(json.dumps({"token": token, "org": args.org, "user": args.user, "roles": args.role}))
    else:
        print(token)
    return 0


def _grpcurl_hints(
    settings: Settings, survey_id: str, report_id: str, *, workflow: str, temporal: str
) -> str:
    h = '-H "authorization: Bearer $TOKEN"'
    d, r = f"localhost:{settings.delivery_port}", f"localhost:{settings.reporting_port}"
    admin = f"surveymesh token --org {DEMO_ORG} --user {DEMO_USER} --role admin"
    return "\n".join(
        [
            "Try next:",
            f"  export TOKEN=$(surveymesh token --org {DEMO_ORG} --user {DEMO_USER} --role analyst)",
            f"  grpcurl -plaintext {d} list",
            f"  grpcurl -plaintext {d} describe surveymesh.delivery.v1.DeliveryService",
            f'  grpcurl -plaintext {h} -d \'{{"survey_id": "{survey_id}"}}\' {d} '
            "surveymesh.delivery.v1.DeliveryService/GetSurvey",
            f'  grpcurl -plaintext {h} -d \'{{"survey_id": "{survey_id}", "batch_size": 2}}\' {d} '
            "surveymesh.delivery.v1.DeliveryService/StreamResponses | head -40",
            f'  grpcurl -plaintext {h} -d \'{{"report_id": "{report_id}", "view": "REPORT_VIEW_BASIC"}}\' '
            f"{r} surveymesh.reporting.v1.ReportingService/GetReport",
            f'  grpcurl -plaintext {h} -d \'{{"report_id": "{report_id}", "component_type": "summary"}}\' '
            f"{r} surveymesh.reporting.v1.ReportingService/GetReportComponent",
            f'  grpcurl -plaintext {h} -d \'{{"report_id": "{report_id}"}}\' {r} '
            "surveymesh.reporting.v1.ReportingService/WatchReport",
            "  # the workflow's history, payloads decrypted by the mesh's codec endpoint:",
            f"  temporal workflow show --address {temporal} -w {workflow} "
            f"--codec-endpoint http://localhost:{settings.codec_port} "
            f'--codec-auth "Bearer $({admin})"',
        ]
    )


async def _run_demo(settings: Settings, count: int, request_id: str) -> tuple[str, str, int]:
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from surveymesh.demo import load_and_report
    from surveymesh.reporting.v1 import report_pb2

    token = _authority(settings).mint(org=DEMO_ORG, user=DEMO_USER, roles=["analyst"])
    with Progress(
        TextColumn("[bold]demo report[/]"),
        BarColumn(),
        TextColumn("{task.percentage:>3.0f}%"),
        TextColumn("{task.fields[stage]}"),
        TimeElapsedColumn(),
    ) as progress:
        task = progress.add_task("report", total=100, stage="importing responses")

        def on_event(event: report_pb2.ReportEvent) -> None:
            # "statistics", "themes ready", "completed": what a person wants to read.
            kind = report_pb2.ReportEventType.Name(event.type).removeprefix("REPORT_EVENT_TYPE_")
            if event.component_type:
                label = f"{event.component_type} ready"
            else:
                label = event.stage or kind.replace("_", " ")
            progress.update(task, completed=event.progress_percent, stage=label.lower())

        survey_id, report_id, state = await load_and_report(
            settings, token, count=count, request_id=request_id, on_event=on_event
        )
    return survey_id, report_id, state


async def _up(args: argparse.Namespace, settings: Settings) -> int:
    from surveymesh.mesh import Mesh, install_stop_signals

    mesh = Mesh(settings)
    stop = asyncio.Event()
    remove = install_stop_signals(stop)
    try:
        await mesh.start()
        print(f"SurveyMesh is up ({mesh.ready_seconds:.1f}s to healthy). Endpoints:")
        for what, where in mesh.endpoints():
            print(f"  {what:<28} {where}")
        if args.demo:
            from surveymesh.reporting.v1 import report_pb2
            from surveymesh.workflow_contract import report_workflow_id

            request_id = f"demo-{uuid.uuid4()}"
            survey_id, report_id, state = await _run_demo(settings, args.demo_responses, request_id)
            if state != report_pb2.REPORT_STATE_COMPLETED:
                name = report_pb2.ReportState.Name(state).removeprefix("REPORT_STATE_")  # type: ignore[arg-type]
                print(f"\nThe demo report {report_id} ended {name}; see {mesh.data_dir}/logs.")
                return 1
            print(f"\nDemo survey {survey_id}: report {report_id} is ready.")
            # A viewer token in the link signs the browser in (dev mode, which `up` turns on).
            link_token = _authority(settings).mint(org=DEMO_ORG, user=DEMO_USER, roles=["viewer"])
            print(f"  Viewer: {settings.viewer_url}/reports/{report_id}?token={link_token}")
            workflow = report_workflow_id(DEMO_ORG, request_id)
            hints = _grpcurl_hints(
                settings, survey_id, report_id, workflow=workflow, temporal=mesh.temporal_address
            )
            print(hints)
            if args.exit_after_demo:
                stop.set()
        if not stop.is_set():
            print("\nPress Ctrl-C to stop.")
            await mesh.supervise(stop)
        return 0
    finally:
        remove()
        # The terminal or pipe may be gone already (a closed stdout raises BrokenPipeError):
        # the children must be stopped all the same.
        with contextlib.suppress(OSError):
            print("Stopping SurveyMesh…", flush=True)
        await mesh.stop()


def _output_options() -> argparse.ArgumentParser:
    """Options every client command takes (a parent parser, so they follow the subcommand)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--output", choices=["text", "json"], default="text", help="json: machine-readable output"
    )
    common.add_argument("--token", help="bearer token (default: $SURVEYMESH_TOKEN)")
    common.add_argument(
        "--timeout", type=float, default=None, help="deadline of each call in seconds"
    )
    return common


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    parser = argparse.ArgumentParser(
        prog="surveymesh",
        description=(__doc__ or "").split("\n\n")[0],
        epilog="Exit codes: 0 ok, 1 failure, 2 bad input, 3 not found, 4 auth, 5 unavailable, "
        "6 wrong state.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    common = _output_options()

    up = sub.add_parser("up", help="run the whole mesh on this machine")
    up.add_argument("--demo", action="store_true", help="load a demo survey and generate a report")
    up.add_argument("--demo-responses", type=int, default=3000, help="responses in the demo survey")
    up.add_argument(
        "--exit-after-demo", action="store_true", help="stop the mesh once the demo report is done"
    )

    bench = sub.add_parser("bench", help="run the benchmark suite (bench/results/latest.*)")
    bench.add_argument("--quick", action="store_true", help="small sizes and few runs (CI)")

    token = sub.add_parser("token", help="mint a development token")
    token.add_argument("--org", required=True)
    token.add_argument("--user", required=True)
    token.add_argument("--role", action="append", choices=ROLES, required=True)
    token.add_argument("--ttl", type=float, default=24 * 3600, help="lifetime in seconds")
    token.add_argument("--output", choices=["text", "json"], default="text")

    from surveymesh import cli_commands as c

    survey = sub.add_parser("survey", help="create, import and list surveys").add_subparsers(
        dest="action", required=True
    )
    p = survey.add_parser("create", parents=[common], help="create a survey from a JSON file")
    p.add_argument("--from-file", required=True, type=Path, help="survey JSON (proto JSON form)")
    p.add_argument("--request-id", help="idempotency key (default: a new UUID)")
    p.set_defaults(run=c.survey_create)
    p = survey.add_parser("get", parents=[common], help="show one survey")
    p.add_argument("survey_id")
    p.set_defaults(run=c.survey_get)
    p = survey.add_parser("list", parents=[common], help="list the organization's surveys")
    p.add_argument("--limit", type=int, default=0, help="stop after this many (0: all)")
    p.set_defaults(run=c.survey_list)
    p = survey.add_parser(
        "import",
        parents=[common],
        help="import responses from a CSV export (Google Forms, SurveyMonkey, Typeform, Qualtrics)",
    )
    p.add_argument("survey_id", nargs="?", help="the survey to import into (omit with --create)")
    p.add_argument("--from-csv", required=True, type=Path, help="the CSV export")
    p.add_argument("--mapping", type=Path, help="JSON file overriding types, ids, attributes")
    p.add_argument(
        "--create", action="store_true", help="infer the survey from the CSV and create it"
    )
    p.add_argument("--title", help="title of the created survey (default: the file name)")
    p.add_argument("--batch-size", type=int, default=1000)
    p.add_argument("--dry-run", action="store_true", help="show the inferred survey, send nothing")
    p.set_defaults(run=c.survey_import)

    report = sub.add_parser("report", help="generate, follow and fetch reports").add_subparsers(
        dest="action", required=True
    )
    p = report.add_parser("generate", parents=[common], help="start a report")
    p.add_argument("survey_id")
    p.add_argument("--kind", choices=["quick", "full"], default="quick")
    p.add_argument("--segment-by", action="append", default=[], help="attribute to split by")
    p.add_argument("--include-incomplete", action="store_true")
    p.add_argument("--notify-email", default="")
    p.add_argument("--request-id", help="idempotency key (default: a new UUID)")
    p.add_argument("--watch", action="store_true", help="follow its progress to the end")
    p.set_defaults(run=c.report_generate)
    p = report.add_parser("watch", parents=[common], help="follow a report's progress")
    p.add_argument("report_id")
    p.add_argument("--after", type=int, default=0, help="start after this event sequence")
    p.set_defaults(run=c.report_watch)
    p = report.add_parser("get", parents=[common], help="show a report")
    p.add_argument("report_id")
    p.add_argument("--view", choices=["basic", "full"], default="basic")
    p.set_defaults(run=c.report_get)
    p = report.add_parser("list", parents=[common], help="list reports")
    p.add_argument("--survey", default="", help="only reports of this survey")
    p.add_argument(
        "--state", choices=["queued", "running", "completed", "failed", "cancelled"], default=None
    )
    p.add_argument("--limit", type=int, default=0)
    p.set_defaults(run=c.report_list)
    p = report.add_parser("cancel", parents=[common], help="cancel a queued or running report")
    p.add_argument("report_id")
    p.add_argument("--reason", default="")
    p.set_defaults(run=c.report_cancel)
    p = report.add_parser("render", parents=[common], help="download a report as a file")
    p.add_argument("report_id")
    p.add_argument("--format", choices=["pdf", "html", "csv", "json"], default="pdf")
    p.add_argument("-o", "--out", type=Path, help="file to write (default: report-ID.FORMAT)")
    p.set_defaults(run=c.report_render)

    notes = sub.add_parser("notifications", help="your notifications").add_subparsers(
        dest="action", required=True
    )
    p = notes.add_parser("list", parents=[common], help="list notifications")
    p.add_argument("--unread", action="store_true")
    p.add_argument("--limit", type=int, default=0)
    p.set_defaults(run=c.notifications_list)
    p = notes.add_parser("watch", parents=[common], help="print notifications as they arrive")
    p.add_argument("--after", type=int, default=0, help="replay after this sequence")
    p.add_argument("--count", type=int, default=0, help="stop after this many (0: never)")
    p.set_defaults(run=c.notifications_watch)
    p = notes.add_parser("read", parents=[common], help="mark a notification read")
    p.add_argument("notification_id")
    p.set_defaults(run=c.notifications_read)

    hooks = sub.add_parser("webhooks", help="webhook endpoints").add_subparsers(
        dest="action", required=True
    )
    p = hooks.add_parser("add", parents=[common], help="register an endpoint")
    p.add_argument("url")
    p.add_argument("--event", action="append", default=[], help="event type filter (report.*)")
    p.add_argument("--description", default="")
    p.set_defaults(run=c.webhooks_add)
    p = hooks.add_parser("list", parents=[common], help="list endpoints")
    p.set_defaults(run=c.webhooks_list)
    p = hooks.add_parser("rm", parents=[common], help="delete an endpoint")
    p.add_argument("endpoint_id")
    p.set_defaults(run=c.webhooks_rm)
    return parser


async def run_client_command(args: argparse.Namespace, settings: Settings) -> int:
    """Runs one client subcommand; returns the exit code (also usable from tests)."""
    from surveymesh import cli_commands

    return await cli_commands.run(args, settings)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``surveymesh`` command."""
    args = build_parser().parse_args(argv)
    try:
        settings = Settings.from_env()
    except ConfigError as e:
        print(f"surveymesh: {e}", file=sys.stderr)
        return 2
    configure_logging(settings, quiet_stderr=args.command != "token")
    if args.command == "bench":
        from bench.__main__ import main as bench_main

        return bench_main(["--quick"] if args.quick else [])
    if args.command == "token":
        return cmd_token(args, settings)
    if args.command != "up":
        try:
            return asyncio.run(run_client_command(args, settings))
        except KeyboardInterrupt:
            return 130
    try:
        return asyncio.run(_up(args, settings))
    except KeyboardInterrupt:
        return 130
    except RuntimeError as e:
        logging.getLogger(__name__).debug("up failed", exc_info=True)
        print(f"surveymesh: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
