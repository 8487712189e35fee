"""Transport security of the mesh: TLS/mTLS server credentials and client channels.

One set of settings describes both sides (paths to PEM files):

- ``SURVEYMESH_TLS_CERT`` / ``SURVEYMESH_TLS_KEY``: this process's certificate and key. A
  server with them speaks TLS; a client presents them when a server asks (mutual TLS).
- ``SURVEYMESH_TLS_CA``: the CA bundle that peer certificates are verified against (servers
  verify client certificates with it, clients verify servers with it; clients without it
  use the system roots).
- ``SURVEYMESH_TLS_CLIENT_AUTH=require``: servers refuse clients without a certificate
  signed by the CA.
- ``SURVEYMESH_PLAINTEXT=false``: refuse to start a server or open a channel without TLS,
  so a production process with a missing setting fails at start instead of talking in
  the clear.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import grpc

from surveymesh.config import ConfigError, Settings

# Every channel of the mesh shares the server's message limit, so a peer answer that the
# server may send is never refused by the client.
MAX_MESSAGE_BYTES = 4 * 1024 * 1024
# Servers end (gracefully: running calls and streams finish) every connection after this
# age, so clients balancing with round_robin re-resolve their peer's name and find replicas
# that started after they connected.
MAX_CONNECTION_AGE_MS = 5 * 60 * 1000
_CHANNEL_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
)


def _read(path: str, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise ConfigError(f"cannot read {what} {path!r}: {e.strerror or e}") from None


def tls_configured(settings: Settings) -> bool:
    """Whether this process has a certificate and key of its own."""
    if bool(settings.tls_cert) != bool(settings.tls_key):
        raise ConfigError("SURVEYMESH_TLS_CERT and SURVEYMESH_TLS_KEY must be set together")
    return bool(settings.tls_cert)


def server_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    """The gRPC server credentials of ``settings``, or ``None`` to serve plaintext.

    Raises:
        ConfigError: plaintext is forbidden but no certificate is configured, client
            authentication is required without a CA to check clients against, or a file
            cannot be read.
    """
    if not tls_configured(settings):
        if not settings.plaintext:
            raise ConfigError(
                "SURVEYMESH_PLAINTEXT=false but no SURVEYMESH_TLS_CERT/SURVEYMESH_TLS_KEY: "
                "refusing to serve without TLS"
            )
        if settings.tls_client_auth == "require":
            raise ConfigError("SURVEYMESH_TLS_CLIENT_AUTH=require needs a server certificate")
        return None
    require = settings.tls_client_auth == "require"
    if require and not settings.tls_ca:
        raise ConfigError(
            "SURVEYMESH_TLS_CLIENT_AUTH=require needs SURVEYMESH_TLS_CA to verify clients"
        )
    return grpc.ssl_server_credentials(
        [(_read(settings.tls_key, "TLS key"), _read(settings.tls_cert, "TLS certificate"))],
        root_certificates=_read(settings.tls_ca, "TLS CA") if settings.tls_ca else None,
        require_client_auth=require,
    )


def channel_credentials(settings: Settings) -> grpc.ChannelCredentials | None:
    """Client TLS credentials of ``settings`` (CA + own certificate), or ``None`` for plaintext.

    A client uses TLS as soon as a CA or a certificate of its own is configured.

    Raises:
        ConfigError: plaintext is forbidden but nothing TLS is configured, or a file cannot
            be read.
    """
    own = tls_configured(settings)
    if not own and not settings.tls_ca:
        if not settings.plaintext:
            raise ConfigError(
                "SURVEYMESH_PLAINTEXT=false but neither SURVEYMESH_TLS_CA nor a certificate is "
                "configured: refusing to connect without TLS"
            )
        return None
    return grpc.ssl_channel_credentials(
        root_certificates=_read(settings.tls_ca, "TLS CA") if settings.tls_ca else None,
        private_key=_read(settings.tls_key, "TLS key") if own else None,
        certificate_chain=_read(settings.tls_cert, "TLS certificate") if own else None,
    )


def open_channel(
    settings: Settings,
    address: str,
    *,
    options: Sequence[tuple[str, str | int]] = (),
) -> grpc.aio.Channel:
    """Opens an asyncio channel to ``address``, with TLS whenever ``settings`` configure it.

    The channel balances calls with ``settings.peer_load_balancing``: ``round_robin`` keeps
    a connection to every address the name resolves to and re-resolves when one closes
    (servers end connections after ``MAX_CONNECTION_AGE_MS``, so new replicas are found).

    Args:
        settings: The process settings (TLS paths, plaintext policy).
        address: ``host:port`` of the peer; the host must match the peer certificate's SAN.
        options: Extra channel options (they override the defaults of the same name).

    Returns:
        The channel; close it with ``await channel.close()``.
    """
    merged: dict[str, str | int] = dict(_CHANNEL_OPTIONS)
    merged["grpc.service_config"] = json.dumps(
        {"loadBalancingConfig": [{settings.peer_load_balancing: {}}]}
    )
    merged.update(dict(options))
    opts = list(merged.items())
    credentials = channel_credentials(settings)
    if credentials is None:
        return grpc.aio.insecure_channel(address, options=opts)
    return grpc.aio.secure_channel(address, credentials, options=opts)
