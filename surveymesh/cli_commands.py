"""The client subcommands of ``surveymesh`` (survey, report, notifications, webhooks).

Each command is an ``async def name(args, client, out) -> int``; :func:`run` builds the
client, runs the command and turns a :class:`~surveymesh.client.SurveyMeshError` into one
line on stderr and an exit code. Text output goes to stdout (ids first, so ``cut``/``awk``
work); progress bars and problems go to stderr; ``--output json`` prints one JSON document
(or one per line for streams) to stdout.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import grpc
from google.protobuf import json_format
from google.protobuf.message import Message

from surveymesh.client import TERMINAL_EVENTS, SurveyMeshClient, SurveyMeshError
from surveymesh.config import ConfigError, Settings
from surveymesh.csv_import import TYPE_NAMES, CsvImportError, load_mapping, parse_csv
from surveymesh.delivery.v1 import delivery_service_pb2 as dpb
from surveymesh.delivery.v1 import survey_pb2
from surveymesh.reporting.v1 import report_pb2

T = TypeVar("T")

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_NOT_FOUND, EXIT_AUTH = 0, 1, 2, 3, 4
EXIT_UNAVAILABLE, EXIT_WRONG_STATE = 5, 6
_EXIT_CODES = {
    grpc.StatusCode.INVALID_ARGUMENT: EXIT_BAD_INPUT,
    grpc.StatusCode.OUT_OF_RANGE: EXIT_BAD_INPUT,
    grpc.StatusCode.NOT_FOUND: EXIT_NOT_FOUND,
    grpc.StatusCode.UNAUTHENTICATED: EXIT_AUTH,
    grpc.StatusCode.PERMISSION_DENIED: EXIT_AUTH,
    grpc.StatusCode.UNAVAILABLE: EXIT_UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED: EXIT_UNAVAILABLE,
    grpc.StatusCode.RESOURCE_EXHAUSTED: EXIT_UNAVAILABLE,
    grpc.StatusCode.FAILED_PRECONDITION: EXIT_WRONG_STATE,
    grpc.StatusCode.ALREADY_EXISTS: EXIT_WRONG_STATE,
    grpc.StatusCode.ABORTED: EXIT_WRONG_STATE,
}

STATES = {
    "queued": report_pb2.REPORT_STATE_QUEUED,
    "running": report_pb2.REPORT_STATE_RUNNING,
    "completed": report_pb2.REPORT_STATE_COMPLETED,
    "failed": report_pb2.REPORT_STATE_FAILED,
    "cancelled": report_pb2.REPORT_STATE_CANCELLED,
}


class Out:
    """Where a command writes: text or JSON on stdout, notes on stderr."""

    def __init__(self, mode: str) -> None:
        self.json = mode == "json"

    def emit(self, data: Any, text: str | Callable[[], str]) -> None:
        """Prints ``data`` as JSON, or ``text`` for people."""
        if self.json:
            print(json.dumps(data, ensure_ascii=False, default=str), flush=True)
        else:
            print(text() if callable(text) else text, flush=True)

    def note(self, text: str) -> None:
        """A message for people only (stderr, never in JSON output)."""
        if not self.json:
            print(text, file=sys.stderr, flush=True)


def to_dict(message: Message) -> dict[str, Any]:
    """A message as JSON-ready data, proto field names; report component data is inlined as
    parsed JSON rather than base64."""
    data = json_format.MessageToDict(message, preserving_proto_field_name=True)
    components = getattr(message, "components", None)
    if isinstance(message, report_pb2.Report) and components is not None:
        for raw, out in zip(components, data.get("components", []), strict=False):
            if raw.data:
                out["data"] = json.loads(raw.data)
    return data


def _state(report: report_pb2.Report) -> str:
    return report_pb2.ReportState.Name(report.state).removeprefix("REPORT_STATE_")


def _enum_name(enum: Any, value: int, prefix: str) -> str:
    return str(enum.Name(value)).removeprefix(prefix)


async def _take(items: AsyncIterator[T], limit: int) -> list[T]:
    out: list[T] = []
    async for item in items:
        out.append(item)
        if limit and len(out) >= limit:
            break
    return out


async def run(args: argparse.Namespace, settings: Settings) -> int:
    """Runs ``args.run`` with a client made from ``settings``; returns the exit code."""
    out = Out(args.output)
    try:
        client = SurveyMeshClient.from_env(settings, token=args.token)
    except ConfigError as e:
        print(f"surveymesh: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if args.timeout is not None:
        client.timeout = args.timeout
    command: Callable[[argparse.Namespace, SurveyMeshClient, Out], Awaitable[int]] = args.run
    try:
        async with client:
            return await command(args, client, out)
    except SurveyMeshError as e:
        print(f"surveymesh: {e.one_line()}{_hint(e)}", file=sys.stderr)
        return _EXIT_CODES.get(e.code, EXIT_FAILED)
    except (CsvImportError, OSError, ValueError) as e:
        print(f"surveymesh: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT


def _hint(e: SurveyMeshError) -> str:
    if e.code == grpc.StatusCode.UNAUTHENTICATED and not e.reason.endswith("EXPIRED"):
        return " (set SURVEYMESH_TOKEN, e.g. from `surveymesh token --org ORG --user ME --role analyst`)"
    if e.code == grpc.StatusCode.UNAVAILABLE:
        return " (is the mesh running? `surveymesh up`; addresses: SURVEYMESH_*_ADDRESS)"
    return ""


# -- survey ---------------------------------------------------------------------------------


def _survey_from_json(data: Any) -> survey_pb2.Survey:
    """A survey from proto JSON; question types may also be short names (``"nps"``)."""
    if isinstance(data, dict) and "survey" in data and isinstance(data["survey"], dict):
        data = data["survey"]
    if not isinstance(data, dict):
        raise ValueError("the survey file holds one JSON object")
    for q in data.get("questions", []):
        if isinstance(q, dict) and str(q.get("type", "")).lower() in TYPE_NAMES:
            q["type"] = TYPE_NAMES[str(q["type"]).lower()]
    try:
        return json_format.ParseDict(data, survey_pb2.Survey())
    except json_format.ParseError as e:
        raise ValueError(f"not a survey: {e}") from None


def _survey_text(s: survey_pb2.Survey) -> str:
    lines = [f"{s.id}  {s.title}  ({len(s.questions)} questions, {s.response_count} responses)"]
    for q in s.questions:
        kind = _enum_name(survey_pb2.QuestionType, q.type, "QUESTION_TYPE_").lower()
        opts = f" [{', '.join(q.options)}]" if q.options else ""
        lines.append(f"  {q.id:<24} {kind:<16} {q.text}{opts}")
    return "\n".join(lines)


async def survey_create(args: argparse.Namespace, client: SurveyMeshClient, out: Out) -> int:
    """``survey create --from-file survey.json``."""
    try:
        data = json.loads(Path(args.from_file).read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{args.from_file}: not valid JSON ({e.msg} at line {e.lineno})") from None
    survey = await client.create_survey(_survey_from_json(data), request_id=args.request_id)
    out.emit({"survey": to_dict(survey)}, lambda: _survey_text(survey))
    return EXIT_OK


async def survey_get(args: argparse.Namespace, client: SurveyMeshClient, out: Out) -> int:
    """``survey get ID``."""
    survey = await client.get_survey(args.survey_id)
    out.emit({"survey": to_dict(survey)}, lambda: _survey_text(survey))
    return EXIT_OK


async def survey_list(args: argparse.Namespace, client: SurveyMeshClient, out: Out) -> int:
    """``survey list``."""
    surveys = await _take(client.list_surveys(), args.limit)
    out.emit(
        {"surveys": [to_dict(s) for s in surveys]},
        lambda: (
            "\n".join(f"{s.id}  {s.response_count:>7} responses  {s.title}" for s in surveys)
            or "(no surveys)"
        ),
    )
    return EXIT_OK


async def survey_import(args: argparse.Namespace, client: SurveyMeshClient, out: Out) -> int:
    """``survey import [ID] --from-csv FILE [--mapping M] [--create]``."""
    if bool(args.survey_id) == bool(args.create):
        raise ValueError("give either a SURVEY_ID to import into or --create (not both)")
    mapping = load_mapping(args.mapping) if args.mapping else None
    text = Path(args.from_csv).read_text(encoding="utf-8-sig")
    existing = await client.get_survey(args.survey_id) if args.survey_id else None
    title = args.title or Path(args.from_csv).stem.replace("_", " ").strip() or None
    parsed = parse_csv(text, mapping, title=title, survey=existing)
    plan = parsed.plan
    if args.dry_run:
        out.emit(
            {
                "layout": plan.layout.value,
                "title": plan.title,
                "questions": plan.describe(),
                "attributes": [key for _, key in plan.attributes],
                "rows": len(parsed.responses),
                "rejections": [r.__dict__ for r in parsed.rejections],
            },
            lambda: (
                f"{plan.layout.value} export, {len(parsed.responses)} rows\n"
                + _survey_text(plan.survey())
            ),
        )
        return EXIT_OK
    if existing is None:
        survey = await client.create_survey(
            plan.survey(f"Imported from {Path(args.from_csv).name}")
        )
        out.note(
            f"created survey {survey.id} ({plan.layout.value} export, "
            f"{len(plan.questions)} questions)"
        )
    else:
        survey = existing
        for header in plan.unmatched:
            out.note(f"warning: column {header!r} matches no question of the survey; skipped")
    result = (
        await client.import_responses(survey.id, parsed.responses, batch_size=args.batch_size)
        if parsed.responses
        else dpb.ImportResponsesResponse()
    )
    rejected: list[dict[str, Any]] = [
        {
            "line": r.line,
            "response_id": r.response_id,
            "field": r.field,
            "reason": r.reason,
            "description": r.description,
        }
        for r in parsed.rejections
    ] + [
        {
            "line": parsed.line_of(r.row),
            "response_id": r.response_id,
            "field": r.field,
            "reason": r.reason,
            "description": r.description,
        }
        for r in result.rejections
    ]
    rejected.sort(key=lambda r: r["line"])
    summary = {
        "survey_id": survey.id,
        "created": existing is None,
        "layout": plan.layout.value,
        "accepted": result.accepted_count,
        "duplicates": result.duplicate_count,
        "rejected": result.rejected_count + len(parsed.rejections),
        "rejections": rejected,
    }

    def text_summary() -> str:
        lines = [
            f"{survey.id}  imported {result.accepted_count}, duplicates "
            f"{result.duplicate_count}, rejected {summary['rejected']}"
        ]
        lines += [
            f"  line {r['line']}: {r['field']}: {r['reason']}: {r['description']}" for r in rejected
        ]
        return "\n".join(lines)

    out.emit(summary, text_summary)
    return EXIT_OK


# -- report ---------------------------------------------------------------------------------


def _report_text(r: report_pb2.Report) -> str:
    kind = _enum_name(report_pb2.ReportKind, r.kind, "REPORT_KIND_").lower()
    lines = [
        f"{r.id}  {_state(r)}  {r.progress_percent}%  {kind}  survey {r.survey_id}"
        + (f"  stage {r.current_stage}" if r.current_stage else "")
    ]
    if r.response_count:
        lines.append(f"  responses: {r.response_count}")
    if r.components:
        lines.append(
            "  components: " + ", ".join(f"{c.type} ({c.size_bytes} B)" for c in r.components)
        )
    if r.error.reason:
        lines.append(f"  error: {r.error.reason}: {r.error.message} (stage {r.error.stage})")
    return "\n".join(lines)


async def _follow(client: SurveyMeshClient, report_id: str, out: Out, after: int = 0) -> int:
    """Follows a report: a live progress bar (stderr) or one JSON event per line."""
    last: report_pb2.ReportEvent | None = None
    if out.json:
        async for event in client.watch_report(report_id, after_sequence=after):
            out.emit({"event": to_dict(event)}, "")
            last = event
    else:
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        with Progress(
            TextColumn("[bold]report[/]"),
            BarColumn(),
            TextColumn("{task.percentage:>3.0f}%"),
            TextColumn("{task.fields[stage]}"),
            TimeElapsedColumn(),
            console=Console(stderr=True),
        ) as progress:
            task = progress.add_task("report", total=100, stage="queued")
            async for event in client.watch_report(report_id, after_sequence=after):
                label = event.stage or event.component_type
                label = (
                    label
                    or _enum_name(
                        report_pb2.ReportEventType, event.type, "REPORT_EVENT_TYPE_"
                    ).lower()
                )
                progress.update(task, completed=event.progress_percent, stage=label)
                last = event
    report = await client.get_report(report_id, view=report_pb2.REPORT_VIEW_BASIC)
    out.emit({"report": to_dict(report)}, lambda: _report_text(report))
    if last is None or last.type not in TERMINAL_EVENTS:
        return EXIT_FAILED
    return EXIT_OK if report.state == report_pb2.REPORT_STATE_COMPLETED else EXIT_FAILED


async def report_generate(args: argparse.Namespace, client: SurveyMeshClient, out: Out) -> int:
    """``report generate SURVEY_ID [--kind quick|full] [--watch]``."""
    options = report_pb2.ReportOptions(
        segment_by=args.segment_by,
        include_incomplete=args.include_incomplete,
        notify_email=args.notify_email,
    )
    report = await client.generate_report(
        args.survey_id, kind=args.kind, options=options, request_id=args.request_id
    )
    if not args.watch:
        out.emit({"report": to_dict(report)}, lambda: _report_text(report))
        out.note(f"follow it with: surveymesh report watch {report.id}")
        return EXIT_OK
    out.note(f"report {report.id} started")
    return await _follow(client, report.id, out)


async def report_watch(args: argparse.Namespace, client: SurveyMeshClient, out: Out) -> int:
    """``report watch ID``."""
    return await _follow(client, args.report_id, out, args.after)


async def report_get(args: argparse.Namespace, client: SurveyMeshClient, out: Out) -> int:
    """``report get ID [--view basic|full]``."""
    view = report_pb2.REPORT_VIEW_FULL if args.view == "full" else report_pb2.REPORT_VIEW_BASIC
    report = await client.get_report(args.report_id, view=view)
    out.emit({"report": to_dict(report)}, lambda: _report_text(report))
    return EXIT_OK


async def report_list(args: argparse.Namespace, client: SurveyMeshClient, out: Out) -> int:
    """``report list [--survey ID] [--state S]``."""
    state = STATES[args.state] if args.state else report_pb2.REPORT_STATE_UNSPECIFIED
    reports = await _take(client.list_reports(survey_id=args.survey, state=state), args.limit)
    out.emit(
        {"reports": [to_dict(r) for r in reports]},
        lambda: "\n".join(_report_text(r).splitlines()[0] for r in reports) or "(no reports)",
    )
    return EXIT_OK


async def report_cancel(args: argparse.Namespace, client: SurveyMeshClient, out: Out) -> int:
    """``report cancel ID``."""
    report = await client.cancel_report(args.report_id, reason=args.reason)
    out.emit({"report": to_dict(report)}, lambda: _report_text(report))
    return EXIT_OK


async def report_render(args: argparse.Namespace, client: SurveyMeshClient, out: Out) -> int:
    """``report render ID --format pdf -o FILE``."""
    path = args.out or Path(
        f"report-{args.report_id}.{'zip' if args.format == 'csv' else args.format}"
    )
    rendered = await client.render_report(args.report_id, args.format, path)
    out.emit(
        {
            "path": str(rendered.path),
            "content_type": rendered.content_type,
            "filename": rendered.filename,
            "size": rendered.size,
        },
        f"{rendered.path}  {rendered.size} bytes  {rendered.content_type}",
    )
    return EXIT_OK


# -- notifications and webhooks ------------------------------------------------------------


def _note_text(n: Any) -> str:
    flag = " " if n.read else "*"
    when = n.create_time.ToDatetime().strftime("%Y-%m-%d %H:%M") if n.create_time.seconds else ""
    return f"{flag} {n.id}  {when}  {n.type}  {n.title}" + (f"  {n.link}" if n.link else "")


async def notifications_list(args: argparse.Namespace, client: SurveyMeshClient, out: Out) -> int:
    """``notifications list [--unread]``."""
    notes = await _take(client.list_notifications(unread_only=args.unread), args.limit)
    out.emit(
        {"notifications": [to_dict(n) for n in notes]},
        lambda: "\n".join(_note_text(n) for n in notes) or "(no notifications)",
    )
    return EXIT_OK


async def notifications_watch(args: argparse.Namespace, client: SurveyMeshClient, out: Out) -> int:
    """``notifications watch``: one line (or JSON document) per notification, until Ctrl-C."""
    seen = 0
    async for n in client.watch_notifications(after_sequence=args.after):
        out.emit({"notification": to_dict(n)}, _note_text(n))
        seen += 1
        if args.count and seen >= args.count:
            break
    return EXIT_OK


async def notifications_read(args: argparse.Namespace, client: SurveyMeshClient, out: Out) -> int:
    """``notifications read ID``."""
    n = await client.mark_notification_read(args.notification_id)
    out.emit({"notification": to_dict(n)}, _note_text(n))
    return EXIT_OK


async def webhooks_add(args: argparse.Namespace, client: SurveyMeshClient, out: Out) -> int:
    """``webhooks add URL [--event report.*]``."""
    endpoint, secret = await client.create_webhook(
        args.url, event_types=args.event or ["report.*"], description=args.description
    )
    out.emit(
        {"endpoint": to_dict(endpoint), "secret": secret},
        f"{endpoint.id}  {endpoint.url}  {', '.join(endpoint.event_types)}\n"
        f"signing secret (shown once): {secret}",
    )
    return EXIT_OK


async def webhooks_list(args: argparse.Namespace, client: SurveyMeshClient, out: Out) -> int:
    """``webhooks list``."""
    endpoints = [e async for e in client.list_webhooks()]
    out.emit(
        {"endpoints": [to_dict(e) for e in endpoints]},
        lambda: (
            "\n".join(
                f"{e.id}  {e.url}  {', '.join(e.event_types)}  {e.description}" for e in endpoints
            )
            or "(no webhook endpoints)"
        ),
    )
    return EXIT_OK


async def webhooks_rm(args: argparse.Namespace, client: SurveyMeshClient, out: Out) -> int:
    """``webhooks rm ID``."""
    await client.delete_webhook(args.endpoint_id)
    out.emit({"deleted": args.endpoint_id}, f"deleted {args.endpoint_id}")
    return EXIT_OK
