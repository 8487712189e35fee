"""The ``surveymesh`` command line.

``surveymesh up [--demo]`` runs the whole mesh on this machine; ``surveymesh token`` mints
a development token signed with the data dir's secret (for grpcurl and scripts).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import uuid

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
    print(token)
    return 0


def _grpcurl_hints(settings: Settings, survey_id: str, report_id: str) -> str:
    h = '-H "authorization: Bearer $TOKEN"'
    d, r = f"localhost:{settings.delivery_port}", f"localhost:{settings.reporting_port}"
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
        ]
    )


async def _run_demo(settings: Settings, count: int) -> tuple[str, str]:
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
            label = (
                event.stage or event.component_type or report_pb2.ReportEventType.Name(event.type)
            )
            progress.update(task, completed=event.progress_percent, stage=label.lower())

        survey_id, report_id = await load_and_report(
            settings, token, count=count, request_id=f"demo-{uuid.uuid4()}", on_event=on_event
        )
    return survey_id, report_id


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
            survey_id, report_id = await _run_demo(settings, args.demo_responses)
            print(f"\nDemo survey {survey_id}: report {report_id} is ready.")
            print(f"  Viewer: {settings.viewer_url}/reports/{report_id}")
            print(_grpcurl_hints(settings, survey_id, report_id))
            if args.exit_after_demo:
                stop.set()
        if not stop.is_set():
            print("\nPress Ctrl-C to stop.")
            await mesh.supervise(stop)
        return 0
    finally:
        remove()
        print("Stopping SurveyMesh…")
        await mesh.stop()


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    parser = argparse.ArgumentParser(prog="surveymesh", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="run the whole mesh on this machine")
    up.add_argument("--demo", action="store_true", help="load a demo survey and generate a report")
    up.add_argument("--demo-responses", type=int, default=3000, help="responses in the demo survey")
    up.add_argument(
        "--exit-after-demo", action="store_true", help="stop the mesh once the demo report is done"
    )

    token = sub.add_parser("token", help="mint a development token")
    token.add_argument("--org", required=True)
    token.add_argument("--user", required=True)
    token.add_argument("--role", action="append", choices=ROLES, required=True)
    token.add_argument("--ttl", type=float, default=24 * 3600, help="lifetime in seconds")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``surveymesh`` command."""
    args = build_parser().parse_args(argv)
    try:
        settings = Settings.from_env()
    except ConfigError as e:
        print(f"surveymesh: {e}", file=sys.stderr)
        return 2
    configure_logging(settings, quiet_stderr=args.command == "up")
    if args.command == "token":
        return cmd_token(args, settings)
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
