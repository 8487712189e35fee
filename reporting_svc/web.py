"""The web viewer: report pages, live updates over server-sent events, and downloads.

Served by the Reporting process (aiohttp) next to gRPC, over the same domain object
(:class:`~reporting_svc.reports.Reports`), so access rules, tenancy and rendering are the
very ones of the gRPC API:

* ``GET /reports/{id}``: the report page; sections appear as components become ready.
* ``GET /reports/{id}/events``: ``text/event-stream`` of the page's updates, fed by
  ``Reports.watch`` (the process's one LISTEN hub, as WatchReport); each message's ``id`` is
  the event sequence, so a browser's automatic reconnect (``Last-Event-ID``) loses nothing.
* ``GET /reports/{id}.pdf|.csv|.json|.html``: the RenderReport renderings as downloads.
* ``GET /static/...``: the viewer's script and vega / vega-lite / vega-embed (vendored from
  npm, see ``static/vendor/README.md``): the page loads nothing from any other origin.

Access: ``Authorization: Bearer <token>``, or the ``surveymesh_token`` cookie. In
development mode only (``SURVEYMESH_DEV_MODE``), ``?token=<token>`` on a page URL signs the
browser in: the token is verified, stored in an HttpOnly cookie, and the browser is
redirected to the URL without it. A report of another organization answers exactly as a
missing one (404).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from markupsafe import escape

from reporting_svc import validation
from reporting_svc.render import Format
from reporting_svc.render.html import render_html, render_sections
from reporting_svc.render.model import sections_for_component
from reporting_svc.render.pool import RenderPool
from reporting_svc.reports import FORMAT_NAMES, Reports
from reporting_svc.store import TERMINAL_EVENTS
from surveymesh.auth import Principal, TokenAuthority
from surveymesh.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    ServiceError,
    Unauthenticated,
    Unavailable,
)
from surveymesh.reporting.v1 import report_pb2
from surveymesh.telemetry import http_middlewares

log = logging.getLogger(__name__)

E = report_pb2.ReportEventType
STATIC_DIR = Path(__file__).parent / "static"
COOKIE = "surveymesh_token"
HEARTBEAT_SECONDS = 15.0
# Events that arrive within this window are answered with one re-render.
COALESCE_SECONDS = 0.05
DOWNLOAD_CHUNK = 1024 * 1024
FORMATS_BY_EXTENSION: dict[str, int] = {name: num for num, name in FORMAT_NAMES.items()}
# The page runs our scripts only; vega compiles expressions with Function(), hence
# 'unsafe-eval' (it allows no inline or foreign script). Styles: our inline <style> and
# vega-embed's injected ones.
PAGE_CSP = (
    "default-src 'none'; script-src 'self' 'unsafe-eval'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data: blob:; connect-src 'self'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
)
# The self-contained HTML download: no script at all.
STATIC_CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; frame-ancestors 'none'"
STATUS: dict[type[ServiceError], int] = {
    NotFound: 404,
    Unauthenticated: 401,
    PermissionDenied: 403,
    FailedPrecondition: 409,
    ResourceExhausted: 429,
    Unavailable: 503,
}
TITLES = {
    401: "Sign-in required",
    403: "Not allowed",
    404: "Report not found",
    409: "Not available yet",
    429: "Busy",
    503: "Temporarily unavailable",
}


class _AccessLogger(AbstractAccessLogger):
    """Logs requests without their query string: a ``?token=`` never reaches the logs."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        self.logger.info(
            "%s %s %s %d %.3fs",
            request.remote,
            request.method,
            request.path,
            response.status,
            time,
        )


def _error_page(status: int, message: str) -> str:
    title = TITLES.get(status, "Error")
    return (
        "<!DOCTYPE html><html lang=en><meta charset=utf-8>"
        f"<title>{escape(title)}</title>"
        "<style>body{font-family:'DejaVu Sans',Arial,sans-serif;color:#1f2937;"
        "max-width:560px;margin:80px auto;padding:0 20px}h1{font-size:22px}"
        "p{color:#6b7280}</style>"
        f"<h1>{escape(title)}</h1><p>{escape(message)}</p></html>"
    )


def error_response(err: ServiceError) -> web.Response:
    """A ServiceError as an HTTP answer: status, a small page and the stable reason."""
    status = 404 if isinstance(err, InvalidArgument) else STATUS.get(type(err), 500)
    # A malformed id is "not found" on the web, with the very answer a missing report gets.
    message = "report not found" if isinstance(err, InvalidArgument) else err.message
    reason = "REPORT_NOT_FOUND" if isinstance(err, InvalidArgument) else err.reason
    headers = {"X-Error-Reason": reason, "Cache-Control": "no-store"}
    if status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="surveymesh"'
    if isinstance(err, ResourceExhausted) and err.retry_after:
        headers["Retry-After"] = str(max(1, round(err.retry_after)))
    return web.Response(
        status=status,
        text=_error_page(status, message),
        content_type="text/html",
        headers=headers,
    )


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        response = await handler(request)
    except ServiceError as e:
        response = error_response(e)
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Referrer-Policy", "no-referrer")
    return response


