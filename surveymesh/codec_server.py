"""The Temporal "remote codec" endpoint, so operators can read encrypted histories.

The Temporal Web UI and CLI (``temporal workflow show --codec-endpoint ...``) POST
``{"payloads": [...]}`` (JSON form of ``temporal.api.common.v1.Payloads``) to
``/decode`` and ``/encode`` and get the same shape back. Every request needs
``Authorization: Bearer <token>`` of an ``admin``: a decoded history is the organization's
personal data. Browsers may call it from the configured origins only (the Temporal UI's;
``SURVEYMESH_CODEC_CORS_ORIGINS``). In the UI, set the codec endpoint to this server's URL
and turn on "pass access token".

Run it with ``python -m surveymesh.codec_server`` (port ``SURVEYMESH_CODEC_PORT``).
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable, Sequence

from aiohttp import web
from google.protobuf import json_format
from temporalio.api.common.v1 import Payload, Payloads

from surveymesh.auth import ADMIN_ROLES, TokenAuthority
from surveymesh.codec import EncryptionCodec, PayloadDecryptionError, codec
from surveymesh.config import Settings
from surveymesh.errors import Unauthenticated

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 8 * 1024 * 1024
ALLOWED_HEADERS = "Authorization, Content-Type, X-Namespace"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def create_app(
    payload_codec: EncryptionCodec, authority: TokenAuthority, cors_origins: Sequence[str]
) -> web.Application:
    """The codec endpoint as an aiohttp application.

    Args:
        payload_codec: Encrypts and decrypts.
        authority: Verifies operators' bearer tokens (``admin`` role required).
        cors_origins: Browser origins allowed to call (exact match).
    """
    origins = frozenset(cors_origins)

    def cors_headers(request: web.Request) -> dict[str, str]:
        origin = request.headers.get("Origin", "")
        if origin not in origins:
            return {}
        return {
            "Access-Control-Allow-Origin": origin,
            "Access-Control-Allow-Credentials": "true",
            "Access-Control-Allow-Methods": "POST, OPTIONS",
            "Access-Control-Allow-Headers": ALLOWED_HEADERS,
            "Access-Control-Max-Age": "600",
            "Vary": "Origin",
        }

    def error(request: web.Request, status: int, reason: str) -> web.Response:
        return web.json_response({"error": reason}, status=status, headers=cors_headers(request))

    def endpoint(transform: Callable[[Sequence[Payload]], Awaitable[list[Payload]]]) -> Handler:
        async def handle(request: web.Request) -> web.StreamResponse:
            try:
                principal = authority.verify_header(request.headers.get("Authorization"))
            except Unauthenticated as e:
                return error(request, 401, e.reason)
            if not principal.has_any(ADMIN_ROLES):
                return error(request, 403, "ROLE_NOT_PERMITTED")
            try:
                body = await request.read()
                payloads = json_format.Parse(body, Payloads())
            except (json_format.ParseError, UnicodeDecodeError, ValueError):
                return error(request, 400, "INVALID_PAYLOADS")
            try:
                result = await transform(list(payloads.payloads))
            except PayloadDecryptionError:
                return error(request, 400, "UNDECRYPTABLE_PAYLOAD")
            log.info(
                "%s of %d payloads by %s/%s (namespace %s)",
                request.path,
                len(result),
                principal.org,
                principal.user,
                request.headers.get("X-Namespace", "?"),
            )
            return web.Response(
                body=json_format.MessageToJson(Payloads(payloads=result)),
                content_type="application/json",
                headers=cors_headers(request),
            )

        return handle

    async def preflight(request: web.Request) -> web.Response:
        headers = cors_headers(request)
        return web.Response(status=204 if headers else 403, headers=headers)

    app = web.Application(client_max_size=MAX_BODY_BYTES)
    app.router.add_post("/encode", endpoint(payload_codec.encode))
    app.router.add_post("/decode", endpoint(payload_codec.decode))
    app.router.add_route("OPTIONS", "/encode", preflight)
    app.router.add_route("OPTIONS", "/decode", preflight)
    return app


async def start(
    settings: Settings, *, host: str | None = None, port: int | None = None
) -> web.AppRunner:
    """Starts the endpoint for ``settings``; ``await runner.cleanup()`` stops it."""
    app = create_app(
        codec(settings), TokenAuthority.from_settings(settings), settings.codec_cors_origins
    )
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(
        runner,
        host if host is not None else settings.bind_host,
        settings.codec_port if port is None else port,
    )
    await site.start()
    return runner


def bound_port(runner: web.AppRunner) -> int:
    """The port a started runner listens on (useful with port 0)."""
    for site in runner.sites:
        server = getattr(site, "_server", None)
        if server is not None and server.sockets:
            return int(server.sockets[0].getsockname()[1])
    raise RuntimeError("the codec endpoint is not listening")


async def _main() -> None:
    from surveymesh.logs import configure_logging

    settings = Settings.from_env()
    configure_logging(settings)
    runner = await start(settings)
    log.info("codec endpoint on port %d", bound_port(runner))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


if __name__ == "__main__":
    asyncio.run(_main())
