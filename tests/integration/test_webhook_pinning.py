"""Webhooks connect to the address that passed the SSRF check, never to a second lookup.

:func:`notification_svc.webhooks.pinned` rewrites a request to the checked address while
the ``Host`` header and the TLS server name stay the URL's host name. A real HTTPS server
(aiohttp, certificate for ``localhost`` from a test CA) shows that the certificate is
checked against the name: the pinned request to ``localhost`` succeeds, the same address
under a name the certificate does not cover is refused.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from aiohttp import web

from notification_svc.webhooks import pinned
from tests.integration.pki import BOTH, Pki, make_pki

pytestmark = pytest.mark.integration


def test_pinned_request_keeps_the_name_for_host_and_tls() -> None:
    url, headers, ext = pinned("https://hooks.example.com/in?x=1", "93.184.216.34")
    assert (url, headers, ext) == (
        "https://93.184.216.34/in?x=1",
        {"host": "hooks.example.com", "connection": "close"},
        {"sni_hostname": "hooks.example.com"},
    )
    url, headers, ext = pinned("http://hooks.example.com:8080/in", "2606:2800:220:1::248")
    assert (url, headers, ext) == (
        "http://[2606:2800:220:1::248]:8080/in",
        {"host": "hooks.example.com:8080"},
        {},
    )


@pytest.fixture
async def https_receiver(tmp_path: Path) -> AsyncIterator[tuple[int, Pki, list[str]]]:
    """An HTTPS server on 127.0.0.1 whose certificate names localhost; the Host headers seen."""
    pki = make_pki(tmp_path, "hooks", {"server": BOTH})
    cert, key = pki.files["server"]
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    hosts: list[str] = []

    async def receive(request: web.Request) -> web.Response:
        hosts.append(request.headers["Host"])
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/in", receive)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
    await site.start()
    port = runner.addresses[0][1]
    yield port, pki, hosts
    await runner.cleanup()


async def test_pinned_https_checks_the_certificate_against_the_name(
    https_receiver: tuple[int, Pki, list[str]],
) -> None:
    port, pki, hosts = https_receiver
    verify = ssl.create_default_context(cafile=str(pki.ca))
    async with httpx.AsyncClient(verify=verify, trust_env=False) as client:
        url, headers, ext = pinned(f"https://localhost:{port}/in", "127.0.0.1")
        response = await client.post(url, content=b"{}", headers=headers, extensions=ext)
        assert response.status_code == 204
        assert hosts == [f"localhost:{port}"]

        # Same address, a name the certificate does not cover: refused at the handshake
        # (the first request's connection was not kept, so this one makes its own).
        url, headers, ext = pinned(f"https://hooks.example.test:{port}/in", "127.0.0.1")
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            await client.post(url, content=b"{}", headers=headers, extensions=ext)
        assert len(hosts) == 1