class Viewer:
    """The HTTP face of ReportingService.

    Args:
        reports: The domain object the gRPC servicer uses too.
        authority: Verifies bearer tokens (the gRPC interceptor's authority).
        renderer: Runs page renderings off the event loop.
        dev_mode: Accept ``?token=`` sign-in links.
    """

    def __init__(
        self,
        reports: Reports,
        authority: TokenAuthority,
        renderer: RenderPool,
        *,
        dev_mode: bool = False,
    ) -> None:
        self._reports = reports
        self._authority = authority
        self._renderer = renderer
        self._dev_mode = dev_mode
        self._runner: web.AppRunner | None = None
        self.port = 0

    def app(self) -> web.Application:
        """The aiohttp application (routes and middleware)."""
        app = web.Application(middlewares=[*http_middlewares(), _errors])
        app.router.add_get("/healthz", self._health)
        app.router.add_get(r"/reports/{report_id:[^/.]+}.{ext:pdf|csv|json|html}", self._download)
        app.router.add_get(r"/reports/{report_id:[^/.]+}/events", self._events)
        app.router.add_get(r"/reports/{report_id:[^/.]+}", self._page)
        app.router.add_static("/static", STATIC_DIR, follow_symlinks=False)
        app.on_response_prepare.append(self._cache_headers)
        return app

    async def start(self, host: str, port: int, *, shutdown_timeout: float = 5.0) -> int:
        """Starts listening; returns the bound port (``port`` 0 picks a free one)."""
        runner = web.AppRunner(
            self.app(),
            handle_signals=False,
            access_log_class=_AccessLogger,
            shutdown_timeout=shutdown_timeout,
        )
        await runner.setup()
        try:
            site = web.TCPSite(runner, host, port)
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self.port = int(runner.addresses[0][1])
        log.info("web viewer listening on http://%s:%d", host, self.port)
        return self.port

    async def stop(self) -> None:
        """Stops accepting requests and lets running ones finish (up to the shutdown timeout)."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    # -- access ------------------------------------------------------------------------

    def _principal(self, request: web.Request) -> Principal:
        header = request.headers.get("Authorization")
        if header:
            return self._authority.verify_header(header)
        token = request.cookies.get(COOKIE)
        if token:
            return self._authority.verify(token)
        raise Unauthenticated(
            "sign in: send 'Authorization: Bearer <token>'"
            + (" or open a link with ?token=<token>" if self._dev_mode else ""),
            reason="MISSING_CREDENTIALS",
        )

    def _token_login(self, request: web.Request) -> web.StreamResponse | None:
        """In development mode, turns ``?token=`` into a cookie and a redirect to the clean URL."""
        token = request.query.get("token")
        if token is None:
            return None
        if not self._dev_mode:
            raise Unauthenticated(
                "tokens in URLs are accepted in development mode only",
                reason="URL_TOKEN_NOT_ALLOWED",
            )
        self._authority.verify(token)  # an invalid token is refused here, not stored
        clean = request.rel_url.with_query({k: v for k, v in request.query.items() if k != "token"})
        response = web.Response(status=303, headers={"Location": str(clean)})
        response.set_cookie(
            COOKIE,
            token,
            httponly=True,
            samesite="Lax",
            secure=request.secure,
            path="/",
        )
        response.headers["Cache-Control"] = "no-store"
        return response

    @staticmethod
    def _report_id(request: web.Request) -> str:
        return validation.report_id(request.match_info["report_id"])

    # -- handlers ----------------------------------------------------------------------

    async def _health(self, _request: web.Request) -> web.StreamResponse:
        return web.Response(text="ok")

    async def _cache_headers(self, request: web.Request, response: web.StreamResponse) -> None:
        if request.path.startswith("/static/"):
            response.headers.setdefault("Cache-Control", "public, max-age=3600")
        else:
            response.headers.setdefault("Cache-Control", "private, no-store")

    async def _page(self, request: web.Request) -> web.StreamResponse:
        login = self._token_login(request)
        if login is not None:
            return login
        principal = self._principal(request)
        rid = self._report_id(request)
        doc = await self._reports.document(principal, rid, completed_only=False)
        base = f"/reports/{rid}"
        links = {ext: f"{base}.{ext}" for ext in FORMATS_BY_EXTENSION}
        html = await self._renderer.run(
            functools.partial(render_html, doc, mode="viewer", links=links)
        )
        return web.Response(
            text=html,
            content_type="text/html",
            charset="utf-8",
            headers={"Content-Security-Policy": PAGE_CSP},
        )

    async def _download(self, request: web.Request) -> web.StreamResponse:
        login = self._token_login(request)
        if login is not None:
            return login
        principal = self._principal(request)
        rid = self._report_id(request)
        ext: Format = request.match_info["ext"]  # type: ignore[assignment]
        rendered = await self._reports.render_file(principal, rid, FORMATS_BY_EXTENSION[ext])
        disposition = "inline" if ext == "html" else "attachment"
        response = web.StreamResponse(
            headers={
                "Content-Type": rendered.content_type,
                "Content-Disposition": f'{disposition}; filename="{rendered.filename}"',
                "Content-Security-Policy": STATIC_CSP,
            }
        )
        response.content_length = len(rendered.body)
        await response.prepare(request)
        view = memoryview(rendered.body)
        for offset in range(0, len(view), DOWNLOAD_CHUNK):
            await response.write(view[offset : offset + DOWNLOAD_CHUNK])
        await response.write_eof()
        return response

    async def _events(self, request: web.Request) -> web.StreamResponse:
        principal = self._principal(request)
        rid = self._report_id(request)
        after = _after(request)
        # Checked before the stream starts, so a missing report is a plain 404.
        await self._reports.get(principal, rid, report_pb2.REPORT_VIEW_BASIC)
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",  # proxies must not buffer the stream
            }
        )
        await response.prepare(request)
        await response.write(b"retry: 2000\n\n")
        async for batch in _batched(self._reports.watch(principal, rid, after)):
            if batch is None:
                await response.write(b": keep-alive\n\n")
                continue
            await self._send_batch(response, principal, rid, batch)
            if batch[-1].type in TERMINAL_EVENTS:
                break
        with contextlib.suppress(ConnectionResetError):
            await response.write_eof()
        return response

    async def _send_batch(
        self,
        response: web.StreamResponse,
        principal: Principal,
        report_id: str,
        events: list[report_pb2.ReportEvent],
    ) -> None:
        last = events[-1]
        ids: list[str] = []
        for ev in events:
            if ev.type == E.REPORT_EVENT_TYPE_COMPONENT_READY and ev.component_type:
                ids.extend(s for s in sections_for_component(ev.component_type) if s not in ids)
        if last.type in TERMINAL_EVENTS and "about" not in ids:
            ids.append("about")
        if ids:
            doc = await self._reports.document(principal, report_id, completed_only=False)
            fragments = await self._renderer.run(render_sections, doc, ids)
            for fragment in fragments:
                await _send(response, "section", last.sequence, fragment)
        await _send(
            response,
            "progress",
            last.sequence,
            {
                "percent": max(e.progress_percent for e in events),
                "stage": last.stage or last.component_type,
                "state": report_pb2.ReportState.Name(last.state),
                "message": last.message,
            },
        )
        if last.type in TERMINAL_EVENTS:
            await _send(
                response,
                "done",
                last.sequence,
                {
                    "state": report_pb2.ReportState.Name(last.state),
                    "message": last.message,
                    "error": last.error.message if last.HasField("error") else "",
                },
            )


def _after(request: web.Request) -> int:
    # EventSource reconnects send the last id they saw; the first connection passes ?after=.
    raw = request.headers.get("Last-Event-ID") or request.query.get("after") or "0"
    try:
        return max(0, int(raw))
    except ValueError:
        return 0


async def _send(response: web.StreamResponse, event: str, sequence: int, data: Any) -> None:
    # orjson never emits a raw newline, so the payload is one "data:" line.
    payload = orjson.dumps(data)
    await response.write(
        b"event: "
        + event.encode()
        + b"\nid: "
        + str(sequence).encode()
        + b"\ndata: "
        + payload
        + b"\n\n"
    )


async def _batched(
    events: AsyncIterator[report_pb2.ReportEvent],
) -> AsyncIterator[list[report_pb2.ReportEvent] | None]:
    """Groups events that arrive together (a component and its progress events) into one
    list; yields None after :data:`HEARTBEAT_SECONDS` of silence (a keep-alive)."""
    queue: asyncio.Queue[report_pb2.ReportEvent | Exception | None] = asyncio.Queue()

    async def pump() -> None:
        try:
            async for ev in events:
                await queue.put(ev)
        except Exception as e:  # delivered to the consumer, which re-raises it
            await queue.put(e)
        else:
            await queue.put(None)

    task = asyncio.create_task(pump())
    try:
        while True:
            try:
                first = await asyncio.wait_for(queue.get(), HEARTBEAT_SECONDS)
            except TimeoutError:
                yield None
                continue
            if first is None:
                return
            if isinstance(first, Exception):
                raise first
            batch = [first]
            await asyncio.sleep(COALESCE_SECONDS)
            end = False
            while not queue.empty():
                item = queue.get_nowait()
                if item is None:
                    end = True
                    break
                if isinstance(item, Exception):
                    raise item
                batch.append(item)
            yield batch
            if end:
                return
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
